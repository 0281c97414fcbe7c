package ipvs_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/internal/golden"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// bed is a node made of fakes: one IPVS-mode kernel (IPVS, links, sets,
// sysctls) and each family's iptables, with the test node's addresses on
// its links, and a backend per family on a fake clock.
type bed struct {
	t        testing.TB
	cfg      ipvs.Config
	k        *ipvs.FakeKernel
	nf       map[model.Family]*netfilter.FakeKernel
	clock    *clocktesting.FakeClock
	backends map[model.Family]*ipvs.Backend
}

func newBed(t testing.TB, cfg ipvs.Config) *bed {
	b := &bed{t: t, cfg: cfg, k: ipvs.NewFakeKernel(), nf: map[model.Family]*netfilter.FakeKernel{},
		clock: clocktesting.NewFakeClock(time.Unix(1_000_000, 0))}
	for _, a := range nodeAddrs() {
		link := "eth0"
		switch {
		case a.IsLoopback():
			continue // NewFakeKernel has them on lo
		case a == netip.MustParseAddr("10.0.0.10"):
			link = "eth1"
		}
		b.k.AddHostAddr(link, a)
	}
	b.restart()
	return b
}

// restart makes new backends, as a restarted svcproxy would: they know
// nothing of what the old ones did.
func (b *bed) restart() {
	b.backends = map[model.Family]*ipvs.Backend{}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if b.nf[f] == nil {
			b.nf[f] = netfilter.NewFakeKernel()
		}
		cfg := ipvs.RulesConfig(f, netfilter.FlavorNFT)
		cfg.Run, cfg.Rules = b.nf[f], b.nf[f]
		rules, err := netfilter.NewApplier(cfg)
		if err != nil {
			b.t.Fatal(err)
		}
		b.backends[f] = ipvs.NewBackend(b.cfg, f, rules, func() (ipvs.Kernel, error) { return b.k, nil }, b.clock)
	}
}

func (b *bed) trySync(view, prev *model.NodeView) (model.SyncResult, error) {
	return b.backends[view.Family].Sync(context.Background(), view, prev)
}

func (b *bed) sync(view, prev *model.NodeView) model.SyncResult {
	b.t.Helper()
	res, err := b.trySync(view, prev)
	if err != nil {
		b.t.Fatalf("sync: %v", err)
	}
	return res
}

// state is everything the fakes hold of a family, iptables included.
func (b *bed) state(f model.Family) string {
	return b.k.State(f).Dump() + b.nf[f].Save(netfilter.TableFilter) + b.nf[f].Save(netfilter.TableNAT)
}

// ipvsState is what the fake holds of a family, less sysctls (those of
// every family and owner).
func (b *bed) ipvsState(f model.Family) string {
	s := b.k.State(f)
	s.Sysctls = nil
	return s.Dump()
}

func (b *bed) real(vs, rs string) (ipvs.RealStatus, bool) {
	return b.k.Real(vsKey(vs), netip.MustParseAddrPort(rs))
}

// vsKey parses "TCP 10.96.0.10:80".
func vsKey(s string) ipvs.VSKey {
	proto, addr, _ := strings.Cut(s, " ")
	p, err := model.ParseProtocol(proto)
	if err != nil {
		panic(err)
	}
	ap := netip.MustParseAddrPort(addr)
	return ipvs.VSKey{Addr: ap.Addr(), Protocol: p, Port: ap.Port()}
}

// A full sync leaves the kernel holding exactly what the plan wants, in
// every scenario, and a second full sync changes nothing.
func TestFullSyncProgramsThePlan(t *testing.T) {
	for _, sc := range scenarios() {
		if sc.prev != nil {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			b := newBed(t, sc.cfg)
			b.sync(sc.view, nil)
			want := sc.plan().Want
			sysctls := want.Sysctls
			want.Sysctls = nil
			if got := b.ipvsState(sc.view.Family); got != want.Dump() {
				t.Errorf("kernel holds:\n%s\nplan wants:\n%s\n%s", got, want.Dump(), golden.FirstDifference([]byte(want.Dump()), []byte(got)))
			}
			for _, s := range sysctls {
				if v, _ := b.k.ReadSysctl(s.Name); v != s.Value {
					t.Errorf("sysctl %s = %s, want %s", s.Name, v, s.Value)
				}
			}
			before := b.state(sc.view.Family)
			res := b.sync(sc.view, nil)
			if res.Written != len(sc.plan().Rules.Write) || res.Deleted != 0 || b.state(sc.view.Family) != before {
				t.Errorf("a second full sync changed the kernel: %+v", res)
			}
		})
	}
}

