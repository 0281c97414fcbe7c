package netfilter

import (
	"context"
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
)

// These tests run real iptables of both flavors, each in network
// namespaces of its own: nothing touches the host's rules.

// kernelApplier is an Applier whose every call runs inside ns.
type kernelApplier struct {
	t      *testing.T
	ns     *netnstest.NS
	a      *Applier
	flavor Flavor
	family model.Family
}

func newKernelApplier(t *testing.T, ns *netnstest.NS, flavor Flavor, family model.Family, jumps []JumpRule, top []ChainKey) *kernelApplier {
	t.Helper()
	a, err := NewApplier(ApplierConfig{Family: family, Flavor: flavor, Jumps: jumps, TopChains: top})
	if err != nil {
		t.Fatal(err)
	}
	return &kernelApplier{t: t, ns: ns, a: a, flavor: flavor, family: family}
}

func (k *kernelApplier) apply(plan *Plan) error {
	return k.ns.Do(func() error {
		_, err := k.a.Apply(context.Background(), plan)
		return err
	})
}

func (k *kernelApplier) mustApply(plan *Plan) {
	k.t.Helper()
	if err := k.apply(plan); err != nil {
		k.t.Fatalf("Apply: %v", err)
	}
}

func (k *kernelApplier) intact() bool {
	k.t.Helper()
	var ok bool
	err := k.ns.Do(func() (err error) {
		ok, err = k.a.Intact(context.Background())
		return err
	})
	if err != nil {
		k.t.Fatalf("Intact: %v", err)
	}
	return ok
}

func (k *kernelApplier) cleanup() error {
	return k.ns.Do(func() error { return k.a.Cleanup(context.Background()) })
}

// iptables runs the flavor's iptables in the namespace, as an admin would.
func (k *kernelApplier) iptables(args ...string) {
	k.t.Helper()
	k.ns.MustRun(k.flavor.Binary(k.family, ""), args...)
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save returns both tables as iptables-save shows them, without the
// comment lines and counters that change from one call to the next.
func (k *kernelApplier) save() string {
	k.t.Helper()
	var b strings.Builder
	for _, table := range []Table{TableFilter, TableNAT} {
		out := k.ns.MustRun(k.flavor.Binary(k.family, "-save"), "-t", string(table))
		for _, line := range strings.Split(out, "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				b.WriteString(counters.ReplaceAllString(line, "[0:0]") + "\n")
			}
		}
	}
	return b.String()
}

// familyPlan is testPlan in the family: ClusterIP 10.96.0.1 or fd00:96::1
// port 80 DNATed to endpoint.
func familyPlan(family model.Family, endpoint netip.AddrPort) *Plan {
	vip := "10.96.0.1/32"
	if family == model.IPv6 {
		vip = "fd00:96::1/128"
	}
	plan := testPlan(endpoint.String())
	plan.Family = family
	plan.Write[servicesKey()] = []string{"-d " + vip + " -p tcp -m tcp --dport 80 -j SVCPROXY-SVC-WEB"}
	return plan
}

func endpointIn(family model.Family, last byte) netip.AddrPort {
	if family == model.IPv6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 0, 2, 0x44, 15: last}), 8080)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 0, last}), 8080)
}

func forEachFlavorAndFamily(t *testing.T, test func(t *testing.T, k *kernelApplier)) {
	for _, flavor := range Flavors() {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			t.Run(string(flavor)+"/"+family.String(), func(t *testing.T) {
				ns := netnstest.NewNS(t, "node")
				test(t, newKernelApplier(t, ns, flavor, family, testJumps(), testTop()))
			})
		}
	}
}

func TestKernelApplyShowsInSave(t *testing.T) {
	forEachFlavorAndFamily(t, func(t *testing.T, k *kernelApplier) {
		ep := endpointIn(k.family, 11)
		k.mustApply(familyPlan(k.family, ep))
		saved := k.save()
		for _, want := range []string{
			":SVCPROXY-SERVICES - [0:0]",
			":SVCPROXY-SVC-WEB - [0:0]",
			":SVCPROXY-FILTER - [0:0]",
			`-A PREROUTING -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES`,
			`-A OUTPUT -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES`,
			"-A FORWARD -j SVCPROXY-FILTER",
			"-j DNAT --to-destination " + ep.String(),
		} {
			if !strings.Contains(saved, want) {
				t.Errorf("save lacks %q:\n%s", want, saved)
			}
		}
		if !k.intact() {
			t.Error("not Intact after a full apply")
		}
	})
}

