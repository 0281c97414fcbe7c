package daemon_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/internal/sandbox"
)

// A Service and its EndpointSlice created, changed and deleted through the
// API: after each write, real traffic shows the change.
func TestServiceLifecycleThroughTheAPI(t *testing.T) {
	n := newNode(t, 4) // pods 0-2 serve, pod 3 is the client
	from := n.pod(3)

	svc := n.createService(n.service("web", v1.ServiceTypeClusterIP, 80))
	url := "http://" + svc.Spec.ClusterIP + "/"
	n.eventually("service without endpoints refuses", time.Now(), refused(from, url))

	wrote := n.createSlice(n.slice("web", n.ns, 0, 1))
	n.eventually("endpoints added", wrote, answers(from, url, "pod-0", "pod-1"))
	counts, err := sandbox.Spread(client(from), url, 30)
	if err != nil || counts["pod-0"] == 0 || counts["pod-1"] == 0 {
		t.Fatalf("30 requests spread %v (err %v), want both endpoints used", counts, err)
	}

	wrote = n.updateSlice(n.slice("web", n.ns, 2))
	n.eventually("endpoint replaced", wrote, answers(from, url, "pod-2"))

	cur, err := n.cs.CoreV1().Services(n.ns).Get(n.ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Ports[0].Port = 81
	if _, err := n.cs.CoreV1().Services(n.ns).Update(n.ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wrote = time.Now()
	newURL := "http://" + svc.Spec.ClusterIP + ":81/"
	n.eventually("service port changed", wrote, answers(from, newURL, "pod-2"))
	n.eventually("old port gone", wrote, notAnswering(from, url))

	wrote = n.updateSlice(n.slice("web", n.ns))
	n.eventually("last endpoint removed", wrote, refused(from, newURL))

	if err := n.cs.CoreV1().Services(n.ns).Delete(n.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.eventually("service deleted: its rules are gone, so no reset either", time.Now(), unprogrammed(from, newURL))
}

// Pods selected by a Service become endpoints through the real
// endpointslice controller; ClusterIP and NodePort both balance over them.
func TestPodsBecomeEndpointsThroughTheController(t *testing.T) {
	n := newNode(t, 3)
	for _, pod := range n.sb.Bed.Pods()[:2] {
		if err := sandbox.CreatePod(n.ctx, n.cs, n.ns, n.ns, pod, map[string]string{"app": "hello"}, webPort); err != nil {
			t.Fatal(err)
		}
	}
	svc := n.createService(sandbox.WebService(n.ns, "hello", 80, webPort))
	wrote := time.Now()
	clusterURL := "http://" + svc.Spec.ClusterIP + "/"
	nodePortURL := fmt.Sprintf("http://%s:%d/", n.sb.Bed.Node().IPv4(), svc.Spec.Ports[0].NodePort)
	n.eventually("ClusterIP from a pod", wrote, answers(n.pod(2), clusterURL, "pod-0", "pod-1"))
	n.eventually("NodePort from outside", wrote, answers(n.sb.Bed.Outside(), nodePortURL, "pod-0", "pod-1"))

	// NodePort traffic from outside the cluster is masqueraded to the
	// node's address on the pods' side.
	got, err := sandbox.Get(client(n.sb.Bed.Outside()), nodePortURL)
	if err != nil {
		t.Fatal(err)
	}
	if want := "from " + n.sb.Bed.PodGateway(n.pod(0).IPv4()).String() + ":"; !strings.Contains(got, want) {
		t.Fatalf("NodePort answer %q: want the source masqueraded (%q)", got, want)
	}

	if err := n.cs.CoreV1().Pods(n.ns).Delete(n.ctx, "pod-0", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	wrote = time.Now()
	n.eventually("deleted pod leaves the endpoints", wrote, func() error {
		counts, err := sandbox.Spread(client(n.pod(2)), clusterURL, 12)
		if err != nil {
			return err
		}
		if counts["pod-0"] > 0 || counts["pod-1"] != 12 {
			return fmt.Errorf("spread %v, want only pod-1", counts)
		}
		return nil
	})
}

// A LoadBalancer Service with externalTrafficPolicy Local: its load-balancer
// IP keeps the client's source, and its healthCheckNodePort answers 200
// with the local endpoint count while this node has endpoints, 503 after.
func TestLoadBalancerLocalPolicyAndHealthCheckNodePort(t *testing.T) {
	n := newNode(t, 2)
	lb := n.service("lb", v1.ServiceTypeLoadBalancer, 80)
	lb.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	created := n.createService(lb)
	if created.Spec.HealthCheckNodePort == 0 {
		t.Fatal("the apiserver allocated no healthCheckNodePort")
	}
	const lbIP = "192.168.60.10"
	created.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP}}
	if _, err := n.cs.CoreV1().Services(n.ns).UpdateStatus(n.ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wrote := n.createSlice(n.slice("lb", n.ns, 0))
	outside := n.sb.Bed.Outside()
	lbURL := "http://" + lbIP + "/"
	n.eventually("load-balancer IP from outside", wrote, answers(outside, lbURL, "pod-0"))
	got, err := sandbox.Get(client(outside), lbURL)
	if err != nil {
		t.Fatal(err)
	}
	if want := "from " + outside.IPv4().String() + ":"; !strings.Contains(got, want) {
		t.Fatalf("answer %q: externalTrafficPolicy Local must keep the client source (%q)", got, want)
	}

	hcURL := "http://" + net.JoinHostPort(n.sb.Bed.Node().IPv4().String(), strconv.Itoa(int(created.Spec.HealthCheckNodePort))) + "/healthz"
	n.eventually("health check reports one local endpoint", wrote, healthCheck(outside, hcURL, 200, 1))

	wrote = n.updateSlice(n.slice("lb", "some-other-node", 0))
	n.eventually("health check reports no local endpoint", wrote, healthCheck(outside, hcURL, 503, 0))
	n.eventually("external traffic with no local endpoint is dropped", wrote, notAnswering(outside, lbURL))
}

// While the apiserver is unreachable, svcproxy keeps its rules and traffic
// flows; changes made meanwhile are applied once it is back.
func TestAPIServerOutageKeepsTrafficAndResumes(t *testing.T) {
	n := newNode(t, 3)
	from := n.pod(2)
	svc := n.createService(n.service("steady", v1.ServiceTypeClusterIP, 80))
	url := "http://" + svc.Spec.ClusterIP + "/"
	n.eventually("service up", n.createSlice(n.slice("steady", n.ns, 0)), answers(from, url, "pod-0"))

	if err := n.sb.Bridge.Close(); err != nil {
		t.Fatal(err)
	}
	late := n.createService(n.service("late", v1.ServiceTypeClusterIP, 80))
	n.createSlice(n.slice("late", n.ns, 1))
	lateURL := "http://" + late.Spec.ClusterIP + "/"

	c := client(from)
	for i := range 20 { // 10 s of outage, bounded
		if _, err := sandbox.Get(c, url); err != nil {
			t.Fatalf("request %d during the outage: %v", i, err)
		}
		if done, err := n.proxy.Exited(); done {
			t.Fatalf("svcproxy exited during the outage: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := sandbox.Get(c, lateURL); err == nil {
		t.Fatal("a service created during the outage answered before svcproxy could see it")
	}

	bridge, err := sandbox.NewBridge(n.sb.Bed.Node(), sandbox.APIServerInNode, strings.TrimPrefix(cp.URL(), "https://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bridge.Close() })
	n.eventually("service created during the outage, after it", time.Now(), answers(from, lateURL, "pod-1"))
	if _, err := sandbox.Get(c, url); err != nil {
		t.Fatalf("the old service after the outage: %v", err)
	}
}

// notAnswering checks that url gets no answer: refused, unreachable or
// timing out are all fine, an answer is not.
func notAnswering(ns *netnstest.NS, url string) func() error {
	c := client(ns)
	return func() error {
		if got, err := sandbox.Get(c, url); err == nil {
			return fmt.Errorf("%s still answers: %q", url, got)
		}
		return nil
	}
}

// unprogrammed checks that url is neither answered nor refused: with no
// rule for it the connection is routed on and goes unanswered.
func unprogrammed(ns *netnstest.NS, url string) func() error {
	c := client(ns)
	return func() error {
		got, err := sandbox.Get(c, url)
		switch {
		case err == nil:
			return fmt.Errorf("%s still answers: %q", url, got)
		case strings.Contains(err.Error(), "connection refused"):
			return fmt.Errorf("%s is still refused by a rule", url)
		}
		return nil
	}
}

// healthCheck checks that url answers with status and kube-proxy's JSON
// body counting localEndpoints.
func healthCheck(ns *netnstest.NS, url string, status int, localEndpoints int) func() error {
	c := client(ns)
	return func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if err != nil {
			return err
		}
		var got struct {
			Service struct {
				Namespace, Name string
			}
			LocalEndpoints *int `json:"localEndpoints"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			return fmt.Errorf("%s: HTTP %d, body %q: %v", url, resp.StatusCode, body, err)
		}
		if resp.StatusCode != status || got.LocalEndpoints == nil || *got.LocalEndpoints != localEndpoints || got.Service.Name == "" {
			return fmt.Errorf("%s: HTTP %d %s, want %d with localEndpoints %d", url, resp.StatusCode, body, status, localEndpoints)
		}
		return nil
	}
}