// allocated drops the ports of a generated view that share a ClusterIP
// and port, or a node port, with a port before them: the API server
// allocates those uniquely, which partial plans rely on (external and LB
// IPs are the users' and may be shared; Compile resolves them).
func allocated(v *model.NodeView) *model.NodeView {
	out := mt.Clone(v)
	clusterIPs, nodePorts := map[ipvs.VSKey]bool{}, map[ipvs.VSKey]bool{}
	for _, name := range v.SortedNames() {
		sp := v.Services[name]
		c := ipvs.VSKey{Addr: sp.ClusterIP, Protocol: sp.Protocol(), Port: sp.Port}
		n := ipvs.VSKey{Protocol: sp.Protocol(), Port: sp.NodePort}
		if (sp.ClusterIP.IsValid() && clusterIPs[c]) || (sp.NodePort != 0 && nodePorts[n]) {
			delete(out.Services, name)
			continue
		}
		clusterIPs[c], nodePorts[n] = true, true
	}
	return out
}

// A partial sync from the previous view lands where a full sync of the
// new view does, over runs of random changes in both families.
func TestPartialAfterFullEqualsFull(t *testing.T) {
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		t.Run(family.String(), func(t *testing.T) {
			g := mt.Gen{Ch: mt.RandChooser{R: rand.New(rand.NewPCG(7, uint64(family)))}, Family: family}
			for round := range 200 {
				cfg := ipvs.Config{Rules: g.Config(), ConnReuseFixed: true}
				prev := allocated(g.View(12))
				next := allocated(g.Mutate(prev))
				partial, full := newBed(t, cfg), newBed(t, cfg)
				partial.sync(prev, nil)
				partial.sync(next, prev)
				full.sync(next, nil)
				if got, want := partial.state(family), full.state(family); got != want {
					t.Fatalf("round %d: partial after full differs from full: %s", round, golden.FirstDifference([]byte(want), []byte(got)))
				}
			}
		})
	}
}

// Whatever fails half-way, a full sync afterwards converges on what a
// full sync of a fresh kernel writes; a failed sync says so.
func TestConvergesAfterRefusedCalls(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	g := mt.Gen{Ch: mt.RandChooser{R: rng}, Family: model.IPv4}
	for round := range 30 {
		cfg := ipvs.Config{Rules: g.Config(), ConnReuseFixed: true}
		prev := allocated(g.View(10))
		next := allocated(g.Mutate(prev))
		flaky, clean := newBed(t, cfg), newBed(t, cfg)
		flaky.sync(prev, nil)
		refused := 0
		flaky.k.Fault = func(call string) error {
			if rng.IntN(4) == 0 {
				refused++
				return errors.New("refused by the test")
			}
			return nil
		}
		_, err := flaky.trySync(next, prev)
		if refused > 0 && err == nil {
			t.Fatalf("round %d: %d calls refused, yet the sync reported success", round, refused)
		}
		flaky.k.Fault = nil
		flaky.sync(next, nil)
		clean.sync(next, nil)
		if got, want := flaky.state(model.IPv4), clean.state(model.IPv4); got != want {
			t.Fatalf("round %d: after refused calls and a full sync: %s", round, golden.FirstDifference([]byte(want), []byte(got)))
		}
	}
}

// bigView is n services of two endpoints each, one with a node port.
func bigView(n int) *model.NodeView {
	var ports []*model.ServicePort
	for i := range n {
		ip := fmt.Sprintf("10.96.%d.%d", i/250, 1+i%250)
		opts := []mt.PortOpt{mt.Eps(fmt.Sprintf("10.244.%d.%d:8080", 2+i/250, 1+i%250), fmt.Sprintf("10.245.%d.%d:8080", i/250, 1+i%250))}
		if i == 0 {
			opts = append(opts, mt.NodePort(30080))
		}
		ports = append(ports, mt.Port("default", fmt.Sprintf("svc-%d", i), "", model.TCP, ip, 80, opts...))
	}
	return mt.View(model.IPv4, ports...)
}

