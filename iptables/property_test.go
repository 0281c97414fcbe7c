package iptables_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/netfilter/tracer"
)

// chooser makes the choices of the random view generator: from a seeded
// generator in property tests, from the fuzzer's bytes in FuzzCompile.
type chooser interface{ intn(n int) int }

type randChooser struct{ r *rand.Rand }

func (c randChooser) intn(n int) int { return c.r.IntN(n) }

// byteChooser reads choices from bytes; once they run out every choice is 0.
type byteChooser struct{ data []byte }

func (c *byteChooser) intn(n int) int {
	if n <= 1 || len(c.data) == 0 {
		return 0
	}
	v := int(c.data[0]) | int(c.data[min(1, len(c.data)-1)])<<8
	c.data = c.data[min(2, len(c.data)):]
	return v % n
}

// gen builds arbitrary views: any combination of fields, including ones
// Compute never produces (other-family addresses, port 0, endpoint lists
// that disagree with the policies), because Compile must survive them.
type gen struct {
	ch     chooser
	family model.Family
	// spread widens the address pools so that big views split buckets.
	spread int
}

func (g gen) addr(v4 string, v6 string, n int) netip.Addr {
	base := netip.MustParseAddr(v4)
	if (g.family == model.IPv6) != (g.ch.intn(20) == 0) { // now and then the other family
		base = netip.MustParseAddr(v6)
	}
	b := base.AsSlice()
	for i, x := 0, g.ch.intn(n); x > 0; i, x = i+1, x>>8 {
		b[len(b)-1-i] += byte(x)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (g gen) endpoints() []model.Endpoint {
	var eps []model.Endpoint
	for range g.ch.intn(5) {
		port := uint16(8080)
		if g.ch.intn(15) == 0 {
			port = 0
		}
		ep := model.Endpoint{Addr: netip.AddrPortFrom(g.addr("10.244.1.0", "fd00:10:244:1::", 12), port), Local: g.ch.intn(2) == 0, Ready: true}
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b model.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return eps
}

func (g gen) addrs(v4, v6 string) []netip.Addr {
	var out []netip.Addr
	for range g.ch.intn(3) {
		out = append(out, g.addr(v4, v6, 4))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func (g gen) servicePort() *model.ServicePort {
	sp := &model.ServicePort{
		Name: model.ServicePortName{
			Namespace: []string{"default", "kube-system", "we\"ird ns\n"}[g.ch.intn(3)],
			Name:      fmt.Sprintf("svc-%d", g.ch.intn(20+g.spread)),
			Port:      []string{"", "http", "dns"}[g.ch.intn(3)],
			Protocol:  model.Protocol(g.ch.intn(4)), // 0 is invalid
		},
		Port:                uint16(1 + g.ch.intn(3)*80),
		ExternalPolicyLocal: g.ch.intn(3) == 0,
		InternalPolicyLocal: g.ch.intn(4) == 0,
		ClusterEndpoints:    g.endpoints(),
	}
	if g.ch.intn(10) != 0 {
		sp.ClusterIP = g.addr("10.96.0.0", "fd00:96::", 8+g.spread*64)
	}
	if g.ch.intn(3) == 0 {
		sp.NodePort = uint16(30000 + g.ch.intn(5))
	}
	if g.ch.intn(3) == 0 {
		sp.ExternalIPs = g.addrs("192.0.2.0", "2001:db8:2::")
	}
	if g.ch.intn(3) == 0 {
		sp.LoadBalancerIPs = g.addrs("198.51.100.0", "2001:db8::")
		for range g.ch.intn(3) {
			sp.SourceRanges = append(sp.SourceRanges, netip.PrefixFrom(g.addr("203.0.113.0", "2001:db8:1::", 255), 24+g.ch.intn(9)))
		}
	}
	if g.ch.intn(4) == 0 {
		sp.AffinitySeconds = int32(1 + g.ch.intn(10800))
	}
	if sp.ExternalPolicyLocal {
		sp.LocalEndpoints = g.endpoints()
		sp.HealthCheckNodePort = uint16(32000 + g.ch.intn(3))
	}
	if sp.InternalPolicyLocal {
		sp.ExternalClusterEndpoints = g.endpoints()
	}
	return sp
}

func (g gen) view(n int) *model.NodeView {
	v := view(g.family)
	for range n {
		sp := g.servicePort()
		v.Services[sp.Name] = sp
	}
	return v
}

// mutate returns a copy of v with a few ports changed, added or removed.
func (g gen) mutate(v *model.NodeView) *model.NodeView {
	out := withPort(v, g.servicePort())
	names := v.SortedNames()
	for range g.ch.intn(4) {
		if len(names) == 0 {
			break
		}
		name := names[g.ch.intn(len(names))]
		switch g.ch.intn(3) {
		case 0:
			out = withoutPort(out, name)
		case 1:
			sp := *v.Services[name]
			sp.ClusterEndpoints = g.endpoints()
			out = withPort(out, &sp)
		default:
			sp := g.servicePort()
			sp.Name = name
			out = withPort(out, sp)
		}
	}
	return out
}

func (g gen) config() netfilter.Config {
	cfg := netfilter.Config{MasqueradeAll: g.ch.intn(4) == 0, MasqueradeBit: g.ch.intn(33)}
	if g.ch.intn(4) != 0 {
		cfg.ClusterCIDRs = podCIDRs
	}
	if g.ch.intn(4) == 0 {
		cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("fd00:192::/64")}[:1+g.ch.intn(2)]
	}
	return cfg
}

// checkPlans checks what must hold between a view, the view before it,
// and their plans, whatever the views hold.
func checkPlans(t *testing.T, cfg netfilter.Config, prev, next *model.NodeView) {
	t.Helper()
	full := iptables.Compile(cfg, next, nil)
	checkChainsUsed(t, full)
	if again := iptables.Compile(cfg, next, nil); string(again.Render(nil)) != string(full.Render(nil)) {
		t.Fatalf("two compilations of one view differ")
	}
	if p := iptables.Compile(cfg, next, next); !p.Empty() {
		t.Fatalf("compiling a view against itself writes %d chains, deletes %v", len(p.Write), p.Delete)
	}
	partial := iptables.Compile(cfg, next, prev)
	if partial.Full {
		t.Fatalf("a plan with prev is marked full")
	}
	base := iptables.Compile(cfg, prev, nil)
	if merged := merge(base, partial); !maps.EqualFunc(merged, full.Write, slices.Equal) {
		t.Fatalf("full plan of prev + partial plan != full plan of view:\n%s", mapDiff(merged, full.Write))
	}
	checkRestoredEqual(t, next.Family, base, partial, full)
}

// merge applies a partial plan to a full plan's chains, as the kernel would.
func merge(base, partial *netfilter.Plan) map[netfilter.ChainKey][]string {
	merged := maps.Clone(base.Write)
	for _, k := range partial.Delete {
		delete(merged, k)
	}
	maps.Copy(merged, partial.Write)
	return merged
}

// checkRestoredEqual loads the full plan of prev and then the partial plan
// through the tracer's restore, which refuses what iptables-restore would
// (unknown syntax, names over 28 characters, jumps to missing chains,
// deleting a referenced chain), and compares with loading the full plan.
func checkRestoredEqual(t *testing.T, family model.Family, base, partial, full *netfilter.Plan) {
	t.Helper()
	got, want := tracer.New(family), tracer.New(family)
	for _, step := range []struct {
		rs   *tracer.Ruleset
		plan *netfilter.Plan
	}{{got, base}, {got, partial}, {want, full}} {
		if err := step.rs.Restore(step.plan.Render(nil)); err != nil {
			t.Fatalf("restore: %v\n%s", err, step.plan.Render(nil))
		}
	}
	if got.Dump() != want.Dump() {
		t.Fatalf("restoring the partial plan on the previous full plan does not give the full plan")
	}
}

// checkChainsUsed checks that every chain but the top ones is jumped to:
// a chain nothing reaches is a leak that only grows.
func checkChainsUsed(t *testing.T, plan *netfilter.Plan) {
	t.Helper()
	used := map[netfilter.ChainKey]bool{}
	for _, k := range iptables.TopChains() {
		used[k] = true
	}
	for k, rules := range plan.Write {
		for _, r := range rules {
			if _, target, ok := strings.Cut(r, "-j "); ok {
				used[netfilter.ChainKey{Table: k.Table, Name: strings.Fields(target)[0]}] = true
			}
		}
	}
	for k := range plan.Write {
		if !used[k] {
			t.Fatalf("chain %v is written but nothing jumps to it", k)
		}
	}
	for _, k := range iptables.TopChains() {
		if _, ok := plan.Write[k]; !ok {
			t.Fatalf("full plan lacks top chain %v", k)
		}
	}
}

func mapDiff(got, want map[netfilter.ChainKey][]string) string {
	var b strings.Builder
	for _, k := range slices.SortedFunc(maps.Keys(got), compareKeys) {
		if w, ok := want[k]; !ok {
			fmt.Fprintf(&b, "extra %v\n", k)
		} else if !slices.Equal(got[k], w) {
			fmt.Fprintf(&b, "differs %v:\n  got  %q\n  want %q\n", k, got[k], w)
		}
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			fmt.Fprintf(&b, "missing %v\n", k)
		}
	}
	return b.String()
}

func compareKeys(a, b netfilter.ChainKey) int {
	return strings.Compare(string(a.Table)+" "+a.Name, string(b.Table)+" "+b.Name)
}

func TestPropertiesOfScenarios(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			prev := sc.prev
			if prev == nil {
				prev = view(sc.view.Family)
			}
			checkPlans(t, sc.cfg, prev, sc.view)
			checkPlans(t, sc.cfg, sc.view, prev)
		})
	}
}

