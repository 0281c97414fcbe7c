package netfilter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goiptables "github.com/coreos/go-iptables/iptables"

	"github.com/svcproxy/svcproxy/model"
)

// RuleEditor edits single rules of built-in chains: the jump rules. It is
// the part of go-iptables the applier uses, with one change: asking about a
// rule whose target chain does not exist answers false, not an error.
type RuleEditor interface {
	Exists(table, chain string, rule ...string) (bool, error)
	Insert(table, chain string, pos int, rule ...string) error
	DeleteIfExists(table, chain string, rule ...string) error
	ChainExists(table, chain string) (bool, error)
}

// Applier is the only code that changes iptables: it restores plans,
// keeps the jump rules in place, checks they are and removes everything.
// It runs the binaries in the network namespace of the calling thread.
type Applier struct {
	family model.Family
	flavor Flavor
	run    Runner
	rules  RuleEditor
	hooks  HookReader // nil: the integrity check asks iptables
	stamps StampReader
	// intactAt is the tables' stamps when a check by save last found them
	// intact: a memo (forgetting it costs a save, not a missed repair).
	intactAt *stampMemo
	jumps    []JumpRule
	top      []ChainKey
	// small: Intact reads whole tables (see ApplierConfig.SmallTables).
	small bool
}

// ApplierConfig says what an Applier programs and through what.
type ApplierConfig struct {
	Family model.Family
	Flavor Flavor
	// Jumps hook svcproxy's chains into the built-in ones (JumpRules);
	// TopChains must always exist (TopChains). Intact checks both.
	Jumps     []JumpRule
	TopChains []ChainKey
	// SmallTables says svcproxy's chains hold few rules, whatever the
	// number of services (the IPVS mode, whose sets carry the services):
	// Intact then reads each table with one iptables-save instead of
	// running iptables once per jump rule and top chain, since starting a
	// program is then what a check costs (10 of them took 1-1.5 s in the
	// emulated VM, which spaced checks out to 30 s). Over netlink (Hooks)
	// neither runs.
	SmallTables bool
	// Run and Rules are the kernel seams; nil means the flavor's real
	// binaries (Rules through go-iptables).
	Run   Runner
	Rules RuleEditor
	// Hooks, if set, answers the integrity check, no program run; nil
	// means netlink (NFTHooks) for iptables-nft with the real binaries,
	// and Rules otherwise (iptables-legacy's tables are no nftables).
	Hooks HookReader
}

// NewApplier returns an applier for one family and flavor.
func NewApplier(c ApplierConfig) (*Applier, error) {
	if _, err := ParseFlavor(string(c.Flavor)); err != nil {
		return nil, err
	}
	a := &Applier{family: c.Family, flavor: c.Flavor, run: c.Run, rules: c.Rules, hooks: c.Hooks, jumps: c.Jumps, top: c.TopChains,
		small: c.SmallTables, intactAt: &stampMemo{}}
	switch {
	case a.hooks == nil && a.rules == nil && c.Flavor == FlavorNFT:
		a.hooks = NFTHooks{Family: c.Family}
	case c.Flavor == FlavorLegacy:
		// Every iptables-legacy call reads its whole table from the
		// kernel, so one save of each table is the cheapest check at any
		// size: at 10,000 services five calls on the nat table took
		// 0.74 s here, one save of it 0.3 s. And none is needed while the
		// tables' stamps say nothing changed since the last check.
		a.small = true
		if c.Rules == nil {
			a.stamps = LegacyStamps{Family: c.Family}
		}
	}
	if a.run == nil {
		a.run = ExecRunner{}
	}
	if a.rules == nil {
		proto := goiptables.ProtocolIPv4
		if c.Family == model.IPv6 {
			proto = goiptables.ProtocolIPv6
		}
		ipt, err := goiptables.New(goiptables.Path(c.Flavor.Binary(c.Family, "")), goiptables.IPFamily(proto))
		if err != nil {
			return nil, fmt.Errorf("iptables %s %s: %w", c.Flavor, c.Family, err)
		}
		a.rules = goIPTables{ipt}
	}
	return a, nil
}

// Family is the family the applier programs.
func (a *Applier) Family() model.Family { return a.family }

// Applied is what an Apply did: the size of the iptables-restore input
// and how many programs it ran (each save, restore and rule edit is one).
type Applied struct {
	Bytes, Ops int
}