// A one-endpoint change at a thousand services is a handful of kernel
// requests, none of them a dump of the whole table.
func TestOneEndpointChangeIsAHandfulOfRequests(t *testing.T) {
	b := newBed(t, testCfg)
	prev := bigView(1000)
	b.sync(prev, nil)
	sp := *prev.Services[model.ServicePortName{Namespace: "default", Name: "svc-500", Protocol: model.TCP}]
	sp.ClusterEndpoints = []model.Endpoint{sp.ClusterEndpoints[0], {Addr: netip.MustParseAddrPort("10.246.0.1:8080"), Ready: true, Serving: true}}
	sp.Serving = sp.ClusterEndpoints
	next := mt.WithPort(prev, &sp)
	b.k.Calls = nil
	res := b.sync(next, prev)
	if res.Full || res.KernelOps > 10 {
		t.Errorf("one endpoint change: %+v; want a partial sync of at most 10 kernel requests", res)
	}
	if res.KernelOps != len(b.k.Calls) {
		t.Errorf("the sync reported %d kernel requests; it made %d: %q", res.KernelOps, len(b.k.Calls), b.k.Calls)
	}
	for _, c := range b.k.Calls {
		if strings.HasPrefix(c, "VirtualServers") || strings.HasPrefix(c, "ListSets") {
			t.Errorf("a partial sync dumped the table: %q", b.k.Calls)
		}
	}
	t.Logf("one endpoint change at 1000 services: %d kernel requests: %q", res.KernelOps, b.k.Calls)
}

func webView(opts ...mt.PortOpt) *model.NodeView { return v4(web(opts...)) }

// A TCP real server that leaves drains: weight 0 while it has
// connections, then deleted; the sync asks to be run again meanwhile.
func TestTCPRealServerDrainsThenGoes(t *testing.T) {
	b := newBed(t, testCfg)
	both := webView(twoRemote)
	b.sync(both, nil)
	b.k.SetConnections(vsKey("TCP 10.96.0.10:80"), netip.MustParseAddrPort("10.244.3.7:8080"), 1, 0)

	one := webView(mt.Eps("10.244.2.5:8080"))
	res := b.sync(one, both)
	rs, ok := b.real("TCP 10.96.0.10:80", "10.244.3.7:8080")
	if !ok || rs.Weight != 0 || res.RecheckAfter == 0 {
		t.Fatalf("after the endpoint left: %+v present=%v, recheck %v; want weight 0 and a recheck", rs, ok, res.RecheckAfter)
	}
	b.clock.Step(time.Second)
	if res := b.sync(one, one); res.RecheckAfter == 0 {
		t.Fatal("still draining, yet no recheck asked for")
	}
	if _, ok := b.real("TCP 10.96.0.10:80", "10.244.3.7:8080"); !ok {
		t.Fatal("a real server with a connection was deleted")
	}
	b.k.SetConnections(vsKey("TCP 10.96.0.10:80"), netip.MustParseAddrPort("10.244.3.7:8080"), 0, 0)
	res = b.sync(one, one)
	if _, ok := b.real("TCP 10.96.0.10:80", "10.244.3.7:8080"); ok || res.RecheckAfter != 0 {
		t.Fatalf("idle draining real server still there (recheck %v)", res.RecheckAfter)
	}
}

// A drain is looked at again a second after it began, then after half
// its age, and at its bound: a TCP connection's entries outlive it by
// minutes, and a look every second would cost a sync every second.
func TestDrainRechecksSpaceOut(t *testing.T) {
	cfg := testCfg
	cfg.DrainTimeout = 10 * time.Minute
	b := newBed(t, cfg)
	both := webView(twoRemote)
	b.sync(both, nil)
	b.k.SetConnections(vsKey("TCP 10.96.0.10:80"), netip.MustParseAddrPort("10.244.3.7:8080"), 0, 3)
	one := webView(mt.Eps("10.244.2.5:8080"))
	start := b.clock.Now()
	for _, step := range []struct {
		after, recheck time.Duration
	}{
		{0, time.Second},
		{time.Second, time.Second},
		{10 * time.Second, 5 * time.Second},
		{2 * time.Minute, time.Minute},
		{9*time.Minute + 50*time.Second, 10 * time.Second}, // the bound comes sooner than half the age
	} {
		b.clock.SetTime(start.Add(step.after))
		prev := one
		if step.after == 0 {
			prev = both
		}
		if res := b.sync(one, prev); res.RecheckAfter != step.recheck {
			t.Errorf("%v into the drain: recheck after %v, want %v", step.after, res.RecheckAfter, step.recheck)
		}
	}
}

