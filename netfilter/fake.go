package netfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"slices"
	"strings"
)

// FakeKernel is an in-memory iptables of one family for tests without
// root. It serves both kernel seams of the Applier: as a Runner it answers
// "*-save -t TABLE" and "*-restore --noflush" (committing each table
// atomically, failing the way iptables does), and it is a RuleEditor. It
// records every call and dumps its state as iptables-save would.
type FakeKernel struct {
	// Calls lists every call, in order, as a command line ("iptables-nft-save -t nat",
	// "-t nat -I PREROUTING 1 -j SVCPROXY-SERVICES").
	Calls []string
	// FailRestoreOn makes a restore fail at the first input line containing it.
	FailRestoreOn string

	tables map[Table]fakeTable
	// packets are the rules' packet counters (see CountPackets).
	packets map[fakeRule]uint64
}

// fakeRule names a rule by its table, chain and text.
type fakeRule struct {
	table       Table
	chain, rule string
}

// fakeTable maps each chain to its rules, each the text that follows
// "-A CHAIN " in iptables-save output.
type fakeTable map[string][]string

func builtinChains(t Table) []string {
	switch t {
	case TableNAT:
		return []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}
	case tableMangle:
		return []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
	}
	return []string{"INPUT", "FORWARD", "OUTPUT"}
}

// tableMangle is the table svcproxy never writes but the fake holds, for
// the removal of others' chains from it.
const tableMangle Table = "mangle"

func isBuiltin(t Table, chain string) bool { return slices.Contains(builtinChains(t), chain) }

// NewFakeKernel returns empty filter, nat and mangle tables.
func NewFakeKernel() *FakeKernel {
	k := &FakeKernel{tables: map[Table]fakeTable{}, packets: map[fakeRule]uint64{}}
	for _, t := range []Table{TableFilter, TableNAT, tableMangle} {
		k.tables[t] = fakeTable{}
		for _, c := range builtinChains(t) {
			k.tables[t][c] = nil
		}
	}
	return k
}