// Apply makes the kernel match the plan. The restore is atomic per table:
// if it fails, the tables keep their previous rules.
//
// A full plan also removes svcproxy chains it does not know (left by
// services deleted while svcproxy was down, or by the other mode) and then
// puts back missing jump rules (after the restore, which creates the
// chains they jump to). A partial plan only rewrites its chains: repairing
// jump rules there would hide from Intact that someone flushed the tables,
// and the chains the partial plan does not name would stay empty.
func (a *Applier) Apply(ctx context.Context, plan *Plan) (Applied, error) {
	var done Applied
	if plan.Family != a.family {
		return done, fmt.Errorf("applying an %s plan with the %s applier", plan.Family, a.family)
	}
	if !plan.Full {
		if plan.Empty() {
			return done, nil
		}
		var err error
		done.Bytes, err = a.restorePlan(ctx, plan, nil)
		done.Ops = 1
		return done, err
	}
	saved, err := a.saveTables(ctx)
	done.Ops += 2
	if err != nil {
		return done, err
	}
	done.Bytes, err = a.restorePlan(ctx, plan, saved.owned())
	done.Ops++
	if err != nil {
		return done, err
	}
	ops, err := a.ensureJumps(saved)
	done.Ops += ops
	return done, err
}

// restorePlan feeds a plan's input (Render) to iptables-restore and
// returns its length: fed as it is rendered where the runner can, so that
// a full sync never holds its megabytes whole, and rendered again to name
// the line iptables blames if it fails.
func (a *Applier) restorePlan(ctx context.Context, plan *Plan, stale []ChainKey) (int, error) {
	fr, ok := a.run.(FeedingRunner)
	if !ok {
		input := plan.Render(stale)
		return len(input), a.restore(ctx, input)
	}
	name := a.flavor.Binary(a.family, "-restore")
	ctx, cancel := restoreContext(ctx)
	defer cancel()
	var size int
	_, err := fr.RunFed(ctx, name, restoreArgs, func(w io.Writer) (err error) {
		size, err = plan.WriteTo(w, stale)
		return err
	})
	if err != nil {
		return size, restoreError(name, plan.Render(stale), err)
	}
	return size, nil
}

// restore feeds input to iptables-restore without flushing what it does
// not name.
func (a *Applier) restore(ctx context.Context, input []byte) error {
	name := a.flavor.Binary(a.family, "-restore")
	ctx, cancel := restoreContext(ctx)
	defer cancel()
	_, err := a.run.Run(ctx, name, restoreArgs, input)
	if err != nil {
		return restoreError(name, input, err)
	}
	return nil
}

var restoreArgs = []string{"--noflush", "--wait"}

// restoreContext bounds a restore but lets it outlive ctx: a restore
// commits table by table, and killed half-way by a shutdown it could
// leave filter updated and nat not.
func restoreContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), restoreTimeout)
}

// restoreTimeout bounds one iptables-restore; a full sync of 10k services
// takes seconds, one waiting on the xtables lock may take longer.
const restoreTimeout = 2 * time.Minute

// RestoreError is a failed iptables-restore, with the input line it blamed.
type RestoreError struct {
	Binary string
	Line   int    // 1-based line of the input iptables named; 0 if it named none
	Text   string // that line
	Table  Table  // the table the line is in
	Err    error  // the failure, with iptables' own message
}