// A connection that never ends does not keep a gone endpoint for good.
func TestDrainIsBounded(t *testing.T) {
	cfg := testCfg
	cfg.DrainTimeout = 10 * time.Minute
	b := newBed(t, cfg)
	both := webView(twoRemote)
	one := webView(mt.Eps("10.244.2.5:8080"))
	b.sync(both, nil)
	b.k.SetConnections(vsKey("TCP 10.96.0.10:80"), netip.MustParseAddrPort("10.244.3.7:8080"), 3, 2)
	b.sync(one, both)
	b.clock.Step(9 * time.Minute)
	b.sync(one, one)
	if _, ok := b.real("TCP 10.96.0.10:80", "10.244.3.7:8080"); !ok {
		t.Fatal("deleted before the bound")
	}
	b.clock.Step(time.Minute)
	b.sync(one, one)
	if _, ok := b.real("TCP 10.96.0.10:80", "10.244.3.7:8080"); ok {
		t.Fatal("still there after the bound")
	}
}

// An endpoint that comes back while it drains gets its weight back.
func TestReturningEndpointIsRestored(t *testing.T) {
	b := newBed(t, testCfg)
	both := webView(twoRemote)
	one := webView(mt.Eps("10.244.2.5:8080"))
	b.sync(both, nil)
	b.k.SetConnections(vsKey("TCP 10.96.0.10:80"), netip.MustParseAddrPort("10.244.3.7:8080"), 1, 0)
	b.sync(one, both)
	res := b.sync(both, one)
	if rs, _ := b.real("TCP 10.96.0.10:80", "10.244.3.7:8080"); rs.Weight != 1 || res.RecheckAfter != 0 {
		t.Fatalf("returning endpoint: %+v, recheck %v; want weight 1 and nothing left to drain", rs, res.RecheckAfter)
	}
}

// UDP real servers go at once, but one whose endpoint is terminating and
// still serving stays at weight 0, so its flows go on.
func TestUDPRealServersGoAtOnceUnlessServing(t *testing.T) {
	b := newBed(t, testCfg)
	dns := func(opts ...mt.PortOpt) *model.NodeView {
		return v4(mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53, opts...))
	}
	two := dns(mt.Eps("10.244.2.8:53", "10.244.3.8:53"))
	b.sync(two, nil)
	b.k.SetConnections(vsKey("UDP 10.96.0.53:53"), netip.MustParseAddrPort("10.244.3.8:53"), 0, 4)
	b.k.SetConnections(vsKey("UDP 10.96.0.53:53"), netip.MustParseAddrPort("10.244.2.8:53"), 0, 4)

	terminating := dns(mt.Eps("10.244.2.8:53"), mt.Terminating("10.244.3.8:53"))
	b.sync(terminating, two)
	if rs, ok := b.real("UDP 10.96.0.53:53", "10.244.3.8:53"); !ok || rs.Weight != 0 {
		t.Fatalf("serving terminating UDP endpoint: %+v present=%v; want kept at weight 0", rs, ok)
	}
	gone := dns(mt.Eps("10.244.2.8:53"))
	res := b.sync(gone, terminating)
	if _, ok := b.real("UDP 10.96.0.53:53", "10.244.3.8:53"); ok || res.RecheckAfter != 0 {
		t.Fatal("a UDP real server whose endpoint is gone must go at once, flows or not")
	}
}

