package netfilter

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// PortRules is what one service port contributes to svcproxy's iptables
// rules, as a full plan writes them: chains of its own, which hold exactly
// their rules, and rules in chains it shares with other ports, which must
// be among theirs. It is what `svcproxy explain` checks a port by.
type PortRules struct {
	Own    []Chain
	Shared []Rule
}

// Chain is one chain's complete rule list.
type Chain struct {
	Key   ChainKey
	Rules []string
}

// Rule is one rule of a chain, as it follows "-A <chain> " in
// iptables-restore input (and in iptables-save output: svcproxy writes its
// rules in the form iptables-save prints them, so the two compare as text).
type Rule struct {
	Chain ChainKey
	Text  string
}

// AddShared adds rules of one shared chain.
func (p *PortRules) AddShared(chain ChainKey, rules []string) {
	for _, r := range rules {
		p.Shared = append(p.Shared, Rule{Chain: chain, Text: r})
	}
}

// PortRules adds a port's rules in the chains both modes share: FILTER,
// HAIRPIN and HEALTHCHECK.
func (s Shared) PortRules(into *PortRules, rp *Port) {
	into.AddShared(FilterKey(ChainFilter), s.Filter(rp))
	into.AddShared(NatKey(ChainHairpin), s.Rules.HairpinRules(s.hairpin(rp)))
	into.AddShared(FilterKey(ChainHealthCheck), healthCheckRules([]Port{*rp}))
}

// SavedRules are svcproxy's chains as the kernel holds them.
type SavedRules map[ChainKey][]string

// Saved reads svcproxy's chains of both tables from the kernel, with one
// iptables-save per table.
func (a *Applier) Saved(ctx context.Context) (SavedRules, error) {
	saved := SavedRules{}
	for _, table := range []Table{TableFilter, TableNAT} {
		out, err := a.save(ctx, table)
		if err != nil {
			return nil, fmt.Errorf("reading the %s table: %w", table, err)
		}
		saved.parse(table, out)
	}
	return saved, nil
}

// parse adds the svcproxy chains of one table's iptables-save output.
func (s SavedRules) parse(table Table, out []byte) {
	saved, _ := parseSave(table, bytes.NewReader(out), ownedChain)
	for _, name := range saved.Chains {
		if IsOwned(name) {
			s[ChainKey{Table: table, Name: name}] = append([]string{}, saved.Rules[name]...)
		}
	}
}

// SavedTable is one table as iptables-save lists it.
type SavedTable struct {
	Table Table
	// Chains are the chains it declares, built-in ones included, in order.
	Chains []string
	// Rules maps a chain to its rules, each the text that follows
	// "-A CHAIN " in iptables-save output.
	Rules map[string][]string
}

// ParseSave reads the output of "iptables-save -t TABLE".
func ParseSave(table Table, save []byte) SavedTable {
	t, _ := parseSave(table, bytes.NewReader(save), func([]byte) bool { return true })
	return t
}

// parseForeignSave is ParseSave without the rules of svcproxy's own
// chains (their names stay): all a look at other programs' rules needs,
// at a fraction of the memory and time when svcproxy's chains hold 100k
// rules.
func parseForeignSave(table Table, save []byte) SavedTable {
	t, _ := parseSave(table, bytes.NewReader(save), foreignChain)
	return t
}

// ReadForeignSave runs binary (an iptables-save) for one table and reads
// what it prints as parseForeignSave does, as it is printed where run can.
func ReadForeignSave(ctx context.Context, run Runner, binary string, table Table) (SavedTable, error) {
	args := []string{"-t", string(table)}
	rr, ok := run.(ReadingRunner)
	if !ok {
		out, err := run.Run(ctx, binary, args, nil)
		if err != nil {
			return SavedTable{}, err
		}
		return parseForeignSave(table, out), nil
	}
	var t SavedTable
	err := rr.RunRead(ctx, binary, args, func(r io.Reader) (err error) {
		t, err = parseSave(table, r, foreignChain)
		return err
	})
	return t, err
}

func ownedChain(chain []byte) bool   { return bytes.HasPrefix(chain, []byte(ChainPrefix)) }
func foreignChain(chain []byte) bool { return !ownedChain(chain) }

// parseSave reads the chains of an iptables-save output, and the rules of
// those keep wants: at 100k rules, keeping every rule would cost ~15 MB.
func parseSave(table Table, save io.Reader, keep func(chain []byte) bool) (SavedTable, error) {
	t := SavedTable{Table: table, Rules: map[string][]string{}}
	sc := bufio.NewScanner(save)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case bytes.HasPrefix(line, []byte(":")):
			if name, _, ok := bytes.Cut(line[1:], []byte(" ")); ok {
				t.Chains = append(t.Chains, string(name))
			}
		case bytes.HasPrefix(line, []byte("-A ")):
			if chain, rule, _ := bytes.Cut(line[len("-A "):], []byte(" ")); keep(chain) {
				t.Rules[string(chain)] = append(t.Rules[string(chain)], string(rule))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return t, fmt.Errorf("reading iptables-save output: %w", err)
	}
	return t, nil
}

// Check tells, for each of the port's chains and shared rules, whether
// the kernel holds it.
func (p PortRules) Check(saved SavedRules) []model.KernelObject {
	var objs []model.KernelObject
	for _, ch := range p.Own {
		obj := model.KernelObject{Kind: "chain", Name: string(ch.Key.Table) + " " + ch.Key.Name, State: model.InPlace}
		have, ok := saved[ch.Key]
		switch {
		case !ok:
			obj.State = model.Missing
		case !slices.Equal(have, ch.Rules):
			obj.State, obj.Detail = model.Differs, ruleDiff(ch.Rules, have)
		}
		objs = append(objs, obj)
	}
	for _, r := range p.Shared {
		obj := model.KernelObject{Kind: "rule", Name: string(r.Chain.Table) + " " + r.Chain.Name + " " + r.Text, State: model.InPlace}
		if !slices.Contains(saved[r.Chain], r.Text) {
			obj.State = model.Missing
		}
		objs = append(objs, obj)
	}
	return objs
}

// ruleDiff says how a chain's rules differ from the wanted ones.
func ruleDiff(want, have []string) string {
	var parts []string
	for _, r := range want {
		if !slices.Contains(have, r) {
			parts = append(parts, "missing: "+r)
		}
	}
	for _, r := range have {
		if !slices.Contains(want, r) {
			parts = append(parts, "unexpected: "+r)
		}
	}
	if len(parts) == 0 {
		return fmt.Sprintf("the same %d rules in another order", len(want))
	}
	return strings.Join(parts, "; ")
}