func (e *RestoreError) Error() string {
	switch {
	case e.Line == 0:
		return fmt.Sprintf("%s: %v", e.Binary, e.Err)
	case e.Text == "COMMIT":
		// Legacy iptables checks rules in the kernel only at COMMIT and
		// then cannot say which one it refused.
		return fmt.Sprintf("%s: the kernel refused a rule of table %s (line %d, COMMIT): %v", e.Binary, e.Table, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: line %d %q (table %s): %v", e.Binary, e.Line, e.Text, e.Table, e.Err)
}

func (e *RestoreError) Unwrap() error { return e.Err }

// failedLine finds the line iptables-restore blames in its message:
// "line 3 failed" (both flavors), "Error occurred at line: 3" (parse
// errors), "line 3: RULE_APPEND failed" (nft).
var failedLine = regexp.MustCompile(`line:? (\d+)`)

func restoreError(binary string, input []byte, err error) error {
	e := &RestoreError{Binary: binary, Err: err}
	var ee *ExecError
	if errors.As(err, &ee) {
		if m := failedLine.FindStringSubmatch(ee.Stderr); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			lines := strings.Split(string(input), "\n")
			if e.Line >= 1 && e.Line <= len(lines) {
				e.Text = lines[e.Line-1]
			}
			for _, l := range slices.Backward(lines[:min(e.Line, len(lines))]) {
				if strings.HasPrefix(l, "*") {
					e.Table = Table(l[1:])
					break
				}
			}
		}
	}
	return e
}

// hooks are both tables as the kernel holds them: their chains, and the
// rules of the chains that are not svcproxy's, where the jump rules go.
// Only a full sync, the IPVS mode's check and a cleanup pay for the whole
// save.
type hooks map[Table]SavedTable

// saveTables reads both tables with one iptables-save each.
func (a *Applier) saveTables(ctx context.Context) (hooks, error) {
	saved := hooks{}
	for _, table := range []Table{TableFilter, TableNAT} {
		t, err := ReadForeignSave(ctx, a.run, a.flavor.Binary(a.family, "-save"), table)
		if err != nil {
			return nil, fmt.Errorf("reading the %s table: %w", table, err)
		}
		saved[table] = t
	}
	return saved, nil
}

// owned are svcproxy's chains (whoever made them).
func (h hooks) owned() []ChainKey {
	var owned []ChainKey
	for _, table := range []Table{TableFilter, TableNAT} {
		for _, chain := range h[table].Chains {
			if IsOwned(chain) {
				owned = append(owned, ChainKey{Table: table, Name: chain})
			}
		}
	}
	return owned
}

// hasJump reports whether a jump rule is in place: found in the save by
// its text, or else (should some iptables print it otherwise) by asking
// iptables, so that a difference in spelling costs a call, never a
// duplicate rule or a resync. Where no rule of the chain jumps to the
// rule's target, the save already says no in any spelling (iptables-save
// always names a rule's target) and nothing is asked: at a cold start
// that is every jump rule, and a program start each.
func (a *Applier) hasJump(h hooks, j JumpRule) (ok bool, asked bool, err error) {
	saved := h[j.Table].Rules[j.Chain]
	if slices.Contains(saved, j.Text()) {
		return true, false, nil
	}
	target := JumpTarget(j.Text())
	if !slices.ContainsFunc(saved, func(rule string) bool { return JumpTarget(rule) == target }) {
		return false, false, nil
	}
	ok, err = a.rules.Exists(string(j.Table), j.Chain, j.Rule...)
	return ok, true, err
}

// ensureJumps inserts the missing jump rules at the top of their chains,
// after the restore that made their targets; saved is from before it (a
// restore leaves the built-in chains alone). Going through the list
// backwards leaves a fresh chain with the rules in list order.
func (a *Applier) ensureJumps(saved hooks) (ops int, err error) {
	for _, j := range slices.Backward(a.jumps) {
		ok, asked, err := a.hasJump(saved, j)
		if asked {
			ops++
		}
		if err != nil {
			return ops, fmt.Errorf("checking jump rule %s: %w", describe(j), err)
		}
		if ok {
			continue
		}
		ops++
		if err := a.rules.Insert(string(j.Table), j.Chain, 1, j.Rule...); err != nil {
			return ops, fmt.Errorf("inserting jump rule %s: %w", describe(j), err)
		}
	}
	return ops, nil
}

// Intact reports whether svcproxy's programming is still hooked in: every
// jump rule and top chain exists.
func (a *Applier) Intact(ctx context.Context) (bool, error) {
	if a.hooks != nil {
		// Netlink is the cheap way, not the only one: if it fails, this
		// check asks iptables, as it would without it.
		if ok, err := a.intactByHooks(); err == nil {
			return ok, nil
		}
	}
	if a.small {
		return a.intactBySave(ctx)
	}
	return a.intactByRule(ctx)
}

// intactByRule never saves a table: each jump rule is checked with one
// "iptables -C" (its exact text), and only the top chains no jump rule
// targets with one "iptables -S CHAIN 1" (a jump rule in place proves its
// target exists). With nft each call reads one chain (2 ms at 10,000
// services); with legacy each reads its whole table (150 ms there), which
// is why legacy checks by save and nft over netlink (intactByHooks) when
// the real binaries run.
func (a *Applier) intactByRule(ctx context.Context) (bool, error) {
	targets := map[ChainKey]bool{}
	for _, j := range a.jumps {
		ok, err := a.rules.Exists(string(j.Table), j.Chain, j.Rule...)
		if err != nil || !ok {
			return false, err
		}
		if target := JumpTarget(strings.Join(j.Rule, " ")); target != "" {
			targets[ChainKey{Table: j.Table, Name: target}] = true
		}
	}
	return a.topChainsExist(targets, a.rules.ChainExists)
}

// intactByHooks is intactByRule over netlink: each built-in chain is read
// once, and a rule jumping to the jump rule's target is what it looks
// for, not the rule's exact text: that is what a flush, a deleted jump or
// a firewall's reload undo, and what the iptables mode's check is for.
func (a *Applier) intactByHooks() (bool, error) {
	targets := map[ChainKey]bool{}
	listed := map[ChainKey][]string{}
	for _, j := range a.jumps {
		from := ChainKey{Table: j.Table, Name: j.Chain}
		jumps, ok := listed[from]
		if !ok {
			var err error
			if jumps, err = a.hooks.JumpTargets(j.Table, j.Chain); err != nil {
				return false, err
			}
			listed[from] = jumps
		}
		target := JumpTarget(strings.Join(j.Rule, " "))
		if !slices.Contains(jumps, target) {
			return false, nil
		}
		targets[ChainKey{Table: j.Table, Name: target}] = true
	}
	return a.topChainsExist(targets, func(table, chain string) (bool, error) { return a.hooks.HasChain(Table(table), chain) })
}

// topChainsExist looks up the top chains no jump rule in place targets.
func (a *Applier) topChainsExist(targets map[ChainKey]bool, exists func(table, chain string) (bool, error)) (bool, error) {
	for _, k := range a.top {
		if targets[k] {
			continue
		}
		ok, err := exists(string(k.Table), k.Name)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// intactBySave looks for the jump rules and top chains in one
// iptables-save of each table, unless the tables' stamps (Stamps) are
// those of the last time it found them intact. The stamps are read first,
// so that a change made during the save is seen by the next check.
func (a *Applier) intactBySave(ctx context.Context) (bool, error) {
	stamps := a.readStamps()
	if stamps != nil && a.intactAt.is(stamps) {
		return true, nil
	}
	ok, err := a.savedTablesIntact(ctx)
	if ok && err == nil {
		a.intactAt.set(stamps)
	}
	return ok, err
}

type stampMemo struct {
	mu     sync.Mutex
	stamps map[Table]TableStamp
}

func (m *stampMemo) is(stamps map[Table]TableStamp) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Equal(stamps, m.stamps)
}

func (m *stampMemo) set(stamps map[Table]TableStamp) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stamps = stamps
}

// readStamps reads both tables' stamps; nil if there is no StampReader or
// a read fails (the check then saves the tables).
func (a *Applier) readStamps() map[Table]TableStamp {
	if a.stamps == nil {
		return nil
	}
	stamps := map[Table]TableStamp{}
	for _, t := range []Table{TableFilter, TableNAT} {
		s, err := a.stamps.Stamp(t)
		if err != nil {
			return nil
		}
		stamps[t] = s
	}
	return stamps
}

func (a *Applier) savedTablesIntact(ctx context.Context) (bool, error) {
	saved, err := a.saveTables(ctx)
	if err != nil {
		return false, err
	}
	for _, j := range a.jumps {
		if ok, _, err := a.hasJump(saved, j); !ok || err != nil {
			return false, err
		}
	}
	for _, k := range a.top {
		if !slices.Contains(saved[k.Table].Chains, k.Name) {
			return false, nil
		}
	}
	return true, nil
}

// save runs iptables-save for one table.
func (a *Applier) save(ctx context.Context, table Table) ([]byte, error) {
	return a.run.Run(ctx, a.flavor.Binary(a.family, "-save"), []string{"-t", string(table)}, nil)
}

// Cleanup removes the jump rules and every svcproxy chain of both tables,
// whoever made them.
func (a *Applier) Cleanup(ctx context.Context) error {
	var errs []error
	for _, j := range a.jumps {
		if err := a.rules.DeleteIfExists(string(j.Table), j.Chain, j.Rule...); err != nil {
			errs = append(errs, fmt.Errorf("deleting jump rule %s: %w", describe(j), err))
		}
	}
	saved, err := a.saveTables(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if owned := saved.owned(); len(owned) > 0 {
		plan := &Plan{Family: a.family, Delete: owned}
		errs = append(errs, a.restore(ctx, plan.Render(nil)))
	}
	return errors.Join(errs...)
}

func describe(j JumpRule) string {
	return fmt.Sprintf("-t %s -A %s %s", j.Table, j.Chain, strings.Join(j.Rule, " "))
}

// goIPTables adapts go-iptables to RuleEditor.
type goIPTables struct{ ipt *goiptables.IPTables }

func (g goIPTables) Exists(table, chain string, rule ...string) (bool, error) {
	ok, err := g.ipt.Exists(table, chain, rule...)
	if notExist(err) {
		return false, nil // the rule's target chain is gone, so is the rule
	}
	return ok, err
}

func (g goIPTables) Insert(table, chain string, pos int, rule ...string) error {
	return g.ipt.Insert(table, chain, pos, rule...)
}

func (g goIPTables) DeleteIfExists(table, chain string, rule ...string) error {
	if err := g.ipt.DeleteIfExists(table, chain, rule...); !notExist(err) {
		return err
	}
	return nil
}

func (g goIPTables) ChainExists(table, chain string) (bool, error) {
	return g.ipt.ChainExists(table, chain)
}

func notExist(err error) bool {
	var e *goiptables.Error
	return errors.As(err, &e) && e.IsNotExist()
}
