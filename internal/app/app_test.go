package app

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(url string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dualStackNode() *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "192.168.50.1"}, {Type: v1.NodeInternalIP, Address: "fd00:50::1"},
		}},
	}
}

func webObjects() []runtime.Object {
	svc := pt.Service("ns", "web", []string{"10.96.0.10"}, pt.Port("http", "TCP", 80))
	slice := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.244.0.11", "node-a")))
	return []runtime.Object{svc, slice}
}

// testDaemon is the daemon on a fake clientset and fake iptables, with
// its servers on loopback ports.
type testDaemon struct {
	d                    *daemon
	client               *fake.Clientset
	host                 *fakeHost
	healthz, metricsAddr string
}

func newTestDaemon(t *testing.T, client *fake.Clientset, host *fakeHost, args ...string) *testDaemon {
	td := &testDaemon{client: client, host: host, healthz: freeAddr(t), metricsAddr: freeAddr(t)}
	opts, err := Parse(append([]string{"--hostname-override=node-a", "--iptables-flavor=nft", "--min-sync-period=0",
		"--healthz-bind-address=" + td.healthz, "--metrics-bind-address=" + td.metricsAddr,
		"--api-timeout=1s", "--node-timeout=1s"}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	td.d = &daemon{
		cfg: opts.Config, log: zaptest.NewLogger(t), kernel: host.access(),
		client: func(Config) (kubernetes.Interface, error) { return client, nil },
		flows:  func(*zap.Logger) (proxier.FlowCleaner, func()) { return nil, func() {} },
	}
	return td
}

// start runs the daemon until the test ends and returns a stop that
// cancels it and reports what run returned.
func (td *testDaemon) start(t *testing.T) func() error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- td.d.run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("run did not return within 10s of the cancel")
		}
	})
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestDaemonProgramsServesAndStopsLeavingRules(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6", "legacy/IPv4")
	client := fake.NewClientset(append(webObjects(), dualStackNode())...)
	td := newTestDaemon(t, client, host, "--cluster-cidr=10.244.0.0/16")
	stop := td.start(t)

	waitFor(t, "the service's ClusterIP in nft IPv4 nat", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
	})
	// Both families are synced together but written one after the other,
	// so IPv6 may land a moment after IPv4.
	waitFor(t, "IPv6 programmed too, as it works here", func() bool {
		return strings.Contains(host.save("nft/IPv6", netfilter.TableNAT), ":SVCPROXY-SERVICES")
	})
	if nat := host.save("legacy/IPv4", netfilter.TableNAT); strings.Contains(nat, "SVCPROXY") {
		t.Errorf("--iptables-flavor=nft, yet legacy was programmed:\n%s", nat)
	}

	// A change through the API reaches the kernel.
	moved := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.244.0.12", "node-a")))
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(context.Background(), moved, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the moved endpoint in nat", func() bool {
		nat := host.save("nft/IPv4", netfilter.TableNAT)
		return strings.Contains(nat, "10.244.0.12:8080") && !strings.Contains(nat, "10.244.0.11:8080")
	})

	checkServers(t, td)
	checkNodeDeletionFailsHealthzOnly(t, td)

	if err := stop(); err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
	if nat := host.save("nft/IPv4", netfilter.TableNAT); !strings.Contains(nat, "10.244.0.12:8080") {
		t.Errorf("the rules must stay in place after a stop:\n%s", nat)
	}
	if _, _, err := get("http://" + td.healthz + "/healthz"); err == nil {
		t.Error("the health server still answers after the stop")
	}
}

func checkServers(t *testing.T, td *testDaemon) {
	t.Helper()
	code, body, err := get("http://" + td.healthz + "/healthz")
	if err != nil || code != http.StatusOK || !strings.Contains(body, `"nodeEligible":true`) {
		t.Errorf("/healthz: %d %s %v", code, body, err)
	}
	code, body, err = get("http://" + td.metricsAddr + "/proxyMode")
	if err != nil || code != http.StatusOK || body != "iptables" {
		t.Errorf("/proxyMode: %d %q %v", code, body, err)
	}
	code, body, err = get("http://" + td.metricsAddr + "/healthz")
	if err != nil || code != http.StatusOK || body != "ok" {
		t.Errorf("metrics /healthz: %d %q %v", code, body, err)
	}
	if code, _, err := get("http://" + td.metricsAddr + "/debug/pprof/"); err != nil || code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without --profiling: %d %v; want 404", code, err)
	}
	_, metrics, err := get("http://" + td.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}`,
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"}`,
		`kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"}`,
		`kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"}`,
		`kubeproxy_sync_proxy_rules_endpoint_changes_total 2`,
		`kubeproxy_proxy_healthz_total{code="200"} 1`,
		"process_resident_memory_bytes", "go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func checkNodeDeletionFailsHealthzOnly(t *testing.T, td *testDaemon) {
	t.Helper()
	node := dualStackNode()
	now := metav1.Now()
	node.DeletionTimestamp = &now
	if _, err := td.client.CoreV1().Nodes().Update(context.Background(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/healthz to fail for a node being deleted", func() bool {
		code, body, _ := get("http://" + td.healthz + "/healthz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, `"nodeEligible":false`)
	})
	if code, body, err := get("http://" + td.healthz + "/livez"); code != http.StatusOK {
		t.Errorf("/livez for a node being deleted: %d %s %v; want 200", code, body, err)
	}
}

