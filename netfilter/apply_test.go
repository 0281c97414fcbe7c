package netfilter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/model"
)

// The hand-written ruleset of the applier tests: a ClusterIP 10.96.0.1:80
// DNATed to one pod, hooked in from PREROUTING and OUTPUT, and an empty
// filter chain hooked into FORWARD.
func testJumps() []JumpRule {
	return []JumpRule{
		{TableNAT, "PREROUTING", []string{"-m", "comment", "--comment", "svcproxy portals", "-j", "SVCPROXY-SERVICES"}},
		{TableNAT, "OUTPUT", []string{"-m", "comment", "--comment", "svcproxy portals", "-j", "SVCPROXY-SERVICES"}},
		{TableFilter, "FORWARD", []string{"-j", "SVCPROXY-FILTER"}},
	}
}

func testTop() []ChainKey {
	return []ChainKey{{TableFilter, "SVCPROXY-FILTER"}, {TableNAT, "SVCPROXY-SERVICES"}}
}

func servicesKey() ChainKey { return ChainKey{TableNAT, "SVCPROXY-SERVICES"} }
func webKey() ChainKey      { return ChainKey{TableNAT, "SVCPROXY-SVC-WEB"} }
func filterChain() ChainKey { return ChainKey{TableFilter, "SVCPROXY-FILTER"} }

// testPlan is the full plan of the ruleset, DNATing to endpoint.
func testPlan(endpoint string) *Plan {
	return &Plan{Family: model.IPv4, Full: true, Write: map[ChainKey][]string{
		servicesKey(): {"-d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j SVCPROXY-SVC-WEB"},
		webKey():      {"-p tcp -m tcp -j DNAT --to-destination " + endpoint},
		filterChain(): nil,
	}}
}

func fakeApplier(t *testing.T, family model.Family, flavor Flavor) (*Applier, *FakeKernel) {
	t.Helper()
	k := NewFakeKernel()
	a, err := NewApplier(ApplierConfig{Family: family, Flavor: flavor, Jumps: testJumps(), TopChains: testTop(), Run: k, Rules: k})
	if err != nil {
		t.Fatal(err)
	}
	return a, k
}

