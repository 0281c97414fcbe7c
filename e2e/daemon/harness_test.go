package daemon_test

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/internal/sandbox"
)

// node is one test's sandbox: a node namespace registered as a Node, pods
// serving HTTP on 8080, an API namespace of its own, and svcproxy running.
type node struct {
	t     *testing.T
	ctx   context.Context
	sb    *sandbox.Sandbox
	cs    kubernetes.Interface
	ns    string // the test's API namespace
	proxy *sandbox.Process
}

const webPort = 8080

// newNode builds the sandbox and starts svcproxy with extra flags; with
// start=false the caller starts it (say, with another kubeconfig).
func newNode(t *testing.T, pods int, extra ...string) *node {
	n := newIdleNode(t, pods)
	n.startProxy(n.sb.Kubeconfig, extra...)
	return n
}

func newIdleNode(t *testing.T, pods int) *node {
	t.Helper()
	requireSetup(t)
	n := &node{t: t, ctx: t.Context(), cs: cp.Clientset(), ns: dnsLabel(t.Name())}
	if _, err := n.cs.CoreV1().Namespaces().Create(n.ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bg := context.Background()
		_ = n.cs.CoreV1().Namespaces().Delete(bg, n.ns, metav1.DeleteOptions{})
		_ = n.cs.CoreV1().Nodes().Delete(bg, n.ns, metav1.DeleteOptions{})
	})
	sb, err := sandbox.New(n.ctx, t, sandbox.Options{
		ControlPlane: cp, Pods: pods, NodeName: n.ns, Binary: svcproxyBin, Dir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	n.sb = sb
	for _, pod := range sb.Bed.Pods() {
		sandbox.ServeHTTP(t, pod, webPort)
	}
	return n
}

func (n *node) startProxy(kubeconfig string, extra ...string) {
	n.t.Helper()
	// The API wait is stretched too: in the VM a loaded apiserver may
	// take longer than svcproxy's 30 s to list everything.
	args := append(modeArgs(), "--api-timeout="+scaled(30*time.Second).String())
	p, err := n.sb.StartProxyAs(kubeconfig, append(args, extra...)...)
	if err != nil {
		n.t.Fatal(err)
	}
	n.proxy = p
	n.t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			n.t.Errorf("svcproxy did not stop cleanly on SIGTERM: %v", err)
		}
		if n.t.Failed() {
			n.t.Logf("svcproxy output:\n%s", tail(p.Output(), 60))
		}
	})
	if err := n.sb.WaitHealthy(p, scaled(60*time.Second)); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) pod(i int) *netnstest.NS { return n.sb.Bed.Pod(i) }

// client returns an HTTP client in ns with a short timeout.
func client(ns *netnstest.NS) *http.Client { return sandbox.Client(ns, 1500*time.Millisecond) }

// eventually retries f until it succeeds (30 s at most, scaled) and logs how long
// the change took to work, counted from since (the API write).
func (n *node) eventually(what string, since time.Time, f func() error) {
	n.t.Helper()
	if _, err := sandbox.WaitFor(scaled(30*time.Second), f); err != nil {
		n.t.Fatalf("%s: %v", what, err)
	}
	n.t.Logf("%s: working %v after the API write", what, time.Since(since).Round(time.Millisecond))
}

// answers returns a check that url, fetched from ns, is answered by one of
// the named pods.
func answers(ns *netnstest.NS, url string, pods ...string) func() error {
	c := client(ns)
	return func() error {
		got, err := sandbox.Get(c, url)
		if err != nil {
			return err
		}
		backend, _, _ := strings.Cut(got, " ")
		for _, p := range pods {
			if backend == p {
				return nil
			}
		}
		return fmt.Errorf("%s answered %q, want one of %v", url, got, pods)
	}
}

// refused returns a check that connecting to url from ns is actively
// refused (the rule for a service without endpoints), not timing out.
func refused(ns *netnstest.NS, url string) func() error {
	c := client(ns)
	return func() error {
		_, err := sandbox.Get(c, url)
		if err == nil {
			return fmt.Errorf("%s answered, want connection refused", url)
		}
		if !strings.Contains(err.Error(), "connection refused") {
			return fmt.Errorf("%s: %v, want connection refused", url, err)
		}
		return nil
	}
}

// slice builds an EndpointSlice of service for the given pods of the bed,
// all ready on node nodeName.
func (n *node) slice(service string, nodeName string, pods ...int) *discoveryv1.EndpointSlice {
	var eps []discoveryv1.Endpoint
	for _, i := range pods {
		eps = append(eps, discoveryv1.Endpoint{
			Addresses:  []string{n.pod(i).IPv4().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			NodeName:   ptr(nodeName),
		})
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: n.ns, Name: service + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: service},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(v1.ProtocolTCP), Port: ptr(int32(webPort))}},
	}
}

// service builds a selector-less Service whose endpoints the test writes.
func (n *node) service(name string, typ v1.ServiceType, port int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: n.ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:  typ,
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: port}},
		},
	}
}

func (n *node) createService(svc *v1.Service) *v1.Service {
	n.t.Helper()
	created, err := n.cs.CoreV1().Services(n.ns).Create(n.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	return created
}

func (n *node) createSlice(s *discoveryv1.EndpointSlice) time.Time {
	n.t.Helper()
	if _, err := n.cs.DiscoveryV1().EndpointSlices(n.ns).Create(n.ctx, s, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
	return time.Now()
}

func (n *node) updateSlice(s *discoveryv1.EndpointSlice) time.Time {
	n.t.Helper()
	cur, err := n.cs.DiscoveryV1().EndpointSlices(n.ns).Get(n.ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	s.ResourceVersion = cur.ResourceVersion
	if _, err := n.cs.DiscoveryV1().EndpointSlices(n.ns).Update(n.ctx, s, metav1.UpdateOptions{}); err != nil {
		n.t.Fatal(err)
	}
	return time.Now()
}

func ptr[T any](v T) *T { return &v }

var notDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// dnsLabel turns a test name into a namespace and node name.
func dnsLabel(name string) string {
	s := strings.Trim(notDNS.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if len(s) > 50 {
		s = s[:50]
	}
	return strings.Trim(s, "-")
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