func TestDaemonStartFailuresAreOneClearError(t *testing.T) {
	forbidden := fake.NewClientset(dualStackNode())
	forbidden.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New(`services is forbidden: User "svcproxy" cannot list resource "services"`)
	})
	v6Node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "fd00:50::1"}}}}
	cases := []struct {
		name   string
		client *fake.Clientset
		host   *fakeHost
		want   string
	}{
		{"API refuses", forbidden, newFakeHost("nft/IPv4"), "(in-cluster): could not list services from the API server: failed to list *v1.Service: services is forbidden"},
		{"primary family unusable", fake.NewClientset(v6Node), newFakeHost("nft/IPv4"), "no support for the node's primary IP family IPv6"},
	}
	for _, c := range cases {
		td := newTestDaemon(t, c.client, c.host)
		err := td.d.run(context.Background())
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: run = %v, want one line containing %q", c.name, err, c.want)
		}
		if _, _, err := get("http://" + td.healthz + "/livez"); err == nil {
			t.Errorf("%s: the health server still answers after the failed start", c.name)
		}
	}
}

func TestDaemonRunsWithoutItsNode(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	td := newTestDaemon(t, fake.NewClientset(webObjects()...), host, "--node-timeout=100ms")
	td.start(t)
	waitFor(t, "the service programmed without a Node", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
	})
	// As kube-proxy's: no Node seen, so not eligible for traffic, yet alive.
	code, body, err := get("http://" + td.healthz + "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"nodeEligible":false`) || !strings.Contains(body, `"healthy":true`) {
		t.Errorf("/healthz without a Node: %d %s %v; want 503, nodeEligible false, healthy true", code, body, err)
	}
	if code, body, err := get("http://" + td.healthz + "/livez"); code != http.StatusOK {
		t.Errorf("/livez without a Node: %d %s %v; want 200", code, body, err)
	}
}

func TestDaemonAnswersProbesWhileWaitingForItsNode(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	bare := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	client := fake.NewClientset(append(webObjects(), bare)...)
	// A change may wait two sync periods (400ms) once syncing has begun;
	// the Service and slice queued at startup wait far longer than that.
	td := newTestDaemon(t, client, host, "--node-timeout=1h", "--iptables-sync-period=200ms")
	stop := td.start(t)

	waitFor(t, "/livez to answer", func() bool {
		code, _, _ := get("http://" + td.healthz + "/livez")
		return code != 0
	})
	time.Sleep(time.Second)
	if nat := host.save("nft/IPv4", netfilter.TableNAT); strings.Contains(nat, "SVCPROXY") {
		t.Fatalf("programmed although its Node has no address and --node-timeout=1h:\n%s", nat)
	}
	for _, path := range []string{"/livez", "/healthz"} {
		if code, body, err := get("http://" + td.healthz + path); code != http.StatusOK {
			t.Errorf("%s while waiting for the Node: %d %s %v; want 200", path, code, body, err)
		}
	}
	if code, body, err := get("http://" + td.metricsAddr + "/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics while waiting for the Node: %d %v; want 200 with the process's metrics", code, err)
	}

	node := bare.DeepCopy()
	node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.50.1"}}
	if _, err := client.CoreV1().Nodes().Update(context.Background(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the service programmed once the Node has an address", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
	})
	if code, body, err := get("http://" + td.healthz + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz after the first sync: %d %s %v; want 200", code, body, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
	if _, _, err := get("http://" + td.healthz + "/livez"); err == nil {
		t.Error("the health server still answers after the stop")
	}
}

func TestDaemonStoppedWhileWaitingClosesItsServers(t *testing.T) {
	bare := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	td := newTestDaemon(t, fake.NewClientset(bare), newFakeHost("nft/IPv4"), "--node-timeout=1h")
	stop := td.start(t)
	waitFor(t, "/livez to answer", func() bool {
		code, _, _ := get("http://" + td.healthz + "/livez")
		return code == http.StatusOK
	})
	if err := stop(); err != nil {
		t.Fatalf("stopped while waiting for the Node: %v; want no error", err)
	}
	for _, url := range []string{"http://" + td.healthz + "/livez", "http://" + td.metricsAddr + "/metrics"} {
		if _, _, err := get(url); err == nil {
			t.Errorf("%s still answers after the stop", url)
		}
	}
}

