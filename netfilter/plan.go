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
	_ = p.write(&buf, deletes) // a bytes.Buffer does not fail
	return buf.Bytes()
}

// WriteTo writes what Render returns to w, without holding it whole, and
// returns its length.
func (p *Plan) WriteTo(w io.Writer, stale []ChainKey) (int, error) {
	counted := &countingWriter{w: w}
	bw := bufio.NewWriterSize(counted, 64<<10)
	if err := p.write(bw, p.deletes(stale)); err != nil {
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

// write renders the input into w; it stops at w's first error.
func (p *Plan) write(w io.StringWriter, deletes map[ChainKey]bool) error {
	var err error
	put := func(parts ...string) {
		for _, s := range parts {
			if err == nil {
				_, err = w.WriteString(s)
			}
		}
	}
	for _, table := range []Table{TableFilter, TableNAT} {
		writes := sortedKeys(p.Write, table)
		dels := sortedKeys(deletes, table)
		if len(writes) == 0 && len(dels) == 0 {
			continue
		}
		put("*", string(table), "\n")
		// Declaring a chain creates it or flushes it; deleted chains are
		// declared too so that rules jumping to them are gone before -X.
		for _, k := range writes {
			put(":", k.Name, " - [0:0]\n")
		}
		for _, k := range dels {
			put(":", k.Name, " - [0:0]\n")
		}
		for _, k := range writes {
			for _, rule := range p.Write[k] {
				put("-A ", k.Name, " ", rule, "\n")
			}
		}
		for _, k := range dels {
			put("-X ", k.Name, "\n")
		}
		put("COMMIT\n")
	}
	return err
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

// JumpTarget returns the chain or target a rule (the text after
// "-A CHAIN ") jumps or goes to; "" if none.
func JumpTarget(rule string) string {
	fields := strings.Fields(rule)
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "-j" || fields[i] == "-g" {
			return fields[i+1]
		}
	}
	return ""
}
