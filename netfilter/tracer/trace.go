package tracer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Packet is the first packet of a new connection.
type Packet struct {
	Src, Dst netip.Addr
	Proto    string // "tcp", "udp" or "sctp"
	DPort    uint16
	// SrcLocal: the node itself sends the packet, so it takes the OUTPUT
	// path and "--src-type LOCAL" matches.
	SrcLocal bool
	// DstLocal: the destination is one of the node's addresses. A DNATed
	// packet is taken to be going to a pod, not to a node address.
	DstLocal bool
	// InIface is the interface a packet from elsewhere comes in on; ""
	// for one the node sends, which "-i" never matches.
	InIface string
	// Invalid: the packet belongs to no connection conntrack knows (a
	// stray TCP segment): its ctstate is INVALID, not NEW, and the nat
	// table, which sees only a connection's first packet, never sees it.
	Invalid bool
}

// Outcome is one way a packet can go. A packet meeting "-m statistic" has
// one outcome per branch.
type Outcome struct {
	Verdict    string // ACCEPT, DROP or REJECT
	RejectWith string
	Dst        netip.AddrPort // after DNAT; the original destination if none
	DNAT       bool
	Masquerade bool
	// Trail lists every rule that matched, as "table/chain: rule".
	Trail []string
}

func (o Outcome) String() string {
	s := o.Verdict + " to " + o.Dst.String()
	if o.Masquerade {
		s += " masqueraded"
	}
	return s + "\n  " + strings.Join(o.Trail, "\n  ")
}

// Bounds on one trace, so that a jump loop or an explosion of branches
// fails instead of hanging.
const (
	maxDepth = 32
	maxSteps = 1_000_000
	maxPaths = 4096
)

// Trace walks a new connection's first packet (or an invalid one) through
// the nat and filter hooks it meets. "-m recent" checks never match (no client was seen
// before); "-m statistic" forks. It returns every possible outcome, in a
// stable order: the branch that matches a statistic rule first.
func (rs *Ruleset) Trace(p Packet) ([]Outcome, error) {
	var outcomes []Outcome
	var choices []bool
	for range maxPaths {
		w := &walk{rs: rs, pkt: p, dst: netip.AddrPortFrom(p.Dst, p.DPort), dstLocal: p.DstLocal, choices: choices}
		out, err := w.run()
		if err != nil {
			return nil, err
		}
		outcomes = append(outcomes, out)
		// Next path: the last branch taken as a match is taken as a miss.
		j := lastTrue(w.choices)
		if j < 0 {
			return outcomes, nil
		}
		choices = append(slices.Clone(w.choices[:j]), false)
	}
	return nil, fmt.Errorf("more than %d paths", maxPaths)
}

func lastTrue(choices []bool) int {
	for i := len(choices) - 1; i >= 0; i-- {
		if choices[i] {
			return i
		}
	}
	return -1
}

// walk is one path of a packet through the hooks.
type walk struct {
	rs         *Ruleset
	pkt        Packet
	dst        netip.AddrPort
	dstLocal   bool
	mark       uint32
	dnat       bool
	masquerade bool
	rejectWith string
	trail      []string
	steps      int
	// choices are the statistic branches of this path in the order met:
	// given ones are followed, new ones are taken as a match.
	choices []bool
	chosen  int
}

type hook struct{ table, chain string }

// run passes the packet through the hooks of its path, in kernel order:
// nat before filter on the way in, the routing decision after DNAT.
func (w *walk) run() (Outcome, error) {
	first := hook{"nat", "PREROUTING"}
	if w.pkt.SrcLocal {
		first = hook{"nat", "OUTPUT"}
	}
	verdict, err := w.hook(first)
	for _, h := range w.afterDNAT() {
		if err != nil || verdict != "ACCEPT" {
			break
		}
		verdict, err = w.hook(h)
	}
	if err != nil {
		return Outcome{}, err
	}
	return Outcome{
		Verdict:    verdict,
		RejectWith: w.rejectWith,
		Dst:        w.dst,
		DNAT:       w.dnat,
		Masquerade: w.masquerade,
		Trail:      w.trail,
	}, nil
}

func (w *walk) afterDNAT() []hook {
	switch {
	case w.pkt.SrcLocal && w.dstLocal:
		return []hook{{"filter", "OUTPUT"}, {"nat", "POSTROUTING"}, {"filter", "INPUT"}}
	case w.pkt.SrcLocal:
		return []hook{{"filter", "OUTPUT"}, {"nat", "POSTROUTING"}}
	case w.dstLocal:
		return []hook{{"filter", "INPUT"}}
	}
	return []hook{{"filter", "FORWARD"}, {"nat", "POSTROUTING"}}
}