func mustApply(t *testing.T, a *Applier, plan *Plan) {
	t.Helper()
	if _, err := a.Apply(context.Background(), plan); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func TestFullApplyWritesChainsThenHooksThemIn(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	done, err := a.Apply(context.Background(), testPlan("10.244.0.11:8080"))
	if err != nil {
		t.Fatal(err)
	}
	if want := len(testPlan("10.244.0.11:8080").Render(nil)); done.Bytes != want {
		t.Errorf("Apply reported %d bytes, want the %d of the restore input", done.Bytes, want)
	}
	if done.Ops != len(k.Calls) {
		t.Errorf("Apply reported %d kernel operations; it made %d: %q", done.Ops, len(k.Calls), k.Calls)
	}
	wantNAT := `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SVCPROXY-SERVICES - [0:0]
:SVCPROXY-SVC-WEB - [0:0]
-A PREROUTING -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES
-A OUTPUT -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES
-A SVCPROXY-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j SVCPROXY-SVC-WEB
-A SVCPROXY-SVC-WEB -p tcp -m tcp -j DNAT --to-destination 10.244.0.11:8080
COMMIT
`
	if got := k.Save(TableNAT); got != wantNAT {
		t.Errorf("nat table:\n%s\nwant:\n%s", got, wantNAT)
	}
	if got := k.Save(TableFilter); !strings.Contains(got, "-A FORWARD -j SVCPROXY-FILTER\n") {
		t.Errorf("filter table lacks the FORWARD jump:\n%s", got)
	}
	wantCalls := []string{
		"iptables-nft-save -t filter",
		"iptables-nft-save -t nat",
		"iptables-nft-restore --noflush --wait",
		"-t filter -I FORWARD 1 -j SVCPROXY-FILTER",
		`-t nat -I OUTPUT 1 -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES`,
		`-t nat -I PREROUTING 1 -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES`,
	}
	if got := strings.Join(k.Calls, "\n"); got != strings.Join(wantCalls, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", got, strings.Join(wantCalls, "\n"))
	}
}

// A jump rule missing from the save is asked about only when some rule of
// its chain jumps to its target (the same rule, printed otherwise): other
// programs' rules in the chain cost no call.
func TestJumpRulesAskedAboutOnlyWhenTheSaveIsInDoubt(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	k.AddChain(TableNAT, "KUBE-SERVICES")
	k.AddChain(TableNAT, "SVCPROXY-SERVICES")
	k.AddChain(TableNAT, "PREROUTING", "-j KUBE-SERVICES", "-m comment --comment svcproxy-portals -j SVCPROXY-SERVICES")
	k.AddChain(TableNAT, "OUTPUT", "-j KUBE-SERVICES")
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	var asked []string
	for _, c := range k.Calls {
		if strings.Contains(c, " -C ") {
			asked = append(asked, c)
		}
	}
	want := `-t nat -C PREROUTING -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES`
	if len(asked) != 1 || asked[0] != want {
		t.Errorf("asked iptables:\n%s\nwant only:\n%s", strings.Join(asked, "\n"), want)
	}
	if got := strings.Count(k.Save(TableNAT), "\"svcproxy portals\" -j SVCPROXY-SERVICES\n"); got != 2 {
		t.Errorf("%d jump rules to SVCPROXY-SERVICES as svcproxy spells them, want 2 (PREROUTING and OUTPUT):\n%s", got, k.Save(TableNAT))
	}
}

func TestSecondFullApplyLeavesJumpRulesAlone(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	k.Calls = nil
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	for _, c := range k.Calls {
		if strings.Contains(c, " -I ") {
			t.Errorf("inserted a jump rule that was there: %s", c)
		}
	}
	if got := strings.Count(k.Save(TableNAT), "-j SVCPROXY-SERVICES\n"); got != 2 {
		t.Errorf("%d rules jump to SVCPROXY-SERVICES, want 2 (PREROUTING and OUTPUT)", got)
	}
}

func TestBinariesFollowFlavorAndFamily(t *testing.T) {
	cases := []struct {
		family model.Family
		flavor Flavor
		want   string
	}{
		{model.IPv4, FlavorNFT, "iptables-nft-restore"},
		{model.IPv6, FlavorNFT, "ip6tables-nft-restore"},
		{model.IPv4, FlavorLegacy, "iptables-legacy-restore"},
		{model.IPv6, FlavorLegacy, "ip6tables-legacy-restore"},
	}
	for _, c := range cases {
		a, k := fakeApplier(t, c.family, c.flavor)
		plan := &Plan{Family: c.family, Write: map[ChainKey][]string{filterChain(): nil}}
		mustApply(t, a, plan)
		if want := c.want + " --noflush --wait"; len(k.Calls) != 1 || k.Calls[0] != want {
			t.Errorf("%s %s: calls %q, want [%q]", c.flavor, c.family, k.Calls, want)
		}
	}
}

func TestPartialApplyRewritesOnlyItsChains(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	k.Calls = nil
	partial := &Plan{Family: model.IPv4, Write: map[ChainKey][]string{webKey(): {"-p tcp -m tcp -j DNAT --to-destination 10.244.0.12:8080"}}}
	mustApply(t, a, partial)

	if want := []string{"iptables-nft-restore --noflush --wait"}; strings.Join(k.Calls, "\n") != want[0] {
		t.Errorf("partial apply ran %q, want only %q", k.Calls, want)
	}
	nat := k.Save(TableNAT)
	for _, want := range []string{
		"-A SVCPROXY-SVC-WEB -p tcp -m tcp -j DNAT --to-destination 10.244.0.12:8080\n",
		"-A SVCPROXY-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j SVCPROXY-SVC-WEB\n",
	} {
		if !strings.Contains(nat, want) {
			t.Errorf("nat table lacks %q:\n%s", want, nat)
		}
	}
	if strings.Contains(nat, "10.244.0.11") {
		t.Errorf("the old endpoint survived the rewrite:\n%s", nat)
	}
}

func TestEmptyPartialPlanRunsNothing(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	done, err := a.Apply(context.Background(), &Plan{Family: model.IPv4})
	if done != (Applied{}) || err != nil || len(k.Calls) != 0 {
		t.Errorf("empty plan: %+v, %v, calls %q; want nothing done", done, err, k.Calls)
	}
}

func TestFullApplyRemovesStaleChainsOnly(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	k.AddChain(TableNAT, "SVCPROXY-SVC-GONE", "-p udp -m udp -j DNAT --to-destination 10.244.0.99:53")
	k.AddChain(TableNAT, "SVCPROXY-SVC-OLD", "-j SVCPROXY-SVC-GONE")
	k.AddChain(TableNAT, "KUBE-SERVICES", "-j RETURN")
	mustApply(t, a, testPlan("10.244.0.11:8080"))

	nat := k.Save(TableNAT)
	if strings.Contains(nat, "GONE") || strings.Contains(nat, "OLD") {
		t.Errorf("stale chains survived a full apply:\n%s", nat)
	}
	if !strings.Contains(nat, ":KUBE-SERVICES - [0:0]\n") || !strings.Contains(nat, ":SVCPROXY-SVC-WEB") {
		t.Errorf("a full apply removed a chain it does not own or still needs:\n%s", nat)
	}
}

func TestFailedRestoreNamesTheLineAndChangesNothing(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorLegacy)
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	before := k.Save(TableNAT) + k.Save(TableFilter)
	k.FailRestoreOn = "10.244.0.66"

	_, err := a.Apply(context.Background(), testPlan("10.244.0.66:8080"))
	var re *RestoreError
	if !errors.As(err, &re) {
		t.Fatalf("Apply error = %v, want a *RestoreError", err)
	}
	if re.Binary != "iptables-legacy-restore" || re.Table != TableNAT || re.Text != "-A SVCPROXY-SVC-WEB -p tcp -m tcp -j DNAT --to-destination 10.244.0.66:8080" {
		t.Errorf("error blames %s line %d %q, want the DNAT rule to 10.244.0.66", re.Binary, re.Line, re.Text)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("line %d failed", re.Line)) {
		t.Errorf("error %q does not carry iptables' message", err)
	}
	if after := k.Save(TableNAT) + k.Save(TableFilter); after != before {
		t.Errorf("failed restore changed the tables:\n%s\nwas:\n%s", after, before)
	}
}