func TestDaemonPortInUseIsOneErrorAndClosesTheOtherServer(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host)
	taken, err := net.Listen("tcp4", td.metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	err = td.d.run(context.Background())
	want := "metrics server: listen tcp4 " + td.metricsAddr + ": bind: address already in use"
	if err == nil || err.Error() != want {
		t.Fatalf("run = %v, want %q", err, want)
	}
	if _, _, err := get("http://" + td.healthz + "/livez"); err == nil {
		t.Error("the health server, started first, still answers after the metrics port failed")
	}
	if nat := host.save("nft/IPv4", netfilter.TableNAT); strings.Contains(nat, "SVCPROXY") {
		t.Errorf("programmed although the start failed:\n%s", nat)
	}
}

func TestCleanupRemovesOnlySvcproxyRulesEverywhere(t *testing.T) {
	// Rules svcproxy left in nft IPv4 and legacy IPv6, next to another
	// program's chain; nft IPv6 does not work on this host.
	host := newFakeHost("nft/IPv4", "legacy/IPv4", "legacy/IPv6")
	client := fake.NewClientset(append(webObjects(), dualStackNode())...)
	for _, key := range []string{"nft/IPv4", "legacy/IPv6"} {
		host.addChain(key, netfilter.TableNAT, "OTHER-PROGRAM", "-j RETURN")
	}
	for _, flavor := range []string{"nft", "legacy"} {
		td := newTestDaemon(t, client, host, "--iptables-flavor="+flavor)
		stop := td.start(t)
		waitFor(t, flavor+" programmed", func() bool {
			return strings.Contains(host.save(flavor+"/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
		})
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}

	var logs bytes.Buffer
	if err := cleanup(context.Background(), host.access(), Config{}, NewLogger("text", 0, zapSync(&logs))); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	for _, key := range []string{"nft/IPv4", "legacy/IPv4", "legacy/IPv6"} {
		for _, table := range []netfilter.Table{netfilter.TableNAT, netfilter.TableFilter} {
			if dump := host.save(key, table); strings.Contains(dump, "SVCPROXY") {
				t.Errorf("%s %s still has svcproxy rules:\n%s", key, table, dump)
			}
		}
	}
	for _, key := range []string{"nft/IPv4", "legacy/IPv6"} {
		if !strings.Contains(host.save(key, netfilter.TableNAT), ":OTHER-PROGRAM") {
			t.Errorf("%s: cleanup removed another program's chain", key)
		}
	}
	if got := strings.Count(logs.String(), "cleaned up"); got != 3 {
		t.Errorf("want 3 'cleaned up' lines (nft IPv4, legacy IPv4 and IPv6), got %d:\n%s", got, logs.String())
	}
}

func zapSync(b *bytes.Buffer) zapWriter { return zapWriter{b} }

// zapWriter makes a buffer a zapcore.WriteSyncer.
type zapWriter struct{ *bytes.Buffer }

func (zapWriter) Sync() error { return nil }

// Under detectLocalMode NodeCIDR the rules tell pods by the Node's
// podCIDRs: when they change, run ends with an error saying so (the
// DaemonSet restarts svcproxy with the new ones, as kube-proxy exits), and
// the rules stay in place. Other Node changes do not end it.
func TestDaemonExitsWhenPodCIDRsChangeUnderNodeCIDR(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6")
	node := dualStackNode()
	node.Spec.PodCIDRs = []string{"10.244.0.0/24"}
	client := fake.NewClientset(append(webObjects(), node)...)
	td := newTestDaemon(t, client, host, "--detect-local-mode=NodeCIDR")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- td.d.run(ctx) }()
	waitFor(t, "the service programmed, pods told by 10.244.0.0/24", func() bool {
		nat := host.save("nft/IPv4", netfilter.TableNAT)
		return strings.Contains(nat, "10.244.0.11:8080") && strings.Contains(nat, "10.244.0.0/24")
	})

	update := func(n *v1.Node) {
		t.Helper()
		if _, err := client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	labelled := node.DeepCopy()
	labelled.Labels = map[string]string{"topology.kubernetes.io/zone": "z1"}
	update(labelled)
	select {
	case err := <-done:
		t.Fatalf("run ended on a Node change that left the podCIDRs alone: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	moved := labelled.DeepCopy()
	moved.Spec.PodCIDRs = []string{"10.244.7.0/24"}
	update(moved)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "podCIDRs changed from [10.244.0.0/24] to [10.244.7.0/24]") {
			t.Fatalf("run ended with %v, want the podCIDRs change named", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run goes on after the podCIDRs changed")
	}
	if nat := host.save("nft/IPv4", netfilter.TableNAT); !strings.Contains(nat, "10.244.0.11:8080") {
		t.Errorf("the rules must stay in place:\n%s", nat)
	}
}