// hook runs a built-in chain; its policy is ACCEPT. An invalid packet
// passes the nat chains untouched.
func (w *walk) hook(h hook) (string, error) {
	if w.pkt.Invalid && h.table == "nat" {
		return "ACCEPT", nil
	}
	verdict, err := w.chain(h.table, h.chain, 0)
	if verdict == "" {
		verdict = "ACCEPT"
	}
	return verdict, err
}

// chain runs the rules of a chain until one decides; "" means the packet
// fell off the end or returned.
func (w *walk) chain(table, name string, depth int) (string, error) {
	rules, ok := w.rs.tables[table][name]
	switch {
	case !ok:
		return "", fmt.Errorf("jump to missing chain %s/%s", table, name)
	case depth > maxDepth:
		return "", fmt.Errorf("jumps nested deeper than %d at %s/%s", maxDepth, table, name)
	}
	for _, r := range rules {
		if w.steps++; w.steps > maxSteps {
			return "", fmt.Errorf("more than %d rules evaluated", maxSteps)
		}
		if !w.matches(r) {
			continue
		}
		w.trail = append(w.trail, table+"/"+name+": "+r.text)
		if verdict, done, err := w.apply(table, r.target, depth); done || err != nil {
			return verdict, err
		}
	}
	return "", nil
}

// apply carries out a target; done reports whether it ended the chain.
func (w *walk) apply(table string, t target, depth int) (verdict string, done bool, err error) {
	switch t.verdict {
	case "":
		verdict, err = w.chain(table, t.chain, depth+1)
		return verdict, verdict != "" || err != nil, err
	case "RETURN":
		return "", true, nil
	case "REJECT":
		w.rejectWith = t.rejectWith
		return t.verdict, true, nil
	case "DNAT":
		port := t.to.Port()
		if port == 0 {
			port = w.dst.Port()
		}
		w.dst, w.dnat, w.dstLocal = netip.AddrPortFrom(t.to.Addr(), port), true, false
		return "ACCEPT", true, nil
	case "MASQUERADE":
		w.masquerade = true
		return "ACCEPT", true, nil
	case "MARK":
		w.setMark(t)
		return "", false, nil
	}
	return t.verdict, true, nil
}

func (w *walk) setMark(t target) {
	switch t.markOp {
	case "--or-mark":
		w.mark |= t.value
	case "--xor-mark":
		w.mark ^= t.value
	case "--set-xmark":
		w.mark = (w.mark &^ t.mask) ^ t.value
	}
}

func (w *walk) matches(r *rule) bool {
	for _, m := range r.matches {
		if w.match(m) == m.neg {
			return false
		}
	}
	return true
}

func (w *walk) match(m match) bool {
	switch m.kind {
	case matchSrc:
		return m.prefix.Contains(w.pkt.Src)
	case matchDst:
		return m.prefix.Contains(w.dst.Addr())
	case matchInIface:
		return ifaceMatches(m.iface, w.pkt.InIface)
	case matchProto:
		return m.proto == w.pkt.Proto
	case matchDport:
		return m.lo <= w.dst.Port() && w.dst.Port() <= m.hi
	case matchSrcType:
		return w.pkt.SrcLocal
	case matchDstType:
		return w.dstLocal
	case matchCtstate:
		return slices.ContainsFunc(m.states, w.ctstate)
	case matchMark:
		return w.mark&m.mask == m.value
	case matchStatistic:
		return m.probability >= 1 || m.probability > 0 && w.choose()
	case matchRecent:
		return m.recentMode == "--set"
	}
	panic(fmt.Sprintf("tracer: match kind %d has no evaluation", m.kind))
}

// ctstate: a traced packet opens a new connection, unless it is invalid.
func (w *walk) ctstate(state string) bool {
	if w.pkt.Invalid {
		return state == "INVALID"
	}
	switch state {
	case "NEW":
		return true
	case "DNAT":
		return w.dnat
	}
	return false
}

func (w *walk) choose() bool {
	if w.chosen == len(w.choices) {
		w.choices = append(w.choices, true)
	}
	w.chosen++
	return w.choices[w.chosen-1]
}

// ifaceMatches is iptables' interface match: a name, or a prefix
// followed by "+".
func ifaceMatches(pattern, iface string) bool {
	if iface == "" {
		return false
	}
	if prefix, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(iface, prefix)
	}
	return pattern == iface
}
