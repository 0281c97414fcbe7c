package ipvs

import (
	"net/netip"
	"strconv"

	"github.com/svcproxy/svcproxy/netfilter"
)

// servicesRules fill the nat SERVICES chain (see the top of compile.go):
// the masquerade marks, by set, then the Local policy's detours of pods
// and the node itself, by port.
func (c *compiler) servicesRules(ports []netfilter.Port) []string {
	var rules []string
	for _, r := range c.rules.MasqueradeRules() {
		rules = append(rules, "-m set --match-set "+c.sets.clusterIP+" dst,dst "+r)
	}
	rules = append(rules, "-m set --match-set "+c.sets.external+" dst,dst -j "+netfilter.ChainMarkMasq)
	for _, proto := range protocols() {
		rules = append(rules, c.nodePortMatch()+"-p "+proto.Lower()+" -m set --match-set "+
			c.sets.nodePort[proto]+" dst -j "+netfilter.ChainMarkMasq)
	}
	return append(rules, netfilter.SharedRules(ports, c.localPolicyRules)...)
}

// nodePortMatch matches the node addresses node ports answer on: those
// NODE-IPS records, not every local address (the service addresses on
// kube-ipvs0 are local too).
func (c *compiler) nodePortMatch() string { return "-m set --match-set " + c.sets.nodeIPs + " dst " }

// localPolicyRules are a port's rules in SERVICES under
// externalTrafficPolicy Local: a pod or the node reaching one of its
// external addresses is not subject to the policy, as if it had gone out
// to the load balancer and come back in; it is sent to the ClusterIP,
// whose virtual server balances over the cluster's endpoints. The node
// picks the external address as its source, which no endpoint could
// answer: it is masqueraded. A restricted LB IP sends on only the sources
// it admits. Outside traffic goes on to the external address's own
// virtual server, of local endpoints.
func (c *compiler) localPolicyRules(rp *netfilter.Port) []string {
	if !rp.Present() || !rp.SP.ExternalPolicyLocal || !rp.ExternalPath() || len(rp.Cluster) == 0 ||
		!rp.ClusterIP.IsValid() || len(rp.Internal) == 0 {
		return nil
	}
	label := netfilter.PortLabel(rp.Name())
	toClusterIP := " -m comment --comment " + netfilter.QuoteComment(label+" to the cluster IP") +
		" -j DNAT --to-destination " + netip.AddrPortFrom(rp.ClusterIP, rp.SP.Port).String()
	masq := " -m comment --comment " + netfilter.QuoteComment("masquerade LOCAL traffic for "+label+" external destinations") +
		" -j " + netfilter.ChainMarkMasq
	var dsts []string
	for _, a := range rp.External {
		dsts = append(dsts, "-d "+c.rules.Host(a)+" "+rp.PortMatch())
	}
	for _, a := range rp.LBIPs {
		dst := "-d " + c.rules.Host(a) + " " + rp.PortMatch()
		if rp.Restricted {
			dst += "-m set --match-set " + c.sets.lbSources + " dst,dst,src "
		}
		dsts = append(dsts, dst)
	}
	if rp.NodePort != 0 {
		dsts = append(dsts, c.nodePortMatch()+netfilter.ProtoMatch(rp.Proto(), rp.NodePort))
	}
	var rules []string
	for _, dst := range dsts {
		if c.rules.PodTraffic != "" {
			rules = append(rules, c.rules.PodTraffic+dst+toClusterIP[1:])
		}
		local := "-m addrtype --src-type LOCAL " + dst
		rules = append(rules, local+masq[1:], local+toClusterIP[1:])
	}
	// Written as iptables-save prints them (see netfilter.SaveOrder).
	for i, r := range rules {
		rules[i] = netfilter.SaveOrder(r)
	}
	return rules
}

// nodeNotAdmitted drops what the node itself sends to a restricted LB IP
// whose source ranges do not hold the node's IP, as the iptables mode
// does. IPVS balances such a connection at LOCAL_OUT, before the filter
// table sees it, so FILTER (from OUTPUT) meets it already sent to an
// endpoint: it is told by its virtual address (xt_ipvs) and by its source,
// the LB IP itself (bound to kube-ipvs0), which no other sender has.
func (c *compiler) nodeNotAdmitted(rp *netfilter.Port) []string {
	if !rp.Present() || !rp.Restricted || !rp.ExternalPath() || c.admitsNode(rp) {
		return nil
	}
	comment := " -m comment --comment " + netfilter.QuoteComment(netfilter.PortLabel(rp.Name())+" traffic from the node not allowed by loadBalancerSourceRanges")
	var rules []string
	for _, lb := range rp.LBIPs {
		// As iptables-save prints it, so the rules read back as written.
		rules = append(rules, "-s "+c.rules.Host(lb)+" -m ipvs --vproto "+strconv.Itoa(rp.SP.Protocol().Number())+
			" --vaddr "+lb.String()+" --vport "+strconv.Itoa(int(rp.SP.Port))+comment+" -j DROP")
	}
	return rules
}

// serviceIPFilter ends FILTER: a new connection to a service address
// that no service port answers on is refused, so no host port can be
// reached on it (the address is local to the node, bound to kube-ipvs0).
func (c *compiler) serviceIPFilter() []string {
	match := "-m set --match-set " + c.sets.serviceIPs + " dst" +
		" -m set ! --match-set " + c.sets.clusterIP + " dst,dst" +
		" -m set ! --match-set " + c.sets.external + " dst,dst" +
		" -m set ! --match-set " + c.sets.externalLocal + " dst,dst" +
		" -m comment --comment " + netfilter.QuoteComment("svcproxy service addresses answer only on service ports")
	return []string{
		"-p tcp " + match + " -j REJECT --reject-with tcp-reset",
		match + " -j REJECT",
	}
}
