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
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/netfilter/tracer"
)

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
				prev = mt.View(sc.view.Family)
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
			g := mt.Gen{Ch: mt.RandChooser{R: rand.New(rand.NewPCG(1, uint64(family)))}, Family: family, Spread: 300}
			cfg := g.Config()
			prev := g.View(300)
			splits := map[int]bool{}
			for step := range 16 {
				next := g.Mutate(prev)
				for range (step % 4) * 25 { // bursts: many services come and go
					next = g.Mutate(next)
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
	v := mt.View(model.IPv4)
	for i := range 600 {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i / 200), byte(i % 200)})
		sp := mt.Port("ns", fmt.Sprintf("svc-%d", i), "", model.TCP, ip.String(), 80,
			mt.Eps(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(2 + i/200), byte(i % 200)}), 8080).String()))
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
		ch := &mt.ByteChooser{Data: data}
		family := []model.Family{model.IPv4, model.IPv6}[ch.Intn(2)]
		g := mt.Gen{Ch: ch, Family: family}
		cfg := g.Config()
		prev := g.View(ch.Intn(12))
		checkPlans(t, cfg, prev, g.Mutate(prev))
	})
}