func TestRestoreErrorFindsTheLineInEachMessageStyle(t *testing.T) {
	input := []byte("*nat\n:SVCPROXY-A - [0:0]\n-A SVCPROXY-A -m bogus -j ACCEPT\nCOMMIT\n")
	for _, stderr := range []string{
		"iptables-restore v1.8.9 (legacy): Couldn't load match `bogus'\n\nError occurred at line: 3\nTry `iptables-restore -h'",
		"iptables-nft-restore: line 3 failed: No chain/target/match by that name.",
		"iptables-nft-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid argument): rule in chain SVCPROXY-A",
	} {
		err := restoreError("iptables-restore", input, &ExecError{Name: "iptables-restore", Stderr: stderr, Err: errors.New("exit status 1")})
		var re *RestoreError
		if !errors.As(err, &re) || re.Line != 3 || re.Text != "-A SVCPROXY-A -m bogus -j ACCEPT" {
			t.Errorf("from %q: got %v, want line 3 and its text", stderr, err)
		}
	}
}

// How Intact reads the tables: a program per jump rule, a save per table
// (small tables), or netlink (iptables-nft's tables).
type intactWay string

const (
	byRule    intactWay = "by rule"
	bySave    intactWay = "by save"
	byNetlink intactWay = "over netlink"
)