// Save returns a table as iptables-save shows it: built-in chains first,
// then the others sorted, then the rules.
func (k *FakeKernel) Save(table Table) string {
	t := k.tables[table]
	chains := builtinChains(table)
	var others []string
	for c := range t {
		if !isBuiltin(table, c) {
			others = append(others, c)
		}
	}
	slices.Sort(others)
	chains = append(chains, others...)
	var b strings.Builder
	b.WriteString("*" + string(table) + "\n")
	for _, c := range chains {
		policy := "-"
		if isBuiltin(table, c) {
			policy = "ACCEPT"
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
	}
	for _, c := range chains {
		for _, r := range t[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, r)
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Flush empties every chain of a table, as `iptables -t TABLE -F` does.
func (k *FakeKernel) Flush(table Table) {
	for c := range k.tables[table] {
		k.tables[table][c] = nil
	}
}

// AddChain creates a chain with rules, as another program might.
func (k *FakeKernel) AddChain(table Table, chain string, rules ...string) {
	k.tables[table][chain] = rules
}

// DeleteRule deletes a rule given as save text, as `iptables -D` does.
func (k *FakeKernel) DeleteRule(table Table, chain, rule string) {
	t := k.tables[table]
	if i := slices.Index(t[chain], rule); i >= 0 {
		t[chain] = slices.Delete(t[chain], i, i+1)
	}
}

// Run implements Runner.
func (k *FakeKernel) Run(_ context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	k.Calls = append(k.Calls, strings.TrimSpace(name+" "+strings.Join(args, " ")))
	fail := func(format string, a ...any) error {
		return &ExecError{Name: name, Args: args, Stderr: fmt.Sprintf(format, a...), Err: errors.New("exit status 1")}
	}
	switch {
	case strings.HasSuffix(name, "-save") && len(args) == 2 && args[0] == "-t":
		if _, ok := k.tables[Table(args[1])]; !ok {
			return nil, fail("%s: Table does not exist", name)
		}
		return []byte(k.Save(Table(args[1]))), nil
	case strings.HasSuffix(name, "-restore") && slices.Contains(args, "--noflush"):
		return nil, k.restore(name, string(stdin), fail)
	case len(args) == 7 && args[2] == "-t" && args[4] == "-S" && args[6] == "-v":
		return k.listCounted(Table(args[3]), args[5], fail)
	}
	return nil, fail("fake kernel: cannot run %s %v", name, args)
}

// RunFed implements FeedingRunner: the input is taken whole, then run.
func (k *FakeKernel) RunFed(ctx context.Context, name string, args []string, feed func(io.Writer) error) ([]byte, error) {
	var in bytes.Buffer
	if err := feed(&in); err != nil {
		return nil, err
	}
	return k.Run(ctx, name, args, in.Bytes())
}

// RunRead implements ReadingRunner: the output is made whole, then read.
func (k *FakeKernel) RunRead(ctx context.Context, name string, args []string, read func(io.Reader) error) error {
	out, err := k.Run(ctx, name, args, nil)
	if err != nil {
		return err
	}
	return read(bytes.NewReader(out))
}

// CountPackets adds n to the packet counter of every rule of a chain
// whose text contains match, as traffic through it would.
func (k *FakeKernel) CountPackets(table Table, chain, match string, n uint64) {
	for _, rule := range k.tables[table][chain] {
		if strings.Contains(rule, match) {
			k.packets[fakeRule{table, chain, rule}] += n
		}
	}
}

// listCounted answers "iptables -w 5 -t TABLE -S CHAIN -v": the chain's
// rules with their counters ("-c packets bytes").
func (k *FakeKernel) listCounted(table Table, chain string, fail func(string, ...any) error) ([]byte, error) {
	rules, ok := k.tables[table][chain]
	if !ok {
		return nil, fail("iptables: No chain/target/match by that name.")
	}
	var b strings.Builder
	if !isBuiltin(table, chain) {
		fmt.Fprintf(&b, "-N %s\n", chain)
	}
	for _, rule := range rules {
		fmt.Fprintf(&b, "-A %s %s -c %d 0\n", chain, rule, k.packets[fakeRule{table, chain, rule}])
	}
	return []byte(b.String()), nil
}

// restore applies restore input table by table; a table whose lines fail
// keeps its rules, as COMMIT is atomic.
func (k *FakeKernel) restore(name, input string, fail func(string, ...any) error) error {
	var table Table
	var work fakeTable
	var declared []string // chains the transaction declares: their counters restart
	for i, line := range strings.Split(input, "\n") {
		n := i + 1
		if k.FailRestoreOn != "" && strings.Contains(line, k.FailRestoreOn) {
			return fail("%s: line %d failed", name, n)
		}
		var err error
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = Table(line[1:])
			if _, ok := k.tables[table]; !ok {
				return fail("%s: line %d failed: table %s does not exist", name, n, table)
			}
			work, declared = maps.Clone(k.tables[table]), nil
		case work == nil:
			return fail("%s: line %d failed: no table", name, n)
		case line == "COMMIT":
			k.tables[table], work = work, nil
			k.restartCounters(table, declared)
		case strings.HasPrefix(line, ":"):
			if chain, _, _ := strings.Cut(line[1:], " "); !isBuiltin(table, chain) {
				declared = append(declared, chain)
			}
			err = work.apply(table, line)
		default:
			err = work.apply(table, line)
		}
		if err != nil {
			return fail("%s: line %d failed: %v", name, n, err)
		}
	}
	if work != nil {
		return fail("%s: COMMIT expected at end of input", name)
	}
	return nil
}

// restartCounters zeroes the counters of the chains' rules: a restore
// that declares a chain flushes it, and the rules it writes count afresh.
func (k *FakeKernel) restartCounters(table Table, chains []string) {
	for r := range k.packets {
		if r.table == table && slices.Contains(chains, r.chain) {
			delete(k.packets, r)
		}
	}
}

// apply runs one restore line (":CHAIN", "-A", "-D", "-X") on a table copy.
func (t fakeTable) apply(table Table, line string) error {
	op, rest, _ := strings.Cut(line, " ")
	chain, rule, _ := strings.Cut(rest, " ")
	switch {
	case strings.HasPrefix(op, ":"):
		// Declaring a chain creates or flushes it (built-in ones keep their rules).
		if c := op[1:]; !isBuiltin(table, c) {
			t[c] = nil
		}
		return nil
	case op == "-A":
		if _, ok := t[chain]; !ok {
			return fmt.Errorf("chain %s does not exist", chain)
		}
		if target := JumpTarget(rule); target != "" && IsOwned(target) {
			if _, ok := t[target]; !ok {
				return fmt.Errorf("no chain/target/match by the name %s", target)
			}
		}
		t[chain] = append(slices.Clip(t[chain]), rule)
		return nil
	case op == "-D":
		i := slices.Index(t[chain], rule)
		if i < 0 {
			return fmt.Errorf("bad rule (does a matching rule exist in chain %s?)", chain)
		}
		t[chain] = slices.Delete(slices.Clone(t[chain]), i, i+1)
		return nil
	case op == "-X":
		if _, ok := t[chain]; !ok || isBuiltin(table, chain) {
			return fmt.Errorf("cannot delete chain %s", chain)
		}
		if len(t[chain]) > 0 || t.referenced(chain) {
			return fmt.Errorf("chain %s is not empty or still referenced", chain)
		}
		delete(t, chain)
		return nil
	}
	return fmt.Errorf("fake kernel: unknown restore line %q", line)
}

func (t fakeTable) referenced(chain string) bool {
	for _, rules := range t {
		for _, r := range rules {
			if JumpTarget(r) == chain {
				return true
			}
		}
	}
	return false
}

func (k *FakeKernel) record(op, table, chain string, rule []string) {
	k.Calls = append(k.Calls, strings.TrimSpace(fmt.Sprintf("-t %s %s %s %s", table, op, chain, saveText(rule))))
}

// Exists implements RuleEditor.
func (k *FakeKernel) Exists(table, chain string, rule ...string) (bool, error) {
	k.record("-C", table, chain, rule)
	return slices.Contains(k.tables[Table(table)][chain], saveText(rule)), nil
}

// Insert implements RuleEditor.
func (k *FakeKernel) Insert(table, chain string, pos int, rule ...string) error {
	k.record("-I", table, chain+" "+fmt.Sprint(pos), rule)
	t := k.tables[Table(table)]
	if _, ok := t[chain]; !ok {
		return fmt.Errorf("fake kernel: chain %s does not exist", chain)
	}
	if target := JumpTarget(saveText(rule)); IsOwned(target) {
		if _, ok := t[target]; !ok {
			return fmt.Errorf("fake kernel: no chain/target/match by the name %s", target)
		}
	}
	pos = min(max(pos, 1), len(t[chain])+1)
	t[chain] = slices.Insert(slices.Clip(t[chain]), pos-1, saveText(rule))
	return nil
}

// DeleteIfExists implements RuleEditor.
func (k *FakeKernel) DeleteIfExists(table, chain string, rule ...string) error {
	k.record("-D", table, chain, rule)
	k.DeleteRule(Table(table), chain, saveText(rule))
	return nil
}

// ChainExists implements RuleEditor.
func (k *FakeKernel) ChainExists(table, chain string) (bool, error) {
	k.record("-S", table, chain+" 1", nil)
	_, ok := k.tables[Table(table)][chain]
	return ok, nil
}

// JumpTargets implements HookReader.
func (k *FakeKernel) JumpTargets(table Table, chain string) ([]string, error) {
	k.Calls = append(k.Calls, fmt.Sprintf("netlink: rules of %s %s", table, chain))
	var targets []string
	for _, rule := range k.tables[table][chain] {
		if target := JumpTarget(rule); target != "" {
			targets = append(targets, target)
		}
	}
	return targets, nil
}

// HasChain implements HookReader.
func (k *FakeKernel) HasChain(table Table, chain string) (bool, error) {
	k.Calls = append(k.Calls, fmt.Sprintf("netlink: chain %s %s", table, chain))
	_, ok := k.tables[table][chain]
	return ok, nil
}

// Stamp implements StampReader: any change to the table's rules changes it.
func (k *FakeKernel) Stamp(t Table) (TableStamp, error) {
	k.Calls = append(k.Calls, "stamp of "+string(t))
	h := fnv.New32a()
	h.Write([]byte(k.Save(t)))
	return TableStamp{Size: h.Sum32()}, nil
}
