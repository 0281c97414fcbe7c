// Package netfilter is what both of svcproxy's modes need of iptables: the
// Plan of chains to write and delete, its rendering to iptables-restore
// input, the Applier that alone runs iptables-restore and the fixed jump
// rules, the iptables flavors, a FakeKernel for tests without root, and
// the rules both modes write alike (masquerade, forwarding, hairpin, health
// check node ports, and the filter that refuses traffic with nowhere to
// go). The iptables mode adds its DNAT chains (package iptables), the IPVS
// mode its ipset matches (package ipvs); neither copies these.
package netfilter

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"io"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// Table is an iptables table svcproxy writes to.
type Table string

// The tables svcproxy uses.
const (
	TableNAT    Table = "nat"
	TableFilter Table = "filter"
)

// ChainPrefix starts the name of every chain svcproxy owns; anything else in
// the kernel is never touched.
const ChainPrefix = "SVCPROXY-"

// ChainKey names a chain in a table.
type ChainKey struct {
	Table Table
	Name  string
}

// NewPlan returns an empty plan.
func NewPlan(family model.Family, full bool) *Plan {
	return &Plan{Family: family, Full: full, Write: map[ChainKey][]string{}}
}

// SortDeletes puts the chains to delete in a stable order.
func (p *Plan) SortDeletes() { slices.SortFunc(p.Delete, compareChainKeys) }

func compareChainKeys(a, b ChainKey) int {
	if c := cmp.Compare(a.Table, b.Table); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

// Plan is what one sync must do to one family's tables: chains to write whole
// (declared, so flushed, then filled) and chains to delete. A full sync writes
// every chain svcproxy wants; a partial sync only those that changed since
// the previous view, which is what keeps a one-endpoint change cheap.
type Plan struct {
	Family model.Family
	Full   bool
	// Write maps a chain to its complete rule list; each rule is the text
	// that follows "-A <chain> " in iptables-restore input.
	Write map[ChainKey][]string
	// Delete lists chains that must not exist after the sync.
	Delete []ChainKey
}

// Empty reports whether applying the plan would change nothing.
func (p *Plan) Empty() bool { return len(p.Write) == 0 && len(p.Delete) == 0 }

// Rules counts the rules the plan writes.
func (p *Plan) Rules() int {
	n := 0
	for _, rules := range p.Write {
		n += len(rules)
	}
	return n
}

// Result is what applying the plan did, for the backend's report: the
// chains written and deleted, the rules, the restore input's size, and
// whether iptables-restore is what failed.
func (p *Plan) Result(done Applied, err error) model.SyncResult {
	var re *RestoreError
	return model.SyncResult{
		Full:          p.Full,
		KernelOps:     done.Ops,
		Written:       len(p.Write),
		Deleted:       len(p.Delete),
		Rules:         p.Rules(),
		Bytes:         done.Bytes,
		RestoreFailed: errors.As(err, &re),
	}
}

// Render returns the iptables-restore --noflush input for the plan. stale
// lists chains found in the kernel that a full sync must remove too (chains
// of services deleted while svcproxy was not running); it is ignored for
// chains the plan writes. The output is deterministic: tables, then chains,
// in sorted order.
func (p *Plan) Render(stale []ChainKey) []byte {
	deletes := p.deletes(stale)
	var buf bytes.Buffer
	// Sized exactly up front: a full sync renders megabytes, and growing
	// the buffer by doubling would copy them again and leave the garbage
	// at the moment the process's memory peaks.
	buf.Grow(p.renderedSize(deletes))
	_ = p.write(&buf, deletes, true) // a bytes.Buffer does not fail
	return buf.Bytes()
}

// WriteTo writes what Render returns to w, without holding it whole, and
// returns its length.
func (p *Plan) WriteTo(w io.Writer, stale []ChainKey) (int, error) {
	counted := &countingWriter{w: w}
	bw := bufio.NewWriterSize(counted, 64<<10)
	if err := p.write(bw, p.deletes(stale), true); err != nil {
		return counted.n, err
	}
	err := bw.Flush()
	return counted.n, err
}

type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += n
	return n, err
}

// deletes are the chains the input deletes: the plan's, and the stale
// ones it does not write.
func (p *Plan) deletes(stale []ChainKey) map[ChainKey]bool {
	deletes := map[ChainKey]bool{}
	for _, k := range p.Delete {
		deletes[k] = true
	}
	for _, k := range stale {
		if _, written := p.Write[k]; !written {
			deletes[k] = true
		}
	}
	return deletes
}

// String is the plan as iptables-save lays a table out: chains declared in
// name order, then their rules, chain by chain. It is for people and golden
// files; Render is the same input in the order iptables-restore is fast
// with, and restoring either gives the same tables.
func (p *Plan) String() string {
	var b strings.Builder
	_ = p.write(&b, p.deletes(nil), false) // a strings.Builder does not fail
	return b.String()
}

