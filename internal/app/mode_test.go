package app

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// webVS is the web Service's ClusterIP virtual server with its endpoint,
// as the IPVS fake dumps it.
const webVS = "TCP 10.96.0.10:80 rr\n  -> 10.244.0.11:8080 weight 1\n"

// othersVS is a virtual server another program (keepalived, say) made.
var othersVS = ipvs.VirtualServer{VSKey: ipvs.VSKey{Addr: netip.MustParseAddr("192.168.50.100"), Protocol: model.TCP, Port: 443},
	Scheduler: "wlc"}

func addOthersVS(t *testing.T, host *fakeHost) {
	t.Helper()
	host.withIPVS(func(k *ipvs.FakeKernel) {
		if err := k.AddVirtualServer(othersVS); err != nil {
			t.Fatal(err)
		}
	})
}

// runIPVSMode runs the daemon in ipvs mode until the web Service is
// programmed, then stops it: what a node that ran the IPVS mode holds.
func runIPVSMode(t *testing.T, host *fakeHost) {
	t.Helper()
	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host, "--proxy-mode=ipvs")
	stop := td.start(t)
	waitFor(t, "the web virtual server", func() bool { return strings.Contains(host.ipvsState(model.IPv4), webVS) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestDaemonInIPVSModeProgramsVirtualServers(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6")
	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host,
		"--proxy-mode=ipvs", "--cluster-cidr=10.244.0.0/16", "--profiling")
	stop := td.start(t)

	// A sync writes IPVS, then iptables, one family after the other: wait
	// for the last of them before reading any.
	waitFor(t, "the web virtual server with its endpoint, and both families' iptables rules", func() bool {
		return strings.Contains(host.ipvsState(model.IPv4), webVS) &&
			strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), ":SVCPROXY-SERVICES") &&
			strings.Contains(host.save("nft/IPv6", netfilter.TableNAT), ":SVCPROXY-SERVICES")
	})
	state := host.ipvsState(model.IPv4)
	for _, want := range []string{"address 10.96.0.10 dev kube-ipvs0", "set SVCPROXY-CLUSTER-IP"} {
		if !strings.Contains(state, want) {
			t.Errorf("the IPVS state lacks %q:\n%s", want, state)
		}
	}
	nat := host.save("nft/IPv4", netfilter.TableNAT)
	if !strings.Contains(nat, ":SVCPROXY-SERVICES") || !strings.Contains(nat, "--match-set") {
		t.Errorf("the IPVS mode's iptables rules are missing:\n%s", nat)
	}
	if strings.Contains(nat, "10.244.0.11:8080") {
		t.Errorf("ipvs mode DNATs to the endpoint in iptables:\n%s", nat)
	}
	code, body, err := get("http://" + td.metricsAddr + "/proxyMode")
	if err != nil || code != http.StatusOK || body != "ipvs" {
		t.Errorf("/proxyMode: %d %q %v; want ipvs", code, body, err)
	}
	if code, body, err := get("http://" + td.metricsAddr + "/debug/pprof/heap?debug=1"); err != nil || code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Errorf("--profiling, /debug/pprof/heap: %d %v", code, err)
	}
	_, metrics, err := get("http://" + td.metricsAddr + "/metrics")
	if err != nil || !strings.Contains(metrics, `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}`) {
		t.Errorf("/metrics lacks the sync timestamp (%v)", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
	if !strings.Contains(host.ipvsState(model.IPv4), webVS) {
		t.Error("the virtual servers must stay in place after a stop")
	}
}

// The IPVS mode's first full sync removes the iptables mode's chains.
func TestIPVSModeTakesOverFromIPTablesMode(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	client := fake.NewClientset(append(webObjects(), dualStackNode())...)
	td := newTestDaemon(t, client, host)
	stop := td.start(t)
	waitFor(t, "iptables mode's DNAT", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	runIPVSMode(t, host)
	if nat := host.save("nft/IPv4", netfilter.TableNAT); strings.Contains(nat, "10.244.0.11:8080") {
		t.Errorf("the iptables mode's DNAT is left in ipvs mode:\n%s", nat)
	}
}

// A kernel without IPVS stops the IPVS mode at once, with one line that
// says what is missing, before the API is asked anything, a port bound or
// anything written.
func TestDaemonIPVSModeOnAKernelWithoutIPVSFailsFirst(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6")
	host.noIPVS = errors.New("the kernel has no IPVS (module ip_vs): load it or use --mode=iptables")
	client := fake.NewClientset(append(webObjects(), dualStackNode())...)
	td := newTestDaemon(t, client, host, "--proxy-mode=ipvs")
	err := td.d.run(context.Background())
	want := "proxy mode ipvs: the kernel has no IPVS (module ip_vs): load it or use --mode=iptables"
	if err == nil || err.Error() != want {
		t.Fatalf("run = %v, want %q", err, want)
	}
	if actions := client.Actions(); len(actions) > 0 {
		t.Errorf("the API was asked %v before the kernel check failed", actions)
	}
	if _, _, err := get("http://" + td.healthz + "/livez"); err == nil {
		t.Error("the health server answers after the failed start")
	}
	for _, key := range []string{"nft/IPv4", "nft/IPv6"} {
		for _, table := range []netfilter.Table{netfilter.TableNAT, netfilter.TableFilter} {
			if dump := host.save(key, table); strings.Contains(dump, "SVCPROXY") {
				t.Errorf("%s %s written although the start failed:\n%s", key, table, dump)
			}
		}
	}
	host.withIPVS(func(k *ipvs.FakeKernel) {
		if len(k.Calls) > 0 {
			t.Errorf("IPVS touched although the start failed: %q", k.Calls)
		}
	})
}

// A node that ran the IPVS mode and now runs the iptables mode loses the
// IPVS mode's state once the iptables rules serve every family, and keeps
// another program's virtual server.
func TestIPTablesModeRemovesIPVSLeftovers(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6")
	host.ipvsLoaded = true
	runIPVSMode(t, host)
	addOthersVS(t, host)

	logs := &lockedBuffer{}
	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host)
	td.d.log = NewLogger("text", 0, logs)
	td.start(t)
	waitFor(t, "the IPVS leftovers removed", func() bool {
		state := host.ipvsState(model.IPv4)
		v6 := host.ipvsState(model.IPv6)
		return !strings.Contains(state, webVS) && !strings.Contains(state, "kube-ipvs0") && !strings.Contains(state, "set ") &&
			!strings.Contains(v6, "set ") && !strings.Contains(v6, "kube-ipvs0")
	})
	if nat := host.save("nft/IPv4", netfilter.TableNAT); !strings.Contains(nat, "10.244.0.11:8080") || strings.Contains(nat, "--match-set") {
		t.Errorf("iptables mode's rules, without the IPVS mode's:\n%s", nat)
	}
	state := host.ipvsState(model.IPv4)
	if !strings.Contains(state, "TCP 192.168.50.100:443 wlc") {
		t.Errorf("another program's virtual server was removed:\n%s", state)
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if s := host.ipvsState(f); strings.Contains(s, "set ") || strings.Contains(s, "kube-ipvs0") {
			t.Errorf("%v IPVS state left:\n%s", f, s)
		}
	}
	host.withIPVS(func(k *ipvs.FakeKernel) {
		if k.HasLink(ipvs.DummyName) {
			t.Error("kube-ipvs0 left")
		}
	})
	waitFor(t, "the removal logged", func() bool { return strings.Count(logs.String(), "removed svcproxy's IPVS state") == 2 })
}

// --ipvs-exclude-cidrs guards virtual servers from the iptables mode's
// removal of leftovers too.
func TestIPTablesModeKeepsExcludedVirtualServers(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	host.ipvsLoaded = true
	runIPVSMode(t, host)
	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host, "--ipvs-exclude-cidrs=10.96.0.0/24")
	td.start(t)
	waitFor(t, "the IPVS sets removed", func() bool { return !strings.Contains(host.ipvsState(model.IPv4), "set ") })
	if s := host.ipvsState(model.IPv4); !strings.Contains(s, webVS) {
		t.Errorf("a virtual server in --ipvs-exclude-cidrs was removed:\n%s", s)
	}
}

