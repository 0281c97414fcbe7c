package iptables

import (
	"math"
	"net/netip"
	"slices"
	"strconv"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// chainOf names one of the port's chains: a prefix and a hash of the
// port's name shared by all of them, so a listing shows which chains
// belong together, and the names survive restarts.
func chainOf(rp *netfilter.Port, prefix string) string { return prefix + rp.NameHash() }

// Which of the port's chains exist. Each exists only if some rule jumps to
// it, so a property test can check that no chain is left unreferenced.
func usesSVC(rp *netfilter.Port) bool {
	return len(rp.Cluster) > 0 && ((!rp.SP.InternalPolicyLocal && rp.ClusterIP.IsValid()) || rp.ExternalPath())
}
func usesSVI(rp *netfilter.Port) bool {
	return rp.SP.InternalPolicyLocal && rp.ClusterIP.IsValid() && len(rp.Internal) > 0
}
func usesEXT(rp *netfilter.Port) bool { return rp.SP.ExternalPolicyLocal && rp.ExternalPath() }
func usesSVL(rp *netfilter.Port) bool { return usesEXT(rp) && len(rp.Local) > 0 }
func usesFW(rp *netfilter.Port) bool {
	return rp.Restricted && len(rp.LBIPs) > 0 && rp.ExternalPath()
}

// internalChain is where ClusterIP traffic is balanced.
func internalChain(rp *netfilter.Port) string {
	if rp.SP.InternalPolicyLocal {
		return chainOf(rp, prefixSVI)
	}
	return chainOf(rp, prefixSVC)
}

// chainRules is one chain's complete rule list.
type chainRules struct {
	name  string
	rules []string
}

// portChains renders the chains owned by one port, in a fixed order.
func (c *compiler) portChains(rp *netfilter.Port) []chainRules {
	if !rp.Present() {
		return nil
	}
	var chains []chainRules
	if usesSVC(rp) {
		chains = append(chains, chainRules{chainOf(rp, prefixSVC), c.balance(rp, rp.Cluster, c.MasqueradeRules())})
	}
	if usesSVI(rp) {
		chains = append(chains, chainRules{chainOf(rp, prefixSVI), c.balance(rp, rp.Internal, c.MasqueradeRules())})
	}
	if usesSVL(rp) {
		// No masquerade: externalTrafficPolicy Local exists to keep the
		// client's source address.
		chains = append(chains, chainRules{chainOf(rp, prefixSVL), c.balance(rp, rp.Local, nil)})
	}
	if usesEXT(rp) {
		chains = append(chains, chainRules{chainOf(rp, prefixEXT), c.localPolicyRules(rp)})
	}
	if usesFW(rp) {
		chains = append(chains, chainRules{chainOf(rp, prefixFW), c.firewallRules(rp)})
	}
	return chains
}

// balance spreads new connections over endpoints without a chain per
// endpoint (the chain count is what makes iptables-nft-restore slow): each
// rule DNATs directly. Endpoint i of n is taken with probability 1/(n-i),
// which makes the choice uniform; the last one takes what is left. With
// ClientIP affinity, a client seen recently goes back to its endpoint, and
// every DNAT records the client in that endpoint's list.
func (c *compiler) balance(rp *netfilter.Port, eps []model.Endpoint, first []string) []string {
	rules := slices.Grow(slices.Clone(first), 2*len(eps))
	proto := "-p " + rp.Proto() + " "
	affinity := rp.SP.AffinitySeconds > 0
	var lists []string
	if affinity {
		lists = make([]string, len(eps))
		seconds := strconv.Itoa(int(rp.SP.AffinitySeconds))
		for i, ep := range eps {
			lists[i] = affinityList(rp.Name(), ep.Addr)
			rules = append(rules, proto+"-m recent --update --seconds "+seconds+" --reap --name "+lists[i]+
				" --mask "+c.HostMask()+" --rsource -j DNAT --to-destination "+ep.Addr.String())
		}
	}
	// Each rule is one concatenation, the address appended to a reused
	// buffer: 100,000 rules at 10,000 services made four strings each.
	var addr []byte
	for i, ep := range eps {
		pick, remember := "", ""
		if n := len(eps) - i; n > 1 {
			pick = statisticMatch(n)
		}
		if affinity {
			remember = "-m recent --set --name " + lists[i] + " --mask " + c.HostMask() + " --rsource "
		}
		addr = ep.Addr.AppendTo(addr[:0])
		rules = append(rules, proto+pick+remember+"-j DNAT --to-destination "+string(addr))
	}
	return rules
}

// statisticMatch is the match that takes 1 in n of the connections that
// reach a rule, from a table for the usual endpoint counts.
func statisticMatch(n int) string {
	if n < len(statisticMatches) {
		return statisticMatches[n]
	}
	return "-m statistic --mode random --probability " + probability(n) + " "
}

var statisticMatches = func() []string {
	m := make([]string, 256)
	for n := 2; n < len(m); n++ {
		m[n] = "-m statistic --mode random --probability " + probability(n) + " "
	}
	return m
}()

// probability is 1/n as xt_statistic holds it (a fraction of 2^31) and
// iptables-save prints it: every rule is written as iptables-save shows
// it, so that the kernel's rules compare with the compiler's as text.
func probability(n int) string {
	const scale = 1 << 31
	return strconv.FormatFloat(math.Round(scale/float64(n))/scale, 'f', 11, 64)
}

// externalTargets are the targets external traffic is sent to once it is
// admitted. Under Cluster policy it is marked for masquerade (it may be
// balanced to another node, whose reply must come back here) and balanced
// straight away: two rules instead of a chain, because every chain slows
// the restore down. Under Local policy it goes to the EXT chain.
func (c *compiler) externalTargets(rp *netfilter.Port) []string {
	if rp.SP.ExternalPolicyLocal {
		return []string{"-j " + chainOf(rp, prefixEXT)}
	}
	return []string{"-j " + netfilter.ChainMarkMasq, "-j " + chainOf(rp, prefixSVC)}
}

// localPolicyRules fill the EXT chain of an externalTrafficPolicy Local port.
func (c *compiler) localPolicyRules(rp *netfilter.Port) []string {
	label, svc := netfilter.PortLabel(rp.Name()), chainOf(rp, prefixSVC)
	var rules []string
	if len(rp.Cluster) > 0 && c.PodTraffic != "" {
		// A pod reaching an external address is not subject to the policy,
		// as if it had gone out to the load balancer and come back in.
		rules = append(rules, c.PodTraffic+"-m comment --comment "+
			netfilter.QuoteComment("pod traffic for "+label+" external destinations")+" -j "+svc)
	}
	// The node itself picks the external address as its source, which no
	// endpoint could answer: masquerade it.
	rules = append(rules, "-m addrtype --src-type LOCAL -m comment --comment "+
		netfilter.QuoteComment("masquerade LOCAL traffic for "+label+" external destinations")+" -j "+netfilter.ChainMarkMasq)
	if len(rp.Cluster) > 0 {
		rules = append(rules, "-m addrtype --src-type LOCAL -m comment --comment "+
			netfilter.QuoteComment("route LOCAL traffic for "+label+" external destinations")+" -j "+svc)
	}
	if len(rp.Local) > 0 {
		rules = append(rules, "-j "+chainOf(rp, prefixSVL))
	}
	// Anything else falls through un-DNATed and the filter table drops it.
	return rules
}

// firewallRules fill the FW chain: sources in loadBalancerSourceRanges go
// on; the rest fall through un-DNATed, still addressed to the LB IP, and the
// filter table drops them. No mark is needed, and the filter rule cannot
// catch anything that was DNATed.
func (c *compiler) firewallRules(rp *netfilter.Port) []string {
	targets := c.externalTargets(rp)
	var rules []string
	allowNode := false
	for _, r := range rp.SourceRanges {
		for _, t := range targets {
			rules = append(rules, "-s "+r.Masked().String()+" "+t)
		}
		allowNode = allowNode || r.Contains(c.NodeIP)
	}
	if allowNode {
		// A node that holds the LB IP as a local address sends to it from
		// that very address; as kube-proxy does, such traffic is let in
		// when the ranges admit the node's IP.
		for _, lb := range rp.LBIPs {
			for _, t := range targets {
				rules = append(rules, "-s "+c.Host(lb)+" "+t)
			}
		}
	}
	return rules
}

// addrKind is which of a port's addresses a dispatch entry is for.
type addrKind uint8

const (
	kindClusterIP addrKind = iota
	kindExternalIP
	kindLoadBalancerIP
)

// dispatchRules renders every rule the port adds to the destination
// buckets, in a fixed order: what a partial sync compares.
func (c *compiler) dispatchRules(rp *netfilter.Port) []string {
	if !rp.Present() {
		return nil
	}
	var rules []string
	eachDispatch(rp, func(kind addrKind, dst netip.Addr) {
		rules = append(rules, c.dispatchEntryRules(rp, kind, dst)...)
	})
	return rules
}

// eachDispatch calls fn for every address of the port that is dispatched in
// the nat table; an address with nowhere to go is left to the filter table.
func eachDispatch(rp *netfilter.Port, fn func(addrKind, netip.Addr)) {
	if rp.ClusterIP.IsValid() && len(rp.Internal) > 0 {
		fn(kindClusterIP, rp.ClusterIP)
	}
	if !rp.ExternalPath() {
		return
	}
	for _, a := range rp.External {
		fn(kindExternalIP, a)
	}
	for _, a := range rp.LBIPs {
		fn(kindLoadBalancerIP, a)
	}
}

func (c *compiler) dispatchEntryRules(rp *netfilter.Port, kind addrKind, dst netip.Addr) []string {
	match := "-d " + c.Host(dst) + " " + rp.PortMatch() + "-m comment --comment "
	label := netfilter.PortLabel(rp.Name())
	switch kind {
	case kindClusterIP:
		return []string{match + netfilter.QuoteComment(label+" cluster IP") + " -j " + internalChain(rp)}
	case kindLoadBalancerIP:
		match += netfilter.QuoteComment(label+" loadbalancer IP") + " "
		if rp.Restricted {
			return []string{match + "-j " + chainOf(rp, prefixFW)}
		}
	default:
		match += netfilter.QuoteComment(label+" external IP") + " "
	}
	return prefixAll(match, c.externalTargets(rp))
}

func prefixAll(prefix string, rules []string) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = prefix + r
	}
	return out
}

// nodePortRules are the port's rules in the NODEPORTS chain.
func (c *compiler) nodePortRules(rp *netfilter.Port) []string {
	if !rp.Present() || rp.NodePort == 0 || !rp.ExternalPath() {
		return nil
	}
	match := netfilter.ProtoMatch(rp.Proto(), rp.NodePort) + "-m comment --comment " + netfilter.QuoteComment(netfilter.PortLabel(rp.Name())) + " "
	return prefixAll(match, c.externalTargets(rp))
}

// hairpinAddrs are the port's node-local endpoint addresses some chain
// balances to: a pod balanced to itself must be masqueraded, or its reply
// would skip un-DNAT.
func hairpinAddrs(rp *netfilter.Port) []netip.Addr {
	var used [][]model.Endpoint
	if usesSVC(rp) {
		used = append(used, rp.Cluster)
	}
	if usesSVI(rp) {
		used = append(used, rp.Internal)
	}
	if usesSVL(rp) {
		used = append(used, rp.Local)
	}
	return netfilter.LocalAddrs(used...)
}