func TestIntactNoticesFlushesAndMissingJumps(t *testing.T) {
	for _, way := range []intactWay{byRule, bySave, byNetlink} {
		t.Run(string(way), func(t *testing.T) { testIntactNotices(t, way) })
	}
}

func testIntactNotices(t *testing.T, way intactWay) {
	ctx := context.Background()
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	small := way == bySave
	a.small = small
	if way == byNetlink {
		a.hooks = k
	}
	intact := func() bool {
		t.Helper()
		ok, err := a.Intact(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if intact() {
		t.Error("Intact before anything was applied")
	}
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	k.Calls = nil
	if !intact() {
		t.Fatal("not Intact right after a full apply")
	}
	saves := 0
	for _, c := range k.Calls {
		switch {
		case strings.Contains(c, "-save"):
			saves++
		case small:
			t.Errorf("Intact by save ran %s", c)
		case way == byNetlink && !strings.HasPrefix(c, "netlink: "):
			t.Errorf("Intact over netlink ran %s", c)
		}
	}
	if want := map[bool]int{false: 0, true: 2}[small]; saves != want {
		t.Errorf("Intact ran %d saves, want %d: %q", saves, want, k.Calls)
	}

	k.Flush(TableNAT)
	if intact() {
		t.Error("Intact after the nat table was flushed")
	}
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	if !intact() {
		t.Error("a full apply did not repair a flushed nat table")
	}

	k.DeleteRule(TableFilter, "FORWARD", "-j SVCPROXY-FILTER")
	if intact() {
		t.Error("Intact after a jump rule was deleted")
	}
	// A partial apply does not hide the damage from Intact.
	mustApply(t, a, &Plan{Family: model.IPv4, Write: map[ChainKey][]string{webKey(): {"-j RETURN"}}})
	if intact() {
		t.Error("a partial apply repaired a jump rule, hiding the damage")
	}
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	if !intact() {
		t.Error("a full apply did not put back a deleted jump rule")
	}
}

func TestCleanupLeavesOnlyWhatIsNotOurs(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	k.AddChain(TableNAT, "KUBE-SERVICES", "-j RETURN")
	if err := a.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, table := range []Table{TableNAT, TableFilter} {
		if got := k.Save(table); strings.Contains(got, "SVCPROXY") {
			t.Errorf("%s table after Cleanup:\n%s", table, got)
		}
	}
	if !strings.Contains(k.Save(TableNAT), "-A KUBE-SERVICES -j RETURN") {
		t.Error("Cleanup removed a chain it does not own")
	}
	if err := a.Cleanup(context.Background()); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

func TestApplyRefusesAPlanOfTheOtherFamily(t *testing.T) {
	a, k := fakeApplier(t, model.IPv6, FlavorNFT)
	if _, err := a.Apply(context.Background(), testPlan("10.244.0.11:8080")); err == nil || len(k.Calls) != 0 {
		t.Errorf("applying an IPv4 plan with an IPv6 applier: %v, calls %q", err, k.Calls)
	}
}

// runFunc adapts a function to Runner.
type runFunc func(name string) ([]byte, error)

func (f runFunc) Run(_ context.Context, name string, _ []string, _ []byte) ([]byte, error) {
	return f(name)
}

func TestDetectFlavorFollowsTheRulesTheHostHas(t *testing.T) {
	const rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n"
	const oneRule = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"
	missing := errors.New("executable file not found")
	cases := []struct {
		name string
		save map[string]string // binary -> output; absent: fails
		want Flavor
	}{
		{"fresh host", map[string]string{"iptables-nft-save": "", "ip6tables-nft-save": "", "iptables-legacy-save": "", "ip6tables-legacy-save": ""}, FlavorNFT},
		{"legacy rules", map[string]string{"iptables-nft-save": "", "ip6tables-nft-save": "", "iptables-legacy-save": rules, "ip6tables-legacy-save": ""}, FlavorLegacy},
		{"nft rules", map[string]string{"iptables-nft-save": oneRule, "ip6tables-nft-save": oneRule, "iptables-legacy-save": rules, "ip6tables-legacy-save": ""}, FlavorNFT},
		{"tie", map[string]string{"iptables-nft-save": oneRule, "ip6tables-nft-save": "", "iptables-legacy-save": "", "ip6tables-legacy-save": oneRule}, FlavorNFT},
		{"only legacy installed", map[string]string{"iptables-legacy-save": oneRule, "ip6tables-legacy-save": ""}, FlavorLegacy},
		{"no nf_tables, no rules yet", map[string]string{"iptables-legacy-save": "", "ip6tables-legacy-save": ""}, FlavorLegacy},
		{"legacy broken, no rules yet", map[string]string{"iptables-nft-save": "", "ip6tables-nft-save": ""}, FlavorNFT},
	}
	for _, c := range cases {
		got, err := DetectFlavor(context.Background(), runFunc(func(name string) ([]byte, error) {
			out, ok := c.save[name]
			if !ok {
				return nil, missing
			}
			return []byte(out), nil
		}))
		if err != nil || got != c.want {
			t.Errorf("%s: DetectFlavor = %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	if _, err := DetectFlavor(context.Background(), runFunc(func(string) ([]byte, error) { return nil, missing })); err == nil {
		t.Error("DetectFlavor without any iptables: no error")
	}
}

func TestIntactChecksTopChainsNoJumpLeadsTo(t *testing.T) {
	k := NewFakeKernel()
	nodePorts := ChainKey{TableNAT, "SVCPROXY-NODEPORTS"}
	a, err := NewApplier(ApplierConfig{Family: model.IPv4, Flavor: FlavorNFT, Jumps: testJumps(),
		TopChains: append(testTop(), nodePorts), Run: k, Rules: k})
	if err != nil {
		t.Fatal(err)
	}
	plan := testPlan("10.244.0.11:8080")
	plan.Write[nodePorts] = nil
	mustApply(t, a, plan)
	k.Calls = nil
	if ok, err := a.Intact(context.Background()); !ok || err != nil {
		t.Fatalf("Intact after a full apply: %v, %v", ok, err)
	}
	want := `-t nat -C PREROUTING -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES` + "\n" +
		`-t nat -C OUTPUT -m comment --comment "svcproxy portals" -j SVCPROXY-SERVICES` + "\n" +
		"-t filter -C FORWARD -j SVCPROXY-FILTER\n" +
		"-t nat -S SVCPROXY-NODEPORTS 1"
	if got := strings.Join(k.Calls, "\n"); got != want {
		t.Errorf("Intact ran:\n%s\nwant:\n%s", got, want)
	}

	delete(k.tables[TableNAT], nodePorts.Name)
	if ok, _ := a.Intact(context.Background()); ok {
		t.Error("Intact with SVCPROXY-NODEPORTS gone")
	}

	// Over netlink: each built-in chain read once, whatever the number of
	// jump rules in it, and no program run.
	mustApply(t, a, plan)
	a.hooks = k
	k.Calls = nil
	if ok, err := a.Intact(context.Background()); !ok || err != nil {
		t.Fatalf("Intact over netlink after a full apply: %v, %v", ok, err)
	}
	want = "netlink: rules of nat PREROUTING\nnetlink: rules of nat OUTPUT\nnetlink: rules of filter FORWARD\nnetlink: chain nat SVCPROXY-NODEPORTS"
	if got := strings.Join(k.Calls, "\n"); got != want {
		t.Errorf("Intact over netlink asked:\n%s\nwant:\n%s", got, want)
	}
	delete(k.tables[TableNAT], nodePorts.Name)
	if ok, _ := a.Intact(context.Background()); ok {
		t.Error("Intact over netlink with SVCPROXY-NODEPORTS gone")
	}
}

// A stopping daemon must not kill a restore half-way through its tables.
func TestRestoreIsNotCancelledWithTheSync(t *testing.T) {
	var sawCancelled bool
	run := runFunc(func(string) ([]byte, error) { return nil, nil })
	a, err := NewApplier(ApplierConfig{Family: model.IPv4, Flavor: FlavorNFT, Jumps: testJumps(), TopChains: testTop(),
		Run: ctxRunner{run: run, saw: &sawCancelled}, Rules: NewFakeKernel()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	plan := testPlan("10.244.0.11:8080")
	plan.Full = false
	if _, err := a.Apply(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if sawCancelled {
		t.Fatal("iptables-restore ran with the caller's cancelled context")
	}
}

// ctxRunner records whether it was handed a cancelled context.
type ctxRunner struct {
	run Runner
	saw *bool
}

func (r ctxRunner) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	if ctx.Err() != nil {
		*r.saw = true
	}
	return r.run.Run(ctx, name, args, stdin)
}

// With iptables-legacy a check saves the tables only when their stamps
// changed since it last found them intact: an idle node's checks run no
// program.
func TestIntactBySaveSkipsTheSaveWhileTheStampsStand(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorLegacy)
	a.stamps = k
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	saves := func() (bool, int) {
		t.Helper()
		k.Calls = nil
		ok, err := a.Intact(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range k.Calls {
			if strings.Contains(c, "-save") {
				n++
			}
		}
		return ok, n
	}
	if ok, n := saves(); !ok || n != 2 {
		t.Fatalf("the first check: intact %v after %d saves, want true after 2", ok, n)
	}
	if ok, n := saves(); !ok || n != 0 {
		t.Errorf("a check with nothing changed: intact %v after %d saves, want true after none", ok, n)
	}
	// Someone else's change: saved once, then standing again.
	k.AddChain(TableNAT, "KUBE-SERVICES", "-j RETURN")
	if ok, n := saves(); !ok || n != 2 {
		t.Errorf("after another program's change: intact %v after %d saves, want true after 2", ok, n)
	}
	if ok, n := saves(); !ok || n != 0 {
		t.Errorf("then nothing changed: intact %v after %d saves, want true after none", ok, n)
	}
	k.DeleteRule(TableFilter, "FORWARD", "-j SVCPROXY-FILTER")
	if ok, _ := saves(); ok {
		t.Error("Intact after a jump rule was deleted")
	}
	if ok, n := saves(); ok || n != 2 {
		t.Errorf("still broken: intact %v after %d saves; a failed check must not be remembered", ok, n)
	}
}

// A netlink read that fails costs the check its cheapness, not its answer.
func TestIntactAsksIPTablesWhenNetlinkFails(t *testing.T) {
	a, k := fakeApplier(t, model.IPv4, FlavorNFT)
	mustApply(t, a, testPlan("10.244.0.11:8080"))
	a.hooks = failingHooks{}
	k.Calls = nil
	if ok, err := a.Intact(context.Background()); !ok || err != nil {
		t.Fatalf("Intact with netlink failing: %v, %v; want true from iptables", ok, err)
	}
	if len(k.Calls) == 0 || !strings.HasPrefix(k.Calls[0], "-t nat -C PREROUTING") {
		t.Errorf("Intact with netlink failing ran %q, want iptables -C", k.Calls)
	}
	k.DeleteRule(TableFilter, "FORWARD", "-j SVCPROXY-FILTER")
	if ok, _ := a.Intact(context.Background()); ok {
		t.Error("Intact with netlink failing missed a deleted jump rule")
	}
}

type failingHooks struct{}

func (failingHooks) JumpTargets(Table, string) ([]string, error) {
	return nil, errors.New("netlink: operation not permitted")
}

func (failingHooks) HasChain(Table, string) (bool, error) {
	return false, errors.New("netlink: operation not permitted")
}