// Where IPVS is not loaded (this machine's kernel has none), the iptables
// mode does not so much as look.
func TestIPTablesModeLeavesIPVSAloneWhereItIsNotLoaded(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host)
	stop := td.start(t)
	waitFor(t, "the service programmed", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	host.withIPVS(func(k *ipvs.FakeKernel) {
		if len(k.Calls) > 0 {
			t.Errorf("iptables mode touched IPVS, which is not loaded: %q", k.Calls)
		}
	})
}

// lockedBuffer is a log sink the daemon's goroutines and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Sync() error { return nil }

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestCleanupRemovesIPVSState(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6")
	host.ipvsLoaded = true
	runIPVSMode(t, host)
	addOthersVS(t, host)

	var logs bytes.Buffer
	if err := cleanup(context.Background(), host.access(), Config{}, NewLogger("text", 0, zapSync(&logs))); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	for _, key := range []string{"nft/IPv4", "nft/IPv6"} {
		for _, table := range []netfilter.Table{netfilter.TableNAT, netfilter.TableFilter} {
			if dump := host.save(key, table); strings.Contains(dump, "SVCPROXY") {
				t.Errorf("%s %s still has svcproxy rules:\n%s", key, table, dump)
			}
		}
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		s := host.ipvsState(f)
		if strings.Contains(s, "set ") || strings.Contains(s, "kube-ipvs0") || strings.Contains(s, "10.96.0.10") {
			t.Errorf("%v IPVS state left after the cleanup:\n%s", f, s)
		}
	}
	if s := host.ipvsState(model.IPv4); !strings.Contains(s, "TCP 192.168.50.100:443 wlc") {
		t.Errorf("the cleanup removed another program's virtual server:\n%s", s)
	}
	if got := strings.Count(logs.String(), "removed svcproxy's IPVS state"); got != 2 {
		t.Errorf("want the IPVS state of both families logged as removed, got %d:\n%s", got, logs.String())
	}

	// Without IPVS loaded, the cleanup does not look.
	host = newFakeHost("nft/IPv4")
	if err := cleanup(context.Background(), host.access(), Config{}, NewLogger("text", 0, zapSync(&logs))); err != nil {
		t.Fatalf("cleanup without IPVS: %v", err)
	}
	host.withIPVS(func(k *ipvs.FakeKernel) {
		if len(k.Calls) > 0 {
			t.Errorf("the cleanup touched IPVS, which is not loaded: %q", k.Calls)
		}
	})
}

