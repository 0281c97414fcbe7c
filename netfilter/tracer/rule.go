package tracer

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// rule is a parsed rule: every match must hold for its target to apply.
type rule struct {
	text    string
	matches []match
	target  target
}

type matchKind uint8

const (
	matchSrc matchKind = iota + 1
	matchDst
	matchProto
	matchDport
	matchSrcType
	matchDstType
	matchCtstate
	matchMark
	matchStatistic
	matchRecent
	matchInIface
)

// match is one condition. Fields are used according to kind.
type match struct {
	kind        matchKind
	neg         bool
	prefix      netip.Prefix // src, dst
	proto       string       // proto
	lo, hi      uint16       // dport
	states      []string     // ctstate
	value, mask uint32       // mark
	probability float64      // statistic
	recentMode  string       // recent: "--set", "--rcheck" or "--update"
	iface       string       // in interface: a name, or a prefix and "+"
}

type target struct {
	verdict    string // ACCEPT, DROP, REJECT, RETURN, DNAT, MASQUERADE, MARK; "" for a jump
	chain      string // jump target
	rejectWith string
	to         netip.AddrPort // DNAT; port 0: address only
	markOp     string         // --or-mark, --xor-mark, --set-xmark
	value      uint32
	mask       uint32
}

// ruleParser walks a rule's tokens: options before -m belong to the rule,
// options after -m NAME to that module, options after -j to the target.
type ruleParser struct {
	family model.Family
	table  string
	tokens []string
	i      int
	r      *rule
	module string
	proto  string
	neg    bool
}

func parseRule(family model.Family, table string, tokens []string) (*rule, error) {
	p := &ruleParser{family: family, table: table, tokens: tokens, r: &rule{text: strings.Join(quoteComments(tokens), " ")}}
	for p.i < len(tokens) {
		if err := p.next(); err != nil {
			return nil, err
		}
	}
	if p.neg {
		return nil, fmt.Errorf("dangling '!'")
	}
	if p.r.target.verdict == "" && p.r.target.chain == "" {
		return nil, fmt.Errorf("rule without target")
	}
	return p.r, nil
}

// quoteComments restores the quotes around comments, so that a rule's text
// reads as it was written.
func quoteComments(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		if i > 0 && tokens[i-1] == "--comment" {
			t = `"` + t + `"`
		}
		out[i] = t
	}
	return out
}

func (p *ruleParser) arg() (string, error) {
	if p.i >= len(p.tokens) {
		return "", fmt.Errorf("%s needs an argument", p.tokens[p.i-1])
	}
	p.i++
	return p.tokens[p.i-1], nil
}

func (p *ruleParser) add(m match) {
	m.neg, p.neg = p.neg, false
	p.r.matches = append(p.r.matches, m)
}

func (p *ruleParser) next() error {
	tok := p.tokens[p.i]
	p.i++
	switch tok {
	case "!":
		p.neg = true
		return nil
	case "-s", "-d":
		return p.address(tok)
	case "-i":
		iface, err := p.arg()
		if err != nil {
			return err
		}
		p.add(match{kind: matchInIface, iface: iface})
		return nil
	case "-p":
		proto, err := p.arg()
		if err != nil {
			return err
		}
		p.proto = proto
		p.add(match{kind: matchProto, proto: proto})
		return nil
	case "-m":
		module, err := p.arg()
		p.module = module
		return err
	case "-j":
		return p.parseTarget()
	}
	return p.moduleOption(tok)
}

func (p *ruleParser) address(opt string) error {
	s, err := p.arg()
	if err != nil {
		return err
	}
	prefix, err := netip.ParsePrefix(s)
	if err != nil {
		return err
	}
	if prefix != prefix.Masked() {
		return fmt.Errorf("%s %s has host bits set", opt, s)
	}
	if model.FamilyOf(prefix.Addr()) != p.family {
		return fmt.Errorf("%s %s is not %s", opt, s, p.family)
	}
	kind := matchSrc
	if opt == "-d" {
		kind = matchDst
	}
	p.add(match{kind: kind, prefix: prefix})
	return nil
}

func (p *ruleParser) moduleOption(opt string) error {
	switch p.module + " " + opt {
	case "tcp --dport", "udp --dport", "sctp --dport":
		return p.dport()
	case "comment --comment":
		_, err := p.arg()
		return err
	case "addrtype --src-type", "addrtype --dst-type":
		return p.addrtype(opt)
	case "conntrack --ctstate":
		s, err := p.arg()
		if err != nil {
			return err
		}
		states := strings.Split(s, ",")
		for _, st := range states {
			if !slices.Contains([]string{"NEW", "ESTABLISHED", "RELATED", "INVALID", "DNAT", "SNAT"}, st) {
				return fmt.Errorf("unsupported conntrack state %q", st)
			}
		}
		p.add(match{kind: matchCtstate, states: states})
		return nil
	case "mark --mark":
		s, err := p.arg()
		if err != nil {
			return err
		}
		v, m, err := parseMark(s)
		p.add(match{kind: matchMark, value: v, mask: m})
		return err
	case "statistic --mode", "statistic --probability":
		return p.statistic(opt)
	case "recent --name", "recent --seconds", "recent --mask":
		_, err := p.arg()
		return err
	case "recent --reap", "recent --rsource":
		return nil
	case "recent --set", "recent --rcheck", "recent --update":
		p.add(match{kind: matchRecent, recentMode: opt})
		return nil
	}
	return fmt.Errorf("unsupported option %q (module %q)", opt, p.module)
}

