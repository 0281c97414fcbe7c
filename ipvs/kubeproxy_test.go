package ipvs_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/svcproxy/svcproxy/internal/golden"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
)

// kubeProxyLeftovers puts into the bed's kernel what kube-proxy's ipvs
// mode leaves on a node: virtual servers on kube-ipvs0 (one for a service
// that still exists, with other real servers, and one for a deleted one),
// node ports on a node address (TCP told by its bitmap set, SCTP by its
// hash set, one still wanted), its sets; and a virtual server of someone
// else's on a node address. It returns the keys of kube-proxy's.
func kubeProxyLeftovers(t *testing.T, b *bed) (kubeProxys []ipvs.VSKey, foreign ipvs.VSKey) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.k.EnsureDummy(ipvs.DummyName))
	for _, a := range []string{"10.96.0.10", "10.96.0.99"} {
		must(b.k.AddAddr(ipvs.DummyName, netip.MustParseAddr(a)))
	}
	stale := netip.MustParseAddrPort("10.244.9.9:8080")
	for _, key := range []string{"TCP 10.96.0.10:80", "TCP 10.96.0.99:80", "TCP 192.168.1.10:30080", "TCP 192.168.1.10:30099", "SCTP 192.168.1.10:30132"} {
		vs := ipvs.VirtualServer{VSKey: vsKey(key), Scheduler: "rr"}
		must(b.k.AddVirtualServer(vs))
		must(b.k.AddRealServer(vs.VSKey, ipvs.RealServer{Addr: stale, Weight: 1}))
		kubeProxys = append(kubeProxys, vs.VSKey)
	}
	foreign = vsKey("TCP 192.168.1.10:443")
	must(b.k.AddVirtualServer(ipvs.VirtualServer{VSKey: foreign, Scheduler: "wrr"}))

	tcp := ipvs.Set{Name: "KUBE-NODE-PORT-TCP", Type: ipvs.BitmapPort, Family: model.IPv4}
	sctp := ipvs.Set{Name: "KUBE-NODE-PORT-SCTP-HASH", Type: ipvs.HashIPPort, Family: model.IPv4}
	cluster := ipvs.Set{Name: "KUBE-CLUSTER-IP", Type: ipvs.HashIPPort, Family: model.IPv4}
	for _, s := range []ipvs.Set{tcp, sctp, cluster} {
		must(b.k.CreateSet(s))
	}
	must(b.k.AddEntry(tcp, ipvs.Entry{Port: 30080}))
	must(b.k.AddEntry(tcp, ipvs.Entry{Port: 30099}))
	must(b.k.AddEntry(sctp, ipvs.Entry{Addr: netip.MustParseAddr("192.168.1.10"), Protocol: model.SCTP, Port: 30132}))
	must(b.k.AddEntry(cluster, ipvs.Entry{Addr: netip.MustParseAddr("10.96.0.10"), Protocol: model.TCP, Port: 80}))
	return kubeProxys, foreign
}

// TestIPVSModeTakesOverKubeProxysIPVSState: the first full sync of the
// IPVS mode on a node kube-proxy's ipvs mode ran leaves exactly what it
// leaves on a clean node (besides someone else's virtual server): what a
// service still wants is taken over with its own real servers, the rest
// is gone; then kube-proxy's sets go too.
func TestIPVSModeTakesOverKubeProxysIPVSState(t *testing.T) {
	view := webView(mt.NodePort(30080), twoRemote)
	b := newBed(t, testCfg)
	_, foreign := kubeProxyLeftovers(t, b)
	b.sync(view, nil)

	clean := newBed(t, testCfg)
	if err := clean.k.AddVirtualServer(ipvs.VirtualServer{VSKey: foreign, Scheduler: "wrr"}); err != nil {
		t.Fatal(err)
	}
	clean.sync(view, nil)
	destroyed, err := b.backends[model.IPv4].RemoveKubeProxySets(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"KUBE-CLUSTER-IP", "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-TCP"}; !slices.Equal(destroyed, want) {
		t.Errorf("destroyed %v, want %v", destroyed, want)
	}
	if got, want := b.state(model.IPv4), clean.state(model.IPv4); got != want {
		t.Errorf("after the take-over: %s", golden.FirstDifference([]byte(want), []byte(got)))
	}
}

// TestRetireTakesKubeProxysIPVSStateGently: the iptables mode retires
// kube-proxy's virtual servers as it does its own IPVS mode's: at once
// where no connection goes on, later where one does; someone else's stay.
func TestRetireTakesKubeProxysIPVSStateGently(t *testing.T) {
	b := newBed(t, testCfg)
	kubeProxys, foreign := kubeProxyLeftovers(t, b)
	busy := vsKey("TCP 192.168.1.10:30099")
	b.k.SetConnections(busy, netip.MustParseAddrPort("10.244.9.9:8080"), 1, 0)
	backend := b.backends[model.IPv4]
	inUse, err := backend.RetireIPVSState(context.Background())
	if err != nil || inUse != 1 {
		t.Fatalf("RetireIPVSState = %d, %v; want the one node port in use", inUse, err)
	}
	left := b.k.State(model.IPv4)
	for _, k := range kubeProxys {
		if _, ok := left.VirtualServers[k]; ok != (k == busy) {
			t.Errorf("%s: there %v after the first retirement:\n%s", k, ok, left.Dump())
		}
	}
	b.k.SetConnections(busy, netip.MustParseAddrPort("10.244.9.9:8080"), 0, 0)
	if inUse, err := backend.RetireIPVSState(context.Background()); err != nil || inUse != 0 {
		t.Fatalf("RetireIPVSState once idle = %d, %v", inUse, err)
	}
	if _, err := backend.RemoveKubeProxySets(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := b.k.State(model.IPv4)
	if _, ok := s.VirtualServers[foreign]; !ok || len(s.VirtualServers) != 1 || len(s.Sets) > 0 || b.k.HasLink(ipvs.DummyName) {
		t.Fatalf("want only someone else's virtual server left:\n%s", s.Dump())
	}
}

// kube-proxy's IPv6 sets carry "KUBE-6-" and are cut to ipset's 31
// characters: those are the names to destroy.
func TestRemoveKubeProxySetsKnowsTheCutIPv6Names(t *testing.T) {
	b := newBed(t, testCfg)
	names := []string{"KUBE-6-LOAD-BALANCER-SOURCE-CID", "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS", "KUBE-6-CLUSTER-IP"}
	for _, n := range names {
		if err := b.k.CreateSet(ipvs.Set{Name: n, Type: ipvs.HashIPPort, Family: model.IPv6}); err != nil {
			t.Fatal(err)
		}
	}
	destroyed, err := b.backends[model.IPv6].RemoveKubeProxySets(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if !slices.Equal(destroyed, names) {
		t.Errorf("destroyed %v, want %v", destroyed, names)
	}
}