// Virtual servers, sets and addresses svcproxy did not make are never
// touched, by a sync or by the cleanup; nor are those in
// --ipvs-exclude-cidrs.
func TestForeignStateIsLeftAlone(t *testing.T) {
	cfg := testCfg
	cfg.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.200.0/24")}
	b := newBed(t, cfg)
	foreign := []ipvs.VirtualServer{
		{VSKey: vsKey("TCP 192.168.1.10:443"), Scheduler: "wrr"},  // keepalived's, on a node address
		{VSKey: vsKey("UDP 192.0.2.99:53"), Scheduler: "rr"},      // on no address of ours
		{VSKey: vsKey("TCP 10.96.200.5:80"), Scheduler: "rr"},     // excluded, though bound below
		{VSKey: vsKey("TCP 192.168.1.10:30090"), Scheduler: "rr"}, // a node port that is not ours
	}
	for _, vs := range foreign {
		if err := b.k.AddVirtualServer(vs); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.k.EnsureDummy(ipvs.DummyName); err != nil {
		t.Fatal(err)
	}
	if err := b.k.AddAddr(ipvs.DummyName, netip.MustParseAddr("10.96.200.5")); err != nil {
		t.Fatal(err)
	}
	other := ipvs.Set{Name: "KUBE-CLUSTER-IP", Type: ipvs.HashIPPort, Family: model.IPv4}
	if err := b.k.CreateSet(other); err != nil {
		t.Fatal(err)
	}
	view := webView(mt.NodePort(30080), twoRemote)
	b.sync(view, nil)
	b.restart()
	b.sync(v4(), nil)
	if err := b.backends[model.IPv4].Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	left := b.k.State(model.IPv4)
	for _, vs := range foreign {
		if _, ok := left.VirtualServers[vs.VSKey]; !ok {
			t.Errorf("%s was not ours, yet it is gone", vs.VSKey)
		}
	}
	if len(left.VirtualServers) != len(foreign) {
		t.Errorf("after the cleanup:\n%s", left.Dump())
	}
	if _, ok := left.Sets[other.Name]; !ok {
		t.Error("someone else's set is gone")
	}
}

// A restarted svcproxy's first full sync removes what it finds of
// services deleted while it was down, node ports included, and keeps the
// rest.
func TestFullSyncRemovesWhatNoServiceWants(t *testing.T) {
	b := newBed(t, testCfg)
	api := mt.Port("default", "api", "", model.TCP, "10.96.0.20", 443, mt.NodePort(30443), mt.LoadBalancer("198.51.100.20"), mt.Eps("10.244.2.6:6443"))
	b.sync(v4(web(twoRemote), api), nil)
	b.restart()
	b.sync(v4(web(twoRemote)), nil)
	want := newBed(t, testCfg)
	want.sync(v4(web(twoRemote)), nil)
	if got, w := b.state(model.IPv4), want.state(model.IPv4); got != w {
		t.Errorf("after the restart: %s", golden.FirstDifference([]byte(w), []byte(got)))
	}
}

// New node addresses make a partial sync full: every node port answers on them.
func TestNodeAddressChangeMakesTheSyncFull(t *testing.T) {
	b := newBed(t, testCfg)
	view := webView(mt.NodePort(30080), twoRemote)
	b.sync(view, nil)
	if res := b.sync(view, view); res.Full {
		t.Fatal("nothing changed, yet the sync was full")
	}
	b.k.AddHostAddr("eth2", netip.MustParseAddr("172.16.0.10"))
	if res := b.sync(view, view); !res.Full {
		t.Fatal("a new node address did not make the sync full")
	}
	if _, ok := b.k.State(model.IPv4).VirtualServers[vsKey("TCP 172.16.0.10:30080")]; !ok {
		t.Fatal("no node port on the new node address")
	}
}

// Intact tells when another program removed part of the state.
func TestIntactNoticesWhatWentMissing(t *testing.T) {
	view := webView(mt.NodePort(30080), twoRemote)
	for _, damage := range []struct {
		what string
		do   func(*ipvs.FakeKernel) error
	}{
		{"virtual server deleted", func(k *ipvs.FakeKernel) error { return k.DeleteVirtualServer(vsKey("TCP 10.96.0.10:80")) }},
		{"real server deleted", func(k *ipvs.FakeKernel) error {
			return k.DeleteRealServer(vsKey("TCP 192.168.1.10:30080"), netip.MustParseAddrPort("10.244.2.5:8080"))
		}},
		{"real server's weight changed", func(k *ipvs.FakeKernel) error {
			return k.UpdateRealServer(vsKey("TCP 10.96.0.10:80"), ipvs.RealServer{Addr: netip.MustParseAddrPort("10.244.2.5:8080"), Weight: 7})
		}},
		{"scheduler changed", func(k *ipvs.FakeKernel) error {
			vs := *k.State(model.IPv4).VirtualServers[vsKey("TCP 10.96.0.10:80")]
			vs.Scheduler = "lc"
			return k.UpdateVirtualServer(vs)
		}},
		{"address unbound", func(k *ipvs.FakeKernel) error { return k.DelAddr(ipvs.DummyName, netip.MustParseAddr("10.96.0.10")) }},
		{"set entry removed", func(k *ipvs.FakeKernel) error {
			return k.DelEntry(ipvs.Set{Name: "SVCPROXY-CLUSTER-IP"}, ipvs.Entry{Addr: netip.MustParseAddr("10.96.0.10"), Protocol: model.TCP, Port: 80})
		}},
		{"sysctl reset", func(k *ipvs.FakeKernel) error { return k.WriteSysctl("net/ipv4/vs/conntrack", "0") }},
	} {
		t.Run(damage.what, func(t *testing.T) {
			b := newBed(t, testCfg)
			b.sync(view, nil)
			backend := b.backends[model.IPv4]
			if ok, err := backend.Intact(context.Background(), view); !ok || err != nil {
				t.Fatalf("Intact after a sync: %v %v", ok, err)
			}
			if err := damage.do(b.k); err != nil {
				t.Fatal(err)
			}
			if ok, _ := backend.Intact(context.Background(), view); ok {
				t.Fatal("Intact did not notice")
			}
			b.sync(view, nil)
			if ok, err := backend.Intact(context.Background(), view); !ok || err != nil {
				t.Fatalf("Intact after the repairing full sync: %v %v", ok, err)
			}
		})
	}
}

// Two services claiming one LoadBalancer IP and port: the first by name
// owns the virtual server, in the check as in the sync, so the check
// finds the synced kernel intact rather than asking for full syncs forever.
func TestIntactWhereTwoPortsClaimOneVirtualServer(t *testing.T) {
	a := mt.Port("default", "a", "", model.TCP, "10.96.0.30", 80, mt.LoadBalancer("203.0.113.9"), mt.Eps("10.244.2.8:8080"))
	b2 := mt.Port("default", "b", "", model.TCP, "10.96.0.31", 80, mt.LoadBalancer("203.0.113.9"), mt.Eps("10.244.3.9:8080"))
	view := v4(a, b2)
	b := newBed(t, testCfg)
	b.sync(view, nil)
	lb := b.k.State(model.IPv4).VirtualServers[vsKey("TCP 203.0.113.9:80")]
	if lb == nil || len(lb.Reals) != 1 || lb.Reals[0].Addr != netip.MustParseAddrPort("10.244.2.8:8080") {
		t.Fatalf("the LB IP's virtual server %+v, want service a's endpoint alone", lb)
	}
	if ok, err := b.backends[model.IPv4].Intact(context.Background(), view); !ok || err != nil {
		t.Fatalf("Intact after a sync: %v %v", ok, err)
	}
}

// A check the runner stopped (a change came) stops before the kernel's
// table is read, and says it did not finish rather than "intact".
func TestIntactStopsWhenItsContextEnds(t *testing.T) {
	b := newBed(t, testCfg)
	view := webView(twoRemote)
	b.sync(view, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := len(b.k.Calls)
	if ok, err := b.backends[model.IPv4].Intact(ctx, view); ok || !errors.Is(err, context.Canceled) {
		t.Fatalf("Intact with its context ended: %v %v; want not intact, context.Canceled", ok, err)
	}
	for _, c := range b.k.Calls[calls:] {
		if strings.HasPrefix(c, "Table") || strings.HasPrefix(c, "ListSets") {
			t.Errorf("a stopped check still read the kernel's state: %q", b.k.Calls[calls:])
		}
	}
}

// Without the dummy driver a sync fails naming it, and writes nothing.
func TestNoDummyDriverWritesNothing(t *testing.T) {
	b := newBed(t, testCfg)
	b.k.NoDummy = true
	_, err := b.trySync(webView(twoRemote), nil)
	if err == nil || !strings.Contains(err.Error(), ipvs.DummyName) || !errors.Is(err, ipvs.ErrNoDummy) {
		t.Fatalf("sync without the dummy driver: %v", err)
	}
	for _, c := range b.k.Calls {
		if !slices.ContainsFunc([]string{"HostAddrs", "EnsureDummy", "SetEntries"}, func(p string) bool { return strings.HasPrefix(c, p) }) {
			t.Errorf("wrote %q before failing", c)
		}
	}
	if len(b.nf[model.IPv4].Calls) > 0 {
		t.Errorf("iptables touched: %q", b.nf[model.IPv4].Calls)
	}
}

// The cleanup leaves nothing of svcproxy's, in either family, kube-ipvs0 included.
func TestCleanupLeavesNothingOfOurs(t *testing.T) {
	b := newBed(t, testCfg)
	b.sync(webView(mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), twoRemote), nil)
	b.sync(mt.View(model.IPv6, mt.Port("default", "web6", "", model.TCP, "fd00:96::10", 80, mt.Eps("[fd00:10:244:2::5]:8080"))), nil)
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if err := b.backends[f].Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if s := b.k.State(f); len(s.VirtualServers)+len(s.Addresses)+len(s.Sets) > 0 {
			t.Errorf("%v left after the cleanup:\n%s", f, s.Dump())
		}
		if strings.Contains(b.state(f), netfilter.ChainPrefix) {
			t.Errorf("%v rules left after the cleanup", f)
		}
	}
	if b.k.HasLink(ipvs.DummyName) {
		t.Error("kube-ipvs0 left after the cleanup")
	}
}