// write renders the input into w, in the restore order or as String lays
// it out; it stops at w's first error.
func (p *Plan) write(w io.StringWriter, deletes map[ChainKey]bool, restoreOrder bool) error {
	out := &inputWriter{w: w}
	put := out.put // a method value: for the few lines of this function only
	for _, table := range []Table{TableFilter, TableNAT} {
		writes := sortedKeys(p.Write, table)
		dels := sortedKeys(deletes, table)
		if len(writes) == 0 && len(dels) == 0 {
			continue
		}
		put("*", string(table), "\n")
		if restoreOrder {
			p.writeChains(out, writes)
		} else {
			p.writeSorted(out, writes)
		}
		// Deleted chains are declared (so flushed) before any is deleted,
		// so that rules jumping from one to another are gone by then.
		for _, k := range dels {
			put(":", k.Name, " - [0:0]\n")
		}
		for _, k := range dels {
			put("-X ", k.Name, "\n")
		}
		put("COMMIT\n")
	}
	return out.err
}

// inputWriter writes the restore input's pieces and keeps the first error.
// Its put is a method, not a closure, so that the pieces of each of a
// full sync's 100,000 lines stay on the caller's stack: through a func
// value they escaped, 10 MB of garbage per render at 10,000 services.
type inputWriter struct {
	w   io.StringWriter
	err error
}

func (o *inputWriter) put(parts ...string) {
	for _, s := range parts {
		if o.err == nil {
			_, o.err = o.w.WriteString(s)
		}
	}
}

// writeSorted writes one table's chains as iptables-save does.
func (p *Plan) writeSorted(out *inputWriter, writes []ChainKey) {
	for _, k := range writes {
		out.put(":", k.Name, " - [0:0]\n")
	}
	for _, k := range writes {
		for _, rule := range p.Write[k] {
			out.put("-A ", k.Name, " ", rule, "\n")
		}
	}
}

// writeChains writes one table's chains: each declared (created, or
// flushed), before its rules and before any rule that jumps to it, and
// each chain's rules in their order. Within those rules the order is free,
// and it is chosen for iptables-nft-restore --noflush (1.8.9, Debian 12's):
// before it commits, it records every chain a line names, the line's own
// chain and the one it jumps to, in a list kept sorted by name that it
// walks from the smallest name on every line. Written in ascending order,
// as iptables-save would, each of 120,000 lines at 10,000 services walks
// thousands of names: 3 of the 6 seconds of a cold start went to strcmp.
// So the order keeps each line's names near the list's head:
//   - chains are written in descending name order, each declared just
//     before its own rules, so its name is the smallest yet;
//   - a chain declared first that jumps to larger names (a destination
//     bucket jumping to service chains) is not written in one piece: each
//     of its rules is written right after the chain it jumps to, the
//     moment that chain's name is at the head. The iptables mode orders a
//     bucket's rules by target, descending, so that they come out in its
//     order. Other chains that jump to larger names are written last;
//   - a chain jumped to from a larger one (a bucket from SERVICES, the
//     masquerade mark from every service chain) is declared first of all,
//     and written whole then if it jumps to no chain of the table.
//
// Every order this writes means the same ruleset; the order only changes
// how long the restore takes (iptables-legacy-restore does not care).
func (p *Plan) writeChains(out *inputWriter, writes []ChainKey) {
	w := &chainWriter{out: out, written: make(map[string][]string, len(writes)),
		targets:  make(map[string][]string, len(writes)),
		declared: make(map[string]bool, len(writes)), complete: make(map[string]bool, len(writes)),
		next: map[string]int{}, waiting: map[string][]string{}}
	for _, k := range writes {
		rules := p.Write[k]
		targets := make([]string, len(rules))
		for i, rule := range rules {
			targets[i] = JumpTarget(rule)
		}
		w.written[k.Name], w.targets[k.Name] = rules, targets
	}
	pulled, first := map[string]bool{}, map[string]bool{}
	for _, k := range writes {
		for _, target := range w.targets[k.Name] {
			switch {
			case !w.isWritten(target):
			case target > k.Name:
				pulled[k.Name] = true
			default:
				first[target] = true
			}
		}
	}
	descending := func(yield func(string) bool) {
		for i := len(writes) - 1; i >= 0; i-- {
			if !yield(writes[i].Name) {
				return
			}
		}
	}
	for name := range descending {
		switch {
		case !first[name]:
		case w.leaf(name):
			// Complete from the start (the masquerade mark), so that no
			// pulled rule ever waits for it.
			w.writeFrom(name, 0)
			w.finish(name)
		default:
			w.declare(name)
		}
	}
	for name := range descending {
		if pulled[name] && w.declared[name] {
			w.wait(name)
		}
	}
	for name := range descending {
		if !pulled[name] && !w.complete[name] {
			w.writeFrom(name, 0)
			w.finish(name)
		}
	}
	// A pulled chain not declared yet (an external chain jumping to its
	// service chain) waited until now: declared while the service chains
	// were written, its name would have lengthened every walk after it.
	for name := range descending {
		if pulled[name] && !w.declared[name] {
			w.pull(name)
		}
	}
	// Only a cycle of jumps, which iptables refuses anyway, leaves a
	// pulled chain unfinished; write what is left as it comes.
	for name := range descending {
		if pulled[name] && !w.complete[name] {
			w.writeFrom(name, w.next[name])
			w.complete[name] = true
		}
	}
}

