package netfilter

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// Shared renders the chains both modes write alike: every port's FILTER
// rules, the HAIRPIN rules of the node-local endpoints traffic can reach,
// the HEALTHCHECK ports, and the chains no service changes (POSTROUTING,
// MARK-MASQ, FORWARD). Where the modes differ (which sources a restricted
// LB IP admits, which endpoints a mode can send traffic to) they say so
// through the two functions.
type Shared struct {
	Rules *Rules
	// Filter renders a port's rules in FILTER, usually FilterRules with the
	// mode's match for sources loadBalancerSourceRanges do not admit.
	Filter func(*Port) []string
	// Hairpin lists the port's node-local endpoint addresses some traffic
	// reaches, sorted.
	Hairpin func(*Port) []netip.Addr
	// FilterHead and FilterTail are the mode's rules before and after
	// every port's in FILTER, the same for every view.
	FilterHead []string
	FilterTail []string
	// InputHead are the mode's rules before the health check ports' in
	// HEALTHCHECK, the chain INPUT jumps to for every packet (FILTER sees
	// only new connections), the same for every view.
	InputHead []string
	// Balanced matches the packets the mode balanced to an endpoint, the
	// only ones that can hairpin: "-m conntrack --ctstate DNAT" when
	// iptables DNATs them, "-m ipvs --ipvs --vdir ORIGINAL" when IPVS does
	// (conntrack does not mark IPVS's translation as DNAT).
	Balanced string
}

// WriteAll adds every shared chain to a full plan.
func (s Shared) WriteAll(plan *Plan, ports []Port) {
	plan.Write[NatKey(ChainHairpin)] = s.Rules.HairpinRules(s.hairpinAddrs(ports))
	plan.Write[NatKey(ChainPostrouting)] = s.Rules.postroutingRules(s.Balanced)
	plan.Write[NatKey(ChainMarkMasq)] = s.Rules.markMasqRules()
	plan.Write[FilterKey(ChainFilter)] = s.filterRules(ports)
	plan.Write[FilterKey(ChainForward)] = s.Rules.forwardRules()
	plan.Write[FilterKey(ChainHealthCheck)] = s.healthCheckRules(ports)
}

// SharedChanges records which shared chains the changed ports of a partial
// compilation contribute to differently; only those are compiled again.
type SharedChanges struct{ filter, hairpin, healthCheck bool }

// Note records how one changed port's contributions differ.
func (s Shared) Note(c *SharedChanges, before, after *Port) {
	c.filter = c.filter || !slices.Equal(s.Filter(before), s.Filter(after))
	c.hairpin = c.hairpin || !slices.Equal(s.hairpin(before), s.hairpin(after))
	c.healthCheck = c.healthCheck || before.HealthCheckPort() != after.HealthCheckPort()
}

// WriteChanged adds to a partial plan the shared chains the noted changes
// touch whose rules differ between the two views' ports (resolved on
// demand: most changes touch no shared chain).
func (s Shared) WriteChanged(plan *Plan, c SharedChanges, before, after func() []Port) {
	if c.hairpin {
		DiffChain(plan, NatKey(ChainHairpin), s.Rules.HairpinRules(s.hairpinAddrs(before())), s.Rules.HairpinRules(s.hairpinAddrs(after())))
	}
	if c.filter {
		DiffChain(plan, FilterKey(ChainFilter), s.filterRules(before()), s.filterRules(after()))
	}
	if c.healthCheck {
		DiffChain(plan, FilterKey(ChainHealthCheck), s.healthCheckRules(before()), s.healthCheckRules(after()))
	}
}

func (s Shared) healthCheckRules(ports []Port) []string {
	return slices.Concat(s.InputHead, healthCheckRules(ports))
}

func (s Shared) filterRules(ports []Port) []string {
	return slices.Concat(s.FilterHead, SharedRules(ports, s.Filter), s.FilterTail)
}

func (s Shared) hairpin(p *Port) []netip.Addr {
	if !p.Present() {
		return nil
	}
	return s.Hairpin(p)
}