func TestKernelPartialApplyRewritesOnlyItsChains(t *testing.T) {
	forEachFlavorAndFamily(t, func(t *testing.T, k *kernelApplier) {
		k.mustApply(familyPlan(k.family, endpointIn(k.family, 11)))
		// A rule the partial plan must not touch, in a chain it does not name.
		k.iptables("-t", "nat", "-A", "SVCPROXY-SERVICES", "-p", "udp", "-j", "RETURN")
		moved := endpointIn(k.family, 12)
		k.mustApply(&Plan{Family: k.family, Write: map[ChainKey][]string{webKey(): {"-p tcp -m tcp -j DNAT --to-destination " + moved.String()}}})

		saved := k.save()
		if !strings.Contains(saved, "-A SVCPROXY-SERVICES -p udp -j RETURN") {
			t.Errorf("partial apply touched a chain it does not name:\n%s", saved)
		}
		if !strings.Contains(saved, "--to-destination "+moved.String()) || strings.Contains(saved, endpointIn(k.family, 11).String()) {
			t.Errorf("partial apply did not rewrite SVCPROXY-SVC-WEB whole:\n%s", saved)
		}
	})
}

func TestKernelFailedApplyKeepsThePreviousRules(t *testing.T) {
	forEachFlavorAndFamily(t, func(t *testing.T, k *kernelApplier) {
		k.mustApply(familyPlan(k.family, endpointIn(k.family, 11)))
		before := k.save()
		cases := []struct {
			name string
			bad  ChainKey
			rule string
		}{
			// Rejected while parsing the input.
			{"unknown match", webKey(), "-m no-such-match -j ACCEPT"},
			// Accepted by the parser, refused by the kernel at COMMIT.
			{"reject-with tcp-reset without -p tcp", filterChain(), "-j REJECT --reject-with tcp-reset"},
		}
		for _, c := range cases {
			plan := familyPlan(k.family, endpointIn(k.family, 12))
			plan.Write[c.bad] = append(plan.Write[c.bad], c.rule)
			err := k.apply(plan)
			var re *RestoreError
			if !errors.As(err, &re) || re.Line == 0 || re.Text == "" {
				t.Errorf("%s: Apply error = %v; want a RestoreError naming a line", c.name, err)
			} else {
				t.Logf("%s: %v", c.name, err)
			}
			if after := k.save(); after != before {
				t.Errorf("%s: the failed apply changed the rules:\n%s\nwas:\n%s", c.name, after, before)
			}
		}
	})
}

func TestKernelIntactNoticesDamageAndFullApplyRepairs(t *testing.T) {
	forEachFlavorAndFamily(t, func(t *testing.T, k *kernelApplier) {
		plan := familyPlan(k.family, endpointIn(k.family, 11))
		k.mustApply(plan)
		want := k.save()

		k.iptables("-t", "nat", "-F")
		if k.intact() {
			t.Error("Intact after iptables -t nat -F")
		}
		k.mustApply(plan)
		if !k.intact() || k.save() != want {
			t.Errorf("full apply after a flush: intact %v, rules:\n%s\nwant:\n%s", k.intact(), k.save(), want)
		}

		k.iptables("-t", "filter", "-D", "FORWARD", "-j", "SVCPROXY-FILTER")
		if k.intact() {
			t.Error("Intact after a jump rule was deleted")
		}
		k.mustApply(plan)
		if !k.intact() || k.save() != want {
			t.Errorf("full apply after a jump was deleted: intact %v, rules:\n%s\nwant:\n%s", k.intact(), k.save(), want)
		}
	})
}