// chainWriter is writeChains' state for one table.
type chainWriter struct {
	out      *inputWriter
	written  map[string][]string // the table's chains the plan writes
	targets  map[string][]string // what each of their rules jumps to (JumpTarget)
	declared map[string]bool
	complete map[string]bool     // declared, and its rules written
	next     map[string]int      // a pulled chain's next rule
	waiting  map[string][]string // chain -> pulled chains whose next rule jumps to it
}

func (w *chainWriter) isWritten(name string) bool {
	_, ok := w.written[name]
	return ok
}

// leaf reports whether none of a chain's rules jumps to a chain the table
// writes.
func (w *chainWriter) leaf(name string) bool {
	return !slices.ContainsFunc(w.targets[name], w.isWritten)
}

func (w *chainWriter) declare(name string) {
	if !w.declared[name] {
		w.declared[name] = true
		w.out.put(":", name, " - [0:0]\n")
	}
}

// rule writes a chain's i-th rule, after declaring the chain and the
// written chain it jumps to, if either is not yet.
func (w *chainWriter) rule(chain string, i int) {
	w.declare(chain)
	if target := w.targets[chain][i]; w.isWritten(target) {
		w.declare(target)
	}
	w.out.put("-A ", chain, " ", w.written[chain][i], "\n")
}

// writeFrom writes a chain's rules from the i-th on.
func (w *chainWriter) writeFrom(chain string, i int) {
	for ; i < len(w.written[chain]); i++ {
		w.rule(chain, i)
	}
}

// blocks reports whether a pulled chain's i-th rule must wait: it jumps
// to a larger name the table writes that is not complete yet.
func (w *chainWriter) blocks(chain string, i int) bool {
	target := w.targets[chain][i]
	return target > chain && w.isWritten(target) && !w.complete[target]
}

// wait makes a pulled chain wait for the chain its first blocking rule
// jumps to, writing nothing yet: its rules all come from there on, in
// order. With nothing to wait for, it is written at once.
func (w *chainWriter) wait(chain string) {
	for i := range w.written[chain] {
		if w.blocks(chain, i) {
			target := w.targets[chain][i]
			w.waiting[target] = append(w.waiting[target], chain)
			return
		}
	}
	w.pull(chain)
}

// pull writes a pulled chain's rules up to the next one that blocks, and
// waits there.
func (w *chainWriter) pull(chain string) {
	for ; w.next[chain] < len(w.written[chain]); w.next[chain]++ {
		if i := w.next[chain]; w.blocks(chain, i) {
			target := w.targets[chain][i]
			w.waiting[target] = append(w.waiting[target], chain)
			return
		}
		w.rule(chain, w.next[chain])
	}
	w.finish(chain)
}

// finish marks a chain complete and pulls the chains waiting for it.
func (w *chainWriter) finish(chain string) {
	w.declare(chain)
	w.complete[chain] = true
	waiters := w.waiting[chain]
	delete(w.waiting, chain)
	for _, c := range waiters {
		w.pull(c)
	}
}

// JumpTarget returns the chain or target a rule (the text after
// "-A CHAIN ") jumps or goes to; "" if none. Rules are in iptables-save's
// canonical form, where the target comes last: the last " -j " or " -g "
// is the one (a comment before it may hold anything). It does not split
// the rule: it runs on every rule of every full sync.
func JumpTarget(rule string) string {
	for _, flag := range []string{"-j ", "-g "} {
		i := strings.LastIndex(rule, " "+flag)
		switch {
		case i >= 0:
			i += 1 + len(flag)
		case strings.HasPrefix(rule, flag):
			i = len(flag)
		default:
			continue
		}
		target, _, _ := strings.Cut(rule[i:], " ")
		return target
	}
	return ""
}

// renderedSize is the length of Render's output, or a few bytes more.
func (p *Plan) renderedSize(deletes map[ChainKey]bool) int {
	n := 2 * len("*filter\nCOMMIT\n")
	for k, rules := range p.Write {
		n += len(":- [0:0]\n") + 1 + len(k.Name)
		for _, r := range rules {
			n += len("-A  \n") + len(k.Name) + len(r)
		}
	}
	for k := range deletes {
		n += len(":- [0:0]\n") + 1 + len(k.Name) + len("-X \n") + len(k.Name)
	}
	return n
}

func sortedKeys[V any](m map[ChainKey]V, table Table) []ChainKey {
	var keys []ChainKey
	for k := range m {
		if k.Table == table {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, compareChainKeys)
	return keys
}

// IsOwned reports whether a chain name belongs to svcproxy.
func IsOwned(chain string) bool { return strings.HasPrefix(chain, ChainPrefix) }