func (s Shared) hairpinAddrs(ports []Port) []netip.Addr {
	var addrs []netip.Addr
	for i := range ports {
		addrs = append(addrs, s.hairpin(&ports[i])...)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

// DiffChain writes a chain that always exists if its rules changed.
func DiffChain(plan *Plan, key ChainKey, before, after []string) {
	if !slices.Equal(before, after) {
		plan.Write[key] = after
	}
}

// SharedRules concatenates what every port contributes to one shared
// chain, in port-name order. Only contributing ports are sorted, so the
// cost is a pass over the ports plus the few that contribute.
func SharedRules(ports []Port, of func(*Port) []string) []string {
	type contribution struct {
		name  model.ServicePortName
		rules []string
	}
	var all []contribution
	for i := range ports {
		if rules := of(&ports[i]); len(rules) > 0 {
			all = append(all, contribution{ports[i].Name(), rules})
		}
	}
	slices.SortFunc(all, func(a, b contribution) int { return a.name.Compare(b.name) })
	var rules []string
	for _, x := range all {
		rules = append(rules, x.rules...)
	}
	return rules
}

// FilterRules are the port's rules in the filter table: traffic that has
// nowhere to go is refused here. notAdmitted is the mode's match for the
// sources a restricted LB IP must not let in, "" if every packet still
// addressed to the LB IP here is one (the iptables mode has DNATed the
// admitted ones already).
func (r *Rules) FilterRules(p *Port, notAdmitted string) []string {
	if !p.Present() {
		return nil
	}
	var rules []string
	label := PortLabel(p.Name())
	if p.ClusterIP.IsValid() && len(p.Internal) == 0 {
		target, why := r.Reject(p), " has no endpoints"
		if p.SP.InternalPolicyLocal && p.SP.HasEndpoints {
			// As kube-proxy: endpoints exist, just not here.
			target, why = "-j DROP", " has no local endpoints"
		}
		rules = append(rules, "-d "+r.Host(p.ClusterIP)+" "+p.PortMatch()+"-m comment --comment "+QuoteComment(label+why)+" "+target)
	}
	if !p.ExternallyAccessible() {
		return rules
	}
	switch {
	case !p.HasExternalEndpoints():
		rules = r.refuseExternal(rules, p, label+" has no endpoints", r.Reject(p))
	case p.SP.ExternalPolicyLocal && len(p.Local) == 0:
		// Pods and the node were sent to remote endpoints already; what
		// is left came from outside and must not be answered by a reset,
		// so the client's load balancer tries another node.
		rules = r.refuseExternal(rules, p, label+" has no local endpoints", "-j DROP")
	case p.Restricted:
		for _, lb := range p.LBIPs {
			rules = append(rules, "-d "+r.Host(lb)+" "+p.PortMatch()+notAdmitted+"-m comment --comment "+
				QuoteComment(label+" traffic not allowed by loadBalancerSourceRanges")+" -j DROP")
		}
	}
	return rules
}

// refuseExternal adds rules refusing traffic to every external address and
// node port of the port.
func (r *Rules) refuseExternal(rules []string, p *Port, why, target string) []string {
	tail := p.PortMatch() + "-m comment --comment " + QuoteComment(why) + " " + target
	for _, a := range p.External {
		rules = append(rules, "-d "+r.Host(a)+" "+tail)
	}
	for _, a := range p.LBIPs {
		rules = append(rules, "-d "+r.Host(a)+" "+tail)
	}
	if p.NodePort != 0 {
		// As iptables-save prints it: the protocol before any match.
		np := "-p " + p.Proto() + " -m addrtype --dst-type LOCAL -m " + p.Proto() + " --dport " + strconv.Itoa(int(p.NodePort)) +
			" -m comment --comment " + QuoteComment(why) + " " + target
		for _, dst := range r.NodePortDsts {
			rules = append(rules, dst+np)
		}
	}
	return rules
}

// HairpinRules mark for masquerade a pod that a service sent back to
// itself. One rule per node-local endpoint address replaces kube-proxy's
// rule per endpoint: only a local endpoint can hairpin on this node, and
// source equal to destination after DNAT is exactly the hairpin case.
func (r *Rules) HairpinRules(addrs []netip.Addr) []string {
	rules := make([]string, len(addrs))
	for i, a := range addrs {
		rules[i] = "-s " + r.Host(a) + " -d " + r.Host(a) + " -j " + ChainMarkMasq
	}
	return rules
}

// LocalAddrs lists the node-local endpoint addresses of endpoint lists.
func LocalAddrs(lists ...[]model.Endpoint) []netip.Addr {
	var addrs []netip.Addr
	for _, eps := range lists {
		for _, ep := range eps {
			if ep.Local {
				addrs = append(addrs, ep.Addr.Addr())
			}
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

// healthCheckRules open the health check node ports, which load balancers
// probe from outside, whatever the node's own INPUT policy says.
func healthCheckRules(ports []Port) []string {
	var rules []string
	for i := range ports {
		if port := ports[i].HealthCheckPort(); port != 0 {
			name := ports[i].Name()
			label := name.Namespace + "/" + name.Name + " health check node port"
			rules = append(rules, ProtoMatch("tcp", port)+"-m comment --comment "+QuoteComment(label)+" -j ACCEPT")
		}
	}
	// Every port of a service shares its health check port: one rule each.
	slices.Sort(rules)
	return slices.Compact(rules)
}

// postroutingRules masquerade what was marked, and clear the mark so that
// it means nothing to whatever handles the packet next.
func (r *Rules) postroutingRules(balanced string) []string {
	return []string{
		balanced + " -j " + ChainHairpin,
		"-m mark ! --mark " + r.Mark + "/" + r.Mark + " -j RETURN",
		"-j MARK --xor-mark " + r.Mark,
		"-m comment --comment " + QuoteComment("svcproxy service traffic requiring SNAT") + " -j MASQUERADE --random-fully",
	}
}

func (r *Rules) markMasqRules() []string {
	return []string{"-j MARK --or-mark " + r.Mark}
}

// forwardRules let service traffic through a FORWARD policy of DROP, as
// kube-proxy's KUBE-FORWARD does.
func (r *Rules) forwardRules() []string {
	return []string{
		// A packet conntrack finds out of window is not un-DNATed; let
		// through, it reaches a pod that answers with a reset and kills
		// a healthy connection.
		"-m conntrack --ctstate INVALID -j DROP",
		"-m comment --comment " + QuoteComment("svcproxy forwarding rules") + " -m mark --mark " + r.Mark + "/" + r.Mark + " -j ACCEPT",
		"-m comment --comment " + QuoteComment("svcproxy forwarding conntrack rule") + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
	}
}

// JumpRule hooks one of svcproxy's chains into a built-in chain. The
// applier inserts it (at position 1) when it is missing; rules are given
// as arguments, unquoted, for go-iptables.
type JumpRule struct {
	Table Table
	Chain string // the built-in chain
	Rule  []string
}

// Text is the rule as iptables-save prints it.
func (j JumpRule) Text() string { return saveText(j.Rule) }

// saveText renders rule arguments the way iptables-save prints them:
// arguments with spaces in double quotes.
func saveText(rule []string) string {
	parts := make([]string, len(rule))
	for i, arg := range rule {
		if strings.ContainsAny(arg, " \t") {
			arg = `"` + arg + `"`
		}
		parts[i] = arg
	}
	return strings.Join(parts, " ")
}

// JumpRules are the fixed rules hooking svcproxy's chains into the built-in
// chains, the same for every view and for both modes, so a node switched
// from one mode to the other keeps them. No two of them depend on their
// order: the filter chains only ever match packets the nat table left
// un-DNATed, and only DNATed packets carry the masquerade mark FORWARD
// accepts.
func JumpRules() []JumpRule {
	services := []string{"-m", "comment", "--comment", "svcproxy service portals", "-j", ChainServices}
	firewall := []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "svcproxy service firewall", "-j", ChainFilter}
	return []JumpRule{
		{TableNAT, "PREROUTING", services},
		{TableNAT, "OUTPUT", services},
		{TableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "svcproxy postrouting rules", "-j", ChainPostrouting}},
		{TableFilter, "INPUT", firewall},
		{TableFilter, "INPUT", []string{"-m", "comment", "--comment", "svcproxy health check node ports", "-j", ChainHealthCheck}},
		{TableFilter, "FORWARD", firewall},
		{TableFilter, "FORWARD", []string{"-m", "comment", "--comment", "svcproxy forwarding rules", "-j", ChainForward}},
		{TableFilter, "OUTPUT", firewall},
	}
}

// TopChains are the chains that exist in every svcproxy ruleset, whatever
// its mode and services, plus a mode's own: the targets of the jump rules
// and the chains they lead to unconditionally. If one is missing,
// something flushed svcproxy's rules.
func TopChains(mode ...ChainKey) []ChainKey {
	keys := append([]ChainKey{
		NatKey(ChainServices), NatKey(ChainPostrouting), NatKey(ChainMarkMasq), NatKey(ChainHairpin),
		FilterKey(ChainFilter), FilterKey(ChainForward), FilterKey(ChainHealthCheck),
	}, mode...)
	slices.SortFunc(keys, compareChainKeys)
	return keys
}

// NatKey names a chain of the nat table.
func NatKey(name string) ChainKey { return ChainKey{Table: TableNAT, Name: name} }

// FilterKey names a chain of the filter table.
func FilterKey(name string) ChainKey { return ChainKey{Table: TableFilter, Name: name} }
