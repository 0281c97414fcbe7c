// Package tracer loads iptables rules from iptables-restore text, as the
// kernel would (tables of chains, --noflush semantics, reference checks),
// and walks a packet through them, so tests can check what the rules do
// rather than how they read.
//
// It understands exactly the matches and targets svcproxy writes; any other
// is an error, never silently ignored, so a rule it cannot judge fails the
// test instead of passing it.
package tracer

import (
	"fmt"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// MaxChainName is the longest chain name iptables accepts.
const MaxChainName = 28

var builtinChains = map[string][]string{
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
}

// Ruleset is the rules of one family: table, then chain, then rules.
type Ruleset struct {
	family model.Family
	tables map[string]map[string][]*rule
}

// New returns a ruleset of a family holding only the empty built-in chains
// of the nat and filter tables, as a fresh network namespace has.
func New(family model.Family) *Ruleset {
	rs := &Ruleset{family: family, tables: map[string]map[string][]*rule{}}
	for table, chains := range builtinChains {
		rs.tables[table] = map[string][]*rule{}
		for _, ch := range chains {
			rs.tables[table][ch] = nil
		}
	}
	return rs
}

func isBuiltin(table, chain string) bool { return slices.Contains(builtinChains[table], chain) }

// Restore applies iptables-restore --noflush input: a declared chain is
// created or flushed, -A appends, -X deletes a chain no rule refers to.
// Each table's changes take effect at its COMMIT only if every jump in the
// table then leads to an existing chain, as the kernel checks.
func (rs *Ruleset) Restore(text []byte) error {
	var table string
	var work map[string][]*rule // the table being changed, committed at COMMIT
	for n, line := range strings.Split(string(text), "\n") {
		if err := rs.restoreLine(&table, &work, line); err != nil {
			return fmt.Errorf("line %d %q: %w", n+1, line, err)
		}
	}
	if work != nil {
		return fmt.Errorf("table %s: no COMMIT", table)
	}
	return nil
}

func (rs *Ruleset) restoreLine(table *string, work *map[string][]*rule, line string) error {
	line = strings.TrimSpace(line)
	switch {
	case line == "" || strings.HasPrefix(line, "#"):
		return nil
	case strings.HasPrefix(line, "*"):
		if *work != nil {
			return fmt.Errorf("table %s not committed", *table)
		}
		*table = line[1:]
		if rs.tables[*table] == nil {
			return fmt.Errorf("unknown table %q", *table)
		}
		*work = cloneTable(rs.tables[*table])
		return nil
	case *work == nil:
		return fmt.Errorf("outside a table")
	case line == "COMMIT":
		if err := checkReferences(*work); err != nil {
			return err
		}
		rs.tables[*table], *work = *work, nil
		return nil
	case strings.HasPrefix(line, ":"):
		return declareChain(*work, line)
	case strings.HasPrefix(line, "-A "):
		return appendRule(rs.family, *work, *table, line[3:])
	case strings.HasPrefix(line, "-X "):
		return deleteChain(*work, *table, strings.TrimSpace(line[3:]))
	}
	return fmt.Errorf("unsupported command")
}

func cloneTable(t map[string][]*rule) map[string][]*rule {
	out := make(map[string][]*rule, len(t))
	for k, v := range t {
		out[k] = slices.Clone(v)
	}
	return out
}

func declareChain(t map[string][]*rule, line string) error {
	fields := strings.Fields(line[1:])
	if len(fields) != 3 {
		return fmt.Errorf("malformed chain declaration")
	}
	name := fields[0]
	if len(name) > MaxChainName {
		return fmt.Errorf("chain name %q longer than %d", name, MaxChainName)
	}
	t[name] = []*rule{}
	return nil
}

func appendRule(family model.Family, t map[string][]*rule, table, text string) error {
	chain, args, _ := strings.Cut(text, " ")
	if _, ok := t[chain]; !ok {
		return fmt.Errorf("no chain %q", chain)
	}
	tokens, err := tokenize(args)
	if err != nil {
		return err
	}
	r, err := parseRule(family, table, tokens)
	if err != nil {
		return err
	}
	t[chain] = append(t[chain], r)
	return nil
}

func deleteChain(t map[string][]*rule, table, name string) error {
	rules, ok := t[name]
	switch {
	case !ok:
		return fmt.Errorf("no chain %q to delete", name)
	case isBuiltin(table, name):
		return fmt.Errorf("cannot delete built-in chain %q", name)
	case len(rules) > 0:
		return fmt.Errorf("chain %q is not empty", name)
	}
	if from := referrer(t, name); from != "" {
		return fmt.Errorf("chain %q is still referenced from %q", name, from)
	}
	delete(t, name)
	return nil
}

func referrer(t map[string][]*rule, name string) string {
	for chain, rules := range t {
		for _, r := range rules {
			if r.target.chain == name {
				return chain
			}
		}
	}
	return ""
}

func checkReferences(t map[string][]*rule) error {
	for chain, rules := range t {
		for _, r := range rules {
			if r.target.chain != "" {
				if _, ok := t[r.target.chain]; !ok {
					return fmt.Errorf("chain %q jumps to missing chain %q", chain, r.target.chain)
				}
			}
		}
	}
	return nil
}

// Insert puts a rule, given as arguments, first in a chain: how the
// applier installs its jump rules.
func (rs *Ruleset) Insert(table, chain string, args []string) error {
	t := rs.tables[table]
	if _, ok := t[chain]; !ok {
		return fmt.Errorf("no chain %s/%s", table, chain)
	}
	r, err := parseRule(rs.family, table, args)
	if err != nil {
		return fmt.Errorf("%s/%s %q: %w", table, chain, args, err)
	}
	if r.target.chain != "" {
		if _, ok := t[r.target.chain]; !ok {
			return fmt.Errorf("%s/%s jumps to missing chain %q", table, chain, r.target.chain)
		}
	}
	t[chain] = slices.Insert(t[chain], 0, r)
	return nil
}

// Chains lists the chains of a table, sorted.
func (rs *Ruleset) Chains(table string) []string {
	var names []string
	for name := range rs.tables[table] {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Rules returns a chain's rules as they were written.
func (rs *Ruleset) Rules(table, chain string) []string {
	var out []string
	for _, r := range rs.tables[table][chain] {
		out = append(out, r.text)
	}
	return out
}

// Dump renders the whole ruleset canonically (tables, chains sorted), so
// two rulesets compare as text.
func (rs *Ruleset) Dump() string {
	var b strings.Builder
	for _, table := range []string{"filter", "nat"} {
		b.WriteString("*" + table + "\n")
		for _, chain := range rs.Chains(table) {
			b.WriteString(":" + chain + "\n")
			for _, r := range rs.tables[table][chain] {
				b.WriteString("-A " + chain + " " + r.text + "\n")
			}
		}
	}
	return b.String()
}

// tokenize splits a rule as iptables-restore does: on blanks, with
// double quotes grouping a token. A quote or backslash inside a token, or
// an unterminated quote, is an error: svcproxy never writes one.
func tokenize(s string) ([]string, error) {
	var tokens []string
	for i := 0; i < len(s); {
		switch {
		case s[i] == ' ' || s[i] == '\t':
			i++
		case s[i] == '"':
			end := strings.IndexByte(s[i+1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("unterminated quote")
			}
			tokens = append(tokens, s[i+1:i+1+end])
			i += end + 2
			if i < len(s) && s[i] != ' ' {
				return nil, fmt.Errorf("text after a closing quote")
			}
		default:
			end := strings.IndexAny(s[i:], " \t")
			if end < 0 {
				end = len(s) - i
			}
			tok := s[i : i+end]
			if strings.ContainsAny(tok, `"\`) {
				return nil, fmt.Errorf("stray quote or backslash in %q", tok)
			}
			tokens = append(tokens, tok)
			i += end
		}
	}
	return tokens, nil
}