// The IPVS mode's Intact finds the jump rules by their text in
// iptables-save output: the text JumpRule gives must be the one both
// flavors print, or every check would ask for a full sync.
func TestKernelIntactBySaveFindsTheRealJumpRules(t *testing.T) {
	for _, flavor := range Flavors() {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			t.Run(string(flavor)+"/"+family.String(), func(t *testing.T) {
				ns := netnstest.NewNS(t, "node")
				k := newKernelApplier(t, ns, flavor, family, JumpRules(), TopChains())
				plan := NewPlan(family, true)
				for _, key := range TopChains() {
					plan.Write[key] = nil
				}
				k.mustApply(plan)
				bySave := *k
				bySave.a = &Applier{}
				*bySave.a = *k.a
				bySave.a.small, bySave.a.hooks = true, nil
				// k reads iptables-nft's tables over netlink; byRule runs
				// iptables -C, as k does with legacy.
				byRule := *k
				byRule.a = &Applier{}
				*byRule.a = *k.a
				byRule.a.hooks, byRule.a.small = nil, false
				if (k.a.hooks != nil) != (flavor == FlavorNFT) {
					t.Fatalf("%s: reads the tables over netlink: %v", flavor, k.a.hooks != nil)
				}
				if !k.intact() || !bySave.intact() || !byRule.intact() {
					t.Fatalf("right after a full apply: intact %v, by save %v, by rule %v; rules:\n%s", k.intact(), bySave.intact(), byRule.intact(), k.save())
				}
				// With legacy, the tables' stamps stand for a save while
				// nothing changes: the check runs no program.
				if flavor == FlavorLegacy {
					counted := &countingRunner{Runner: k.a.run}
					k.a.run = counted
					if !k.intact() || counted.n != 0 {
						t.Errorf("legacy, nothing changed: intact %v after %d programs, want none", k.intact(), counted.n)
					}
					k.a.run = counted.Runner
				}
				// Others' rules in the same chains, of every kind, are
				// read past.
				k.iptables("-t", "nat", "-I", "PREROUTING", "1", "-m", "addrtype", "--dst-type", "LOCAL", "-m", "comment", "--comment", "someone else's", "-j", "RETURN")
				k.iptables("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "REDIRECT", "--to-ports", "8080")
				k.iptables("-t", "filter", "-A", "FORWARD", "-m", "limit", "--limit", "5/min", "-j", "LOG", "--log-prefix", "fwd ")
				if !k.intact() || !byRule.intact() {
					t.Errorf("with others' rules beside: intact %v, by rule %v; rules:\n%s", k.intact(), byRule.intact(), k.save())
				}
				// A full apply finds them in its save too: two saves and a
				// restore, no iptables call per jump rule.
				var again Applied
				if err := ns.Do(func() (err error) { again, err = k.a.Apply(context.Background(), plan); return err }); err != nil || again.Ops != 3 {
					t.Errorf("a second full apply: %d programs run, %v; want 3", again.Ops, err)
				}
				k.iptables("-t", "filter", "-D", "FORWARD", "-m", "conntrack", "--ctstate", "NEW",
					"-m", "comment", "--comment", "svcproxy service firewall", "-j", ChainFilter)
				if k.intact() || bySave.intact() || byRule.intact() {
					t.Errorf("a jump rule deleted: intact %v, by save %v, by rule %v", k.intact(), bySave.intact(), byRule.intact())
				}
				k.mustApply(plan)
				k.iptables("-t", "nat", "-X", ChainHairpin)
				if k.intact() || bySave.intact() || byRule.intact() {
					t.Errorf("a top chain deleted: intact %v, by save %v, by rule %v", k.intact(), bySave.intact(), byRule.intact())
				}
				k.mustApply(plan)
				k.iptables("-t", "nat", "-F")
				if k.intact() || byRule.intact() {
					t.Errorf("the nat table flushed: intact %v, by rule %v", k.intact(), byRule.intact())
				}
			})
		}
	}
}

func TestKernelFullApplyRemovesStaleChains(t *testing.T) {
	forEachFlavorAndFamily(t, func(t *testing.T, k *kernelApplier) {
		k.mustApply(familyPlan(k.family, endpointIn(k.family, 11)))
		k.iptables("-t", "nat", "-N", "SVCPROXY-SVC-GONE")
		k.iptables("-t", "nat", "-A", "SVCPROXY-SVC-GONE", "-p", "udp", "-j", "DNAT", "--to-destination", endpointIn(k.family, 99).String())
		k.iptables("-t", "nat", "-N", "SVCPROXY-SVC-OLD")
		k.iptables("-t", "nat", "-A", "SVCPROXY-SVC-OLD", "-j", "SVCPROXY-SVC-GONE")
		k.iptables("-t", "filter", "-N", "SVCPROXY-OLD-FILTER")
		k.iptables("-t", "nat", "-N", "KUBE-SERVICES")
		k.mustApply(familyPlan(k.family, endpointIn(k.family, 11)))

		saved := k.save()
		for _, gone := range []string{"SVCPROXY-SVC-GONE", "SVCPROXY-SVC-OLD", "SVCPROXY-OLD-FILTER"} {
			if strings.Contains(saved, gone) {
				t.Errorf("stale chain %s survived a full apply:\n%s", gone, saved)
			}
		}
		if !strings.Contains(saved, ":KUBE-SERVICES") || !strings.Contains(saved, ":SVCPROXY-SVC-WEB") {
			t.Errorf("full apply removed a chain not its own or still needed:\n%s", saved)
		}
	})
}