// Compile is deterministic, and a partial plan between equal views is empty.
func TestCompileIsDeterministic(t *testing.T) {
	for _, sc := range scenarios() {
		if a, b := dump(sc.plan()), dump(sc.plan()); string(a) != string(b) {
			t.Errorf("%s: two compilations differ", sc.name)
		}
		p := ipvs.Compile(sc.cfg, sc.view, sc.view, nodeAddrs())
		if !p.Want.Empty() || !p.Remove.Empty() || !p.Rules.Empty() {
			t.Errorf("%s: partial plan between equal views:\n%s", sc.name, dump(p))
		}
	}
}

// No view crashes Compile, and its partial plans keep to what a full one
// writes: the seed corpus runs in every test run.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte("a view of many ports with node ports and LB IPs and local policies"))
	f.Add([]byte{1, 9, 9, 9, 2, 7, 200, 3, 3, 3, 3, 3, 17, 90, 1, 0, 4, 4, 8, 8, 250, 251})
	f.Fuzz(func(t *testing.T, data []byte) {
		ch := &mt.ByteChooser{Data: data}
		family := model.IPv4
		if ch.Intn(2) == 1 {
			family = model.IPv6
		}
		g := mt.Gen{Ch: ch, Family: family}
		cfg := ipvs.Config{Rules: g.Config()}
		prev := allocated(g.View(ch.Intn(12)))
		next := allocated(g.Mutate(prev))
		partial, full := newBed(t, cfg), newBed(t, cfg)
		partial.sync(prev, nil)
		partial.sync(next, prev)
		full.sync(next, nil)
		if got, want := partial.state(family), full.state(family); got != want {
			t.Fatalf("partial after full differs from full: %s", golden.FirstDifference([]byte(want), []byte(got)))
		}
	})
}

