package iptables

import (
	"net/netip"
	"slices"

	"github.com/svcproxy/svcproxy/model"
)

// sharedRules concatenates what every port contributes to one shared
// chain, in port-name order. Only contributing ports are sorted, so the
// cost is a pass over the ports plus the few that contribute.
func sharedRules(ports []resolvedPort, of func(*resolvedPort) []string) []string {
	type contribution struct {
		name  model.ServicePortName
		rules []string
	}
	var all []contribution
	for i := range ports {
		if rules := of(&ports[i]); len(rules) > 0 {
			all = append(all, contribution{ports[i].name(), rules})
		}
	}
	slices.SortFunc(all, func(a, b contribution) int { return a.name.Compare(b.name) })
	var rules []string
	for _, x := range all {
		rules = append(rules, x.rules...)
	}
	return rules
}

// hairpinRules mark for masquerade a pod that a service sent back to
// itself. One rule per node-local endpoint address replaces kube-proxy's
// rule per endpoint chain: only a local endpoint can hairpin on this node,
// and source equal to destination after DNAT is exactly the hairpin case.
func (c *compiler) hairpinRules(ports []resolvedPort) []string {
	var addrs []netip.Addr
	for i := range ports {
		addrs = append(addrs, ports[i].hairpinAddrs()...)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	rules := make([]string, len(addrs))
	for i, a := range addrs {
		rules[i] = "-s " + c.host(a) + " -d " + c.host(a) + " -j " + chainMarkMasq
	}
	return rules
}

// healthCheckRules open the health check node ports, which load balancers
// probe from outside, whatever the node's own INPUT policy says.
func healthCheckRules(ports []resolvedPort) []string {
	var rules []string
	for i := range ports {
		if port := ports[i].healthCheckPort(); port != 0 {
			name := ports[i].name()
			label := name.Namespace + "/" + name.Name + " health check node port"
			rules = append(rules, protoMatch("tcp", port)+"-m comment --comment "+quoteComment(label)+" -j ACCEPT")
		}
	}
	// Every port of a service shares its health check port: one rule each.
	slices.Sort(rules)
	return slices.Compact(rules)
}

// postroutingRules masquerade what was marked, and clear the mark so that
// it means nothing to whatever handles the packet next.
func (c *compiler) postroutingRules() []string {
	return []string{
		"-m conntrack --ctstate DNAT -j " + chainHairpin,
		"-m mark ! --mark " + c.mark + "/" + c.mark + " -j RETURN",
		"-j MARK --xor-mark " + c.mark,
		"-m comment --comment " + quoteComment("svcproxy service traffic requiring SNAT") + " -j MASQUERADE --random-fully",
	}
}

func (c *compiler) markMasqRules() []string {
	return []string{"-j MARK --or-mark " + c.mark}
}

// forwardRules let service traffic through a FORWARD policy of DROP, as
// kube-proxy's KUBE-FORWARD does.
func (c *compiler) forwardRules() []string {
	return []string{
		// A packet conntrack finds out of window is not un-DNATed; let
		// through, it reaches a pod that answers with a reset and kills
		// a healthy connection.
		"-m conntrack --ctstate INVALID -j DROP",
		"-m comment --comment " + quoteComment("svcproxy forwarding rules") + " -m mark --mark " + c.mark + "/" + c.mark + " -j ACCEPT",
		"-m comment --comment " + quoteComment("svcproxy forwarding conntrack rule") + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
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

// JumpRules are the fixed rules hooking svcproxy's chains into the built-in
// chains, the same for every view. No two of them depend on their order:
// the filter chains only ever match packets the nat table left un-DNATed,
// and only DNATed packets carry the masquerade mark FORWARD accepts.
// cfg and family do not change them today; they are parameters so that a
// configuration that needs other hooks does not change the signature.
func JumpRules(cfg Config, family model.Family) []JumpRule {
	services := []string{"-m", "comment", "--comment", "svcproxy service portals", "-j", chainServices}
	firewall := []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "svcproxy service firewall", "-j", chainFilter}
	return []JumpRule{
		{TableNAT, "PREROUTING", services},
		{TableNAT, "OUTPUT", services},
		{TableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "svcproxy postrouting rules", "-j", chainPostrouting}},
		{TableFilter, "INPUT", firewall},
		{TableFilter, "INPUT", []string{"-m", "comment", "--comment", "svcproxy health check node ports", "-j", chainHealthCheck}},
		{TableFilter, "FORWARD", firewall},
		{TableFilter, "FORWARD", []string{"-m", "comment", "--comment", "svcproxy forwarding rules", "-j", chainForward}},
		{TableFilter, "OUTPUT", firewall},
	}
}

// TopChains are the chains that exist in every svcproxy ruleset, whatever
// its services: the targets of the jump rules and the chains they lead to
// unconditionally. If one is missing, something flushed svcproxy's rules.
func TopChains() []ChainKey {
	keys := []ChainKey{
		natKey(chainServices), natKey(chainNodePorts), natKey(chainPostrouting),
		natKey(chainMarkMasq), natKey(chainHairpin),
		filterKey(chainFilter), filterKey(chainForward), filterKey(chainHealthCheck),
	}
	slices.SortFunc(keys, compareChainKeys)
	return keys
}