func TestKernelCleanupLeavesNothing(t *testing.T) {
	forEachFlavorAndFamily(t, func(t *testing.T, k *kernelApplier) {
		k.mustApply(familyPlan(k.family, endpointIn(k.family, 11)))
		k.iptables("-t", "nat", "-N", "KUBE-SERVICES")
		if err := k.cleanup(); err != nil {
			t.Fatal(err)
		}
		saved := k.save()
		if strings.Contains(saved, "SVCPROXY") || !strings.Contains(saved, ":KUBE-SERVICES") {
			t.Errorf("after Cleanup:\n%s", saved)
		}
		if err := k.cleanup(); err != nil {
			t.Errorf("Cleanup of a clean node: %v", err)
		}
	})
}

// TestKernelDNATCarriesTraffic: a pod reaches another through a ClusterIP
// programmed by the applier, keeping its own source address, and no longer
// once Cleanup has run.
func TestKernelDNATCarriesTraffic(t *testing.T) {
	for _, flavor := range Flavors() {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			t.Run(string(flavor)+"/"+family.String(), func(t *testing.T) {
				bed := netnstest.NewBed(t, 2)
				client, server := bed.Pod(0), bed.Pod(1)
				server.ServeTCP(8080)
				client.Timeout = 300 * time.Millisecond
				k := newKernelApplier(t, bed.Node(), flavor, family, testJumps(), testTop())
				vip := netip.MustParseAddrPort("10.96.0.1:80")
				if family == model.IPv6 {
					vip = netip.MustParseAddrPort("[fd00:96::1]:80")
				}
				k.mustApply(familyPlan(family, netip.AddrPortFrom(server.Addr(vip.Addr()), 8080)))

				got, err := client.DialTCP(vip)
				if err != nil {
					t.Fatalf("pod-0 to ClusterIP %s: %v", vip, err)
				}
				if got.Server != "pod-1" || got.Source.Addr() != client.Addr(vip.Addr()) {
					t.Errorf("pod-0 to ClusterIP %s: answered %q, want pod-1 seeing %s", vip, got, client.Addr(vip.Addr()))
				}
				if err := k.cleanup(); err != nil {
					t.Fatal(err)
				}
				if got, err := client.DialTCP(vip); err == nil {
					t.Errorf("after Cleanup the ClusterIP still answers: %q", got)
				}
			})
		}
	}
}

// TestKernelDetectFlavorFindsTheRulesInUse: a node whose rules were made
// with one flavor is detected as that flavor; an empty one as nft.
func TestKernelDetectFlavorFindsTheRulesInUse(t *testing.T) {
	detect := func(ns *netnstest.NS) Flavor {
		t.Helper()
		var f Flavor
		if err := ns.Do(func() (err error) { f, err = DetectFlavor(context.Background(), ExecRunner{}); return err }); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if got := detect(netnstest.NewNS(t, "empty")); got != FlavorNFT {
		t.Errorf("empty node detected as %s, want nft", got)
	}
	for _, flavor := range Flavors() {
		ns := netnstest.NewNS(t, string(flavor))
		ns.MustRun(flavor.Binary(model.IPv4, ""), "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
		ns.MustRun(flavor.Binary(model.IPv6, ""), "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
		if got := detect(ns); got != flavor {
			t.Errorf("node with %s rules detected as %s", flavor, got)
		}
	}
}

// countingRunner counts the programs run through it.
type countingRunner struct {
	Runner
	n int
}

func (c *countingRunner) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	c.n++
	return c.Runner.Run(ctx, name, args, stdin)
}