// Retiring the IPVS state (the iptables mode taking over a node) removes
// what no connection uses at once, and the rest once its connections end.
func TestRetireKeepsWhatConnectionsUse(t *testing.T) {
	b := newBed(t, testCfg)
	api := mt.Port("default", "api", "", model.TCP, "10.96.0.20", 443, mt.NodePort(30443), mt.Eps("10.244.2.6:6443"))
	b.sync(v4(web(twoRemote), api), nil)
	b.k.SetConnections(vsKey("TCP 10.96.0.10:80"), netip.MustParseAddrPort("10.244.3.7:8080"), 1, 0)
	backend := b.backends[model.IPv4]
	inUse, err := backend.RetireIPVSState(context.Background())
	if err != nil || inUse != 1 {
		t.Fatalf("RetireIPVSState = %d, %v; want the one virtual server in use", inUse, err)
	}
	left := b.k.State(model.IPv4)
	if _, ok := left.VirtualServers[vsKey("TCP 10.96.0.10:80")]; !ok || !left.Addresses[netip.MustParseAddr("10.96.0.10")] {
		t.Fatalf("the virtual server in use (or its address) is gone:\n%s", left.Dump())
	}
	if len(left.VirtualServers) != 1 || left.Addresses[netip.MustParseAddr("10.96.0.20")] {
		t.Fatalf("what no connection uses stays:\n%s", left.Dump())
	}
	b.k.SetConnections(vsKey("TCP 10.96.0.10:80"), netip.MustParseAddrPort("10.244.3.7:8080"), 0, 0)
	if inUse, err := backend.RetireIPVSState(context.Background()); err != nil || inUse != 0 {
		t.Fatalf("RetireIPVSState once idle = %d, %v", inUse, err)
	}
	if s := b.k.State(model.IPv4); len(s.VirtualServers)+len(s.Addresses)+len(s.Sets) > 0 || b.k.HasLink(ipvs.DummyName) {
		t.Fatalf("left after the last connection ended:\n%s", s.Dump())
	}
}