func (p *ruleParser) dport() error {
	if p.proto != p.module {
		return fmt.Errorf("-m %s --dport needs -p %s first", p.module, p.module)
	}
	s, err := p.arg()
	if err != nil {
		return err
	}
	loS, hiS, isRange := strings.Cut(s, ":")
	if !isRange {
		hiS = loS
	}
	lo, err1 := strconv.ParseUint(loS, 10, 16)
	hi, err2 := strconv.ParseUint(hiS, 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return fmt.Errorf("bad port %q", s)
	}
	p.add(match{kind: matchDport, lo: uint16(lo), hi: uint16(hi)})
	return nil
}

func (p *ruleParser) addrtype(opt string) error {
	s, err := p.arg()
	if err != nil {
		return err
	}
	if s != "LOCAL" {
		return fmt.Errorf("unsupported address type %q", s)
	}
	kind := matchSrcType
	if opt == "--dst-type" {
		kind = matchDstType
	}
	p.add(match{kind: kind})
	return nil
}

func (p *ruleParser) statistic(opt string) error {
	s, err := p.arg()
	if err != nil {
		return err
	}
	if opt == "--mode" {
		if s != "random" {
			return fmt.Errorf("unsupported statistic mode %q", s)
		}
		return nil
	}
	prob, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	p.add(match{kind: matchStatistic, probability: prob})
	return nil
}

func parseMark(s string) (value, mask uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, err
	}
	m := uint64(0xffffffff)
	if hasMask {
		if m, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, err
		}
	}
	return uint32(v), uint32(m), nil
}

func (p *ruleParser) parseTarget() error {
	name, err := p.arg()
	if err != nil {
		return err
	}
	t := &p.r.target
	switch name {
	case "ACCEPT", "RETURN":
		t.verdict = name
	case "DROP", "REJECT":
		// The nat table is not for filtering; iptables-nft refuses it.
		if p.table != "filter" {
			return fmt.Errorf("%s outside the filter table", name)
		}
		t.verdict, t.rejectWith = name, "icmp-port-unreachable"
		if p.family == model.IPv6 {
			t.rejectWith = "icmp6-port-unreachable"
		}
	case "DNAT", "MASQUERADE", "MARK":
		if p.table != "nat" && name != "MARK" {
			return fmt.Errorf("%s outside the nat table", name)
		}
		t.verdict = name
	default:
		if strings.HasPrefix(name, "-") || strings.ToUpper(name) != name {
			return fmt.Errorf("unsupported target %q", name)
		}
		t.chain = name
	}
	for p.i < len(p.tokens) {
		if err := p.targetOption(); err != nil {
			return err
		}
	}
	return p.checkTarget()
}

func (p *ruleParser) targetOption() error {
	t := &p.r.target
	opt := p.tokens[p.i]
	p.i++
	if opt == "--random-fully" && t.verdict == "MASQUERADE" {
		return nil
	}
	s, err := p.arg()
	if err != nil {
		return err
	}
	switch t.verdict + " " + opt {
	case "REJECT --reject-with":
		t.rejectWith = s
		return nil
	case "DNAT --to-destination":
		return p.dnatTarget(s)
	case "MARK --or-mark", "MARK --xor-mark", "MARK --set-xmark":
		t.markOp = opt
		t.value, t.mask, err = parseMark(s)
		return err
	}
	return fmt.Errorf("unsupported target option %q for %q", opt, t.verdict+t.chain)
}

func (p *ruleParser) dnatTarget(s string) error {
	to, err := parseDestination(s)
	switch {
	case err != nil:
		return err
	case to.Port() != 0 && p.proto == "":
		return fmt.Errorf("DNAT to a port needs -p")
	case model.FamilyOf(to.Addr()) != p.family:
		return fmt.Errorf("DNAT destination %s is not %s", s, p.family)
	}
	p.r.target.to = to
	return nil
}

// parseDestination reads "addr", "addr:port" or "[v6addr]:port"; port 0
// stands for no port.
func parseDestination(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad DNAT destination %q", s)
	}
	return netip.AddrPortFrom(a, 0), nil
}

// checkTarget refuses what iptables itself would refuse.
func (p *ruleParser) checkTarget() error {
	t := p.r.target
	switch {
	case t.verdict == "DNAT" && !t.to.IsValid():
		return fmt.Errorf("DNAT without --to-destination")
	case t.verdict == "MARK" && t.markOp == "":
		return fmt.Errorf("MARK without an operation")
	case t.verdict == "REJECT" && t.rejectWith == "tcp-reset" && p.proto != "tcp":
		return fmt.Errorf("tcp-reset needs -p tcp")
	case t.verdict == "REJECT" && !validRejectType(t.rejectWith):
		return fmt.Errorf("unsupported reject type %q", t.rejectWith)
	}
	return nil
}

func validRejectType(s string) bool {
	switch s {
	case "tcp-reset", "icmp-port-unreachable", "icmp6-port-unreachable":
		return true
	}
	return false
}
