package app

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/leftovers"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// kubeProxyRules loads what kube-proxy of a mode ("iptables", "ipvs")
// leaves into a kernel of the fake host.
func kubeProxyRules(t *testing.T, host *fakeHost, key, mode string) {
	t.Helper()
	rules, err := os.ReadFile("../../leftovers/testdata/kube-proxy-" + mode + ".rules")
	if err != nil {
		t.Fatal(err)
	}
	if err := host.load(key, rules); err != nil {
		t.Fatal(err)
	}
}

// kubeProxyChainsLeft lists kube-proxy's chains one kernel still holds,
// but KUBE-MARK-MASQ, which the fixture's hostport chain uses.
func kubeProxyChainsLeft(host *fakeHost, key string) []string {
	var left []string
	for _, table := range leftovers.Tables() {
		for _, c := range leftovers.ParseSave(table, []byte(host.save(key, table))).Chains {
			if leftovers.IsKubeProxyChain(table, c) && c != "KUBE-MARK-MASQ" {
				left = append(left, string(table)+"/"+c)
			}
		}
	}
	return left
}

// A node kube-proxy's iptables mode ran on, in both flavors, with its
// nftables mode's tables too: once svcproxy's rules are in, kube-proxy's
// chains go from every flavor and family, and its nftables tables;
// kubelet's chains stay.
func TestIPTablesModeTakesOverFromKubeProxy(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6", "legacy/IPv4")
	kubeProxyRules(t, host, "nft/IPv4", "iptables")
	kubeProxyRules(t, host, "legacy/IPv4", "iptables")
	host.nft, host.nftTables = true, []string{"ip kube-proxy", "ip6 kube-proxy", "inet firewalld"}

	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host)
	td.start(t)
	waitFor(t, "kube-proxy's chains gone", func() bool {
		return len(kubeProxyChainsLeft(host, "nft/IPv4"))+len(kubeProxyChainsLeft(host, "legacy/IPv4")) == 0
	})
	waitFor(t, "kube-proxy's nftables tables gone", func() bool {
		return slices.Equal(host.nftList(), []string{"inet firewalld"})
	})
	for _, key := range []string{"nft/IPv4", "legacy/IPv4"} {
		filter := host.save(key, netfilter.TableFilter)
		if !strings.Contains(filter, "-A INPUT -j KUBE-FIREWALL") || !strings.Contains(filter, ":KUBE-KUBELET-CANARY") {
			t.Errorf("%s: kubelet's chains went too:\n%s", key, filter)
		}
	}
	if nat := host.save("nft/IPv4", netfilter.TableNAT); !strings.Contains(nat, "10.244.0.11:8080") {
		t.Errorf("svcproxy's rules are missing:\n%s", nat)
	}

	// svcproxy's own rules were in before kube-proxy's went: its first
	// restore comes before the one that removes kube-proxy's chains.
	calls := host.calls("nft/IPv4")
	own := slices.IndexFunc(calls, func(c string) bool { return strings.HasPrefix(c, "iptables-nft-restore") })
	saves := slices.IndexFunc(calls, func(c string) bool { return c == "iptables-nft-save -t mangle" })
	if own < 0 || saves < own {
		t.Errorf("kube-proxy's chains were looked at before svcproxy's rules went in:\n%s", strings.Join(calls, "\n"))
	}
}

// The take-over lists every table of both flavors, which at 10,000
// services takes seconds: a change made meanwhile is synced without
// waiting for it.
func TestTakeOverDoesNotHoldUpSyncs(t *testing.T) {
	host := newFakeHost("nft/IPv4", "nft/IPv6")
	kubeProxyRules(t, host, "nft/IPv4", "iptables")
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	host.beforeRun = func(name string, args []string) {
		// Only the take-over lists the mangle table.
		if name == "iptables-nft-save" && slices.Equal(args, []string{"-t", "mangle"}) {
			once.Do(func() { close(held) })
			<-release
		}
	}
	client := fake.NewClientset(append(webObjects(), dualStackNode())...)
	td := newTestDaemon(t, client, host)
	td.start(t)
	releaseTakeOver := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseTakeOver) // before the daemon's stop, which waits for it
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the take-over never listed the mangle table")
	}

	moved := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.244.0.12", "node-a")))
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(context.Background(), moved, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the moved endpoint in nat while the take-over is held", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.12:8080")
	})
	if left := kubeProxyChainsLeft(host, "nft/IPv4"); len(left) == 0 {
		t.Error("kube-proxy's chains went while the take-over was held")
	}
	releaseTakeOver()
	waitFor(t, "kube-proxy's chains gone", func() bool { return len(kubeProxyChainsLeft(host, "nft/IPv4")) == 0 })
}