// TestPartialPlansFollowRandomChanges walks views big enough to split
// destination buckets through random changes, checking every step, and
// makes sure the walk did move bucket boundaries.
func TestPartialPlansFollowRandomChanges(t *testing.T) {
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		t.Run(family.String(), func(t *testing.T) {
			g := gen{ch: randChooser{rand.New(rand.NewPCG(1, uint64(family)))}, family: family, spread: 300}
			cfg := g.config()
			prev := g.view(300)
			splits := map[int]bool{}
			for step := range 16 {
				next := g.mutate(prev)
				for range (step % 4) * 25 { // bursts: many services come and go
					next = g.mutate(next)
				}
				checkPlans(t, cfg, prev, next)
				splits[len(iptables.Compile(cfg, next, nil).Write[servicesChain])] = true
				prev = next
			}
			if len(splits) < 2 {
				t.Fatalf("the walk never changed the number of buckets: %v", splits)
			}
		})
	}
}

var servicesChain = netfilter.ChainKey{Table: netfilter.TableNAT, Name: "SVCPROXY-SERVICES"}

func TestBucketsSplitAndStillDispatch(t *testing.T) {
	v := view(model.IPv4)
	for i := range 600 {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i / 200), byte(i % 200)})
		sp := port("ns", fmt.Sprintf("svc-%d", i), "", model.TCP, ip.String(), 80,
			eps(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(2 + i/200), byte(i % 200)}), 8080).String()))
		v.Services[sp.Name] = sp
	}
	plan := iptables.Compile(testCfg, v, nil)
	services := plan.Write[servicesChain]
	if len(services) < 6 || len(services) > 12 {
		t.Fatalf("600 ClusterIPs made %d bucket jumps, want 5-11 and the node port jump:\n%s", len(services), strings.Join(services, "\n"))
	}
	rs := load(t, scenario{cfg: testCfg, view: v})
	for _, i := range []int{0, 127, 128, 333, 599} {
		checkTrace(t, rs, traceCase{
			src: localPod, dst: fmt.Sprintf("10.96.%d.%d", i/200, i%200), port: 80,
			want: []string{fmt.Sprintf("10.244.%d.%d:8080", 2+i/200, i%200)},
		})
	}
}

func FuzzCompile(f *testing.F) {
	f.Add([]byte("seed"))
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Fuzz(func(t *testing.T, data []byte) {
		ch := &byteChooser{data: data}
		family := []model.Family{model.IPv4, model.IPv6}[ch.intn(2)]
		g := gen{ch: ch, family: family}
		cfg := g.config()
		prev := g.view(ch.intn(12))
		checkPlans(t, cfg, prev, g.mutate(prev))
	})
}