// The iptables mode taking over keeps a virtual server some connection
// still uses, so that it is not dropped, and removes it after a later
// sync once the connection has ended.
func TestIPTablesModeLetsIPVSConnectionsEnd(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	host.ipvsLoaded = true
	runIPVSMode(t, host)
	web := ipvs.VSKey{Addr: netip.MustParseAddr("10.96.0.10"), Protocol: model.TCP, Port: 80}
	host.withIPVS(func(k *ipvs.FakeKernel) {
		k.SetConnections(web, netip.MustParseAddrPort("10.244.0.11:8080"), 1, 0)
	})
	client := fake.NewClientset(append(webObjects(), dualStackNode())...)
	logs := &lockedBuffer{}
	td := newTestDaemon(t, client, host)
	td.d.log = NewLogger("text", 0, logs)
	td.d.takeOverRetry = 200 * time.Millisecond
	td.start(t)
	waitFor(t, "the first retirement", func() bool {
		return strings.Contains(logs.String(), "virtual servers with connections stay until those end")
	})
	if s := host.ipvsState(model.IPv4); !strings.Contains(s, webVS) || !strings.Contains(s, "address 10.96.0.10") {
		t.Fatalf("the virtual server a connection uses (or its address) went at once:\n%s", s)
	}
	host.withIPVS(func(k *ipvs.FakeKernel) {
		k.SetConnections(web, netip.MustParseAddrPort("10.244.0.11:8080"), 0, 0)
	})
	// No change is needed: the take-over asks for a sync to look again.
	waitFor(t, "the IPVS state gone once idle", func() bool {
		s := host.ipvsState(model.IPv4)
		return !strings.Contains(s, "TCP 10.96.0.10:80") && !strings.Contains(s, "kube-ipvs0")
	})
}