// kubeProxyIPVSState is what kube-proxy's ipvs mode leaves in IPVS: the
// web Service's virtual server with a real server of its own, one of a
// deleted service, a node port and its sets.
func kubeProxyIPVSState(t *testing.T, host *fakeHost) {
	t.Helper()
	host.withIPVS(func(k *ipvs.FakeKernel) {
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(k.EnsureDummy(ipvs.DummyName))
		for _, a := range []string{"10.96.0.10", "10.96.0.99"} {
			must(k.AddAddr(ipvs.DummyName, netip.MustParseAddr(a)))
		}
		for _, key := range []ipvs.VSKey{
			{Addr: netip.MustParseAddr("10.96.0.10"), Protocol: model.TCP, Port: 80},
			{Addr: netip.MustParseAddr("10.96.0.99"), Protocol: model.TCP, Port: 80},
			{Addr: netip.MustParseAddr("192.168.1.10"), Protocol: model.TCP, Port: 30099},
		} {
			must(k.AddVirtualServer(ipvs.VirtualServer{VSKey: key, Scheduler: "rr"}))
			must(k.AddRealServer(key, ipvs.RealServer{Addr: netip.MustParseAddrPort("10.244.9.9:8080"), Weight: 1}))
		}
		nodePorts := ipvs.Set{Name: "KUBE-NODE-PORT-TCP", Type: ipvs.BitmapPort, Family: model.IPv4}
		must(k.CreateSet(nodePorts))
		must(k.AddEntry(nodePorts, ipvs.Entry{Port: 30099}))
		for _, name := range []string{"KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-FW", "KUBE-LOOP-BACK", "KUBE-IPVS-IPS", "KUBE-HEALTH-CHECK-NODE-PORT"} {
			must(k.CreateSet(ipvs.Set{Name: name, Type: ipvs.HashIPPort, Family: model.IPv4}))
		}
	})
}

// kubeProxyIPVSLeft is what of kube-proxy's IPVS state the host holds.
func kubeProxyIPVSLeft(host *fakeHost) []string {
	var left []string
	s := host.ipvsState(model.IPv4)
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "KUBE-") || strings.Contains(line, "10.96.0.99") || strings.Contains(line, ":30099") || strings.Contains(line, "10.244.9.9") {
			left = append(left, line)
		}
	}
	return left
}

// A node kube-proxy's ipvs mode ran on: in either of svcproxy's modes,
// kube-proxy's chains, virtual servers and sets go; in the IPVS mode the
// web Service's virtual server is taken over with svcproxy's endpoint.
func TestTakesOverFromKubeProxysIPVSMode(t *testing.T) {
	for _, mode := range []string{"iptables", "ipvs"} {
		t.Run(mode, func(t *testing.T) {
			host := newFakeHost("nft/IPv4")
			host.ipvsLoaded = true
			kubeProxyRules(t, host, "nft/IPv4", "ipvs")
			kubeProxyIPVSState(t, host)
			td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host, "--proxy-mode="+mode)
			td.start(t)
			waitFor(t, "kube-proxy's chains, virtual servers and sets gone", func() bool {
				return len(kubeProxyChainsLeft(host, "nft/IPv4")) == 0 && len(kubeProxyIPVSLeft(host)) == 0
			})
			s := host.ipvsState(model.IPv4)
			if mode == "ipvs" && !strings.Contains(s, webVS) {
				t.Errorf("the web Service's virtual server is not svcproxy's:\n%s", s)
			}
			if mode == "iptables" && strings.Contains(s, "kube-ipvs0") {
				t.Errorf("kube-ipvs0 stays in the iptables mode:\n%s", s)
			}
		})
	}
}
