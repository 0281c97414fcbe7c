package iptables

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/svcproxy/svcproxy/model"
)

// resolvedPort is a service port reduced to what this family's rules use.
// Addresses of the other family and endpoints no rule could reach are
// dropped once here, so rendering never checks again. The zero value is an
// absent port: it has no rules at all.
type resolvedPort struct {
	sp        *model.ServicePort
	clusterIP netip.Addr // invalid: none
	nodePort  uint16     // 0: none, or node ports are off in this family
	external  []netip.Addr
	lbIPs     []netip.Addr
	// restricted: loadBalancerSourceRanges are set, so the LB IPs admit only
	// sourceRanges (which may be empty if none was usable: then nobody).
	restricted   bool
	sourceRanges []netip.Prefix
	internal     []model.Endpoint // for ClusterIP traffic
	cluster      []model.Endpoint // anywhere in the cluster (cluster traffic policy)
	local        []model.Endpoint // on this node, for externalTrafficPolicy Local
	hash         string           // of the name, for chain names; set on first use
}

// chain names one of the port's chains: a prefix and a hash of the port's
// name shared by all of them, so a listing shows which chains belong
// together, and the names survive restarts.
func (rp *resolvedPort) chain(prefix string) string {
	if rp.hash == "" {
		rp.hash = nameHash(rp.name().String())
	}
	return prefix + rp.hash
}

// resolve reduces a port; nil, or a port no rule can express (port 0, an
// unknown protocol), resolves to the absent port.
func (c *compiler) resolve(sp *model.ServicePort) resolvedPort {
	if sp == nil || sp.Port == 0 || sp.Protocol() < model.TCP || sp.Protocol() > model.SCTP {
		return resolvedPort{}
	}
	rp := resolvedPort{
		sp:           sp,
		external:     ofFamily(sp.ExternalIPs, c.usableAddr),
		lbIPs:        ofFamily(sp.LoadBalancerIPs, c.usableAddr),
		restricted:   len(sp.SourceRanges) > 0,
		sourceRanges: ofFamily(sp.SourceRanges, c.usablePrefix),
		internal:     ofFamily(sp.ClusterEndpoints, c.usableEndpoint),
	}
	// Without internalTrafficPolicy Local both lists are one.
	rp.cluster = rp.internal
	if sp.InternalPolicyLocal {
		rp.cluster = ofFamily(sp.ClusterPolicyEndpoints(), c.usableEndpoint)
	}
	if c.usableAddr(sp.ClusterIP) {
		rp.clusterIP = sp.ClusterIP
	}
	if len(c.nodePortDsts) > 0 {
		rp.nodePort = sp.NodePort
	}
	if sp.ExternalPolicyLocal {
		rp.local = ofFamily(sp.LocalEndpoints, c.usableEndpoint)
	}
	return rp
}

func (c *compiler) usableAddr(a netip.Addr) bool {
	return a.IsValid() && a.Zone() == "" && model.FamilyOf(a) == c.family
}

func (c *compiler) usablePrefix(p netip.Prefix) bool {
	return p.IsValid() && model.FamilyOf(p.Addr()) == c.family
}

func (c *compiler) usableEndpoint(ep model.Endpoint) bool {
	return c.usableAddr(ep.Addr.Addr()) && ep.Addr.Port() != 0
}

// ofFamily returns the members of all that keep accepts, without copying
// in the usual case where it accepts them all.
func ofFamily[T any](all []T, keep func(T) bool) []T {
	i := slices.IndexFunc(all, func(x T) bool { return !keep(x) })
	if i < 0 {
		return all
	}
	out := slices.Clone(all[:i])
	for _, x := range all[i+1:] {
		if keep(x) {
			out = append(out, x)
		}
	}
	return out
}

func (rp *resolvedPort) present() bool { return rp.sp != nil }

func (rp *resolvedPort) externallyAccessible() bool {
	return rp.nodePort != 0 || len(rp.external) > 0 || len(rp.lbIPs) > 0
}

// externalEndpoints reports whether external traffic has endpoints to go
// to: under externalTrafficPolicy Local, pods and the node itself still
// reach the cluster-wide endpoints even when no endpoint is local.
func (rp *resolvedPort) externalEndpoints() bool {
	return len(rp.cluster) > 0 || (rp.sp.ExternalPolicyLocal && len(rp.local) > 0)
}

// externalPath reports whether some external traffic gets in and can be
// DNATed. LB IPs whose source ranges admit nobody are no way in.
func (rp *resolvedPort) externalPath() bool {
	in := rp.nodePort != 0 || len(rp.external) > 0 || (len(rp.lbIPs) > 0 && (!rp.restricted || len(rp.sourceRanges) > 0))
	return in && rp.externalEndpoints()
}

// Which of the port's chains exist. Each exists only if some rule jumps to
// it, so a property test can check that no chain is left unreferenced.
func (rp *resolvedPort) usesSVC() bool {
	return len(rp.cluster) > 0 && ((!rp.sp.InternalPolicyLocal && rp.clusterIP.IsValid()) || rp.externalPath())
}
func (rp *resolvedPort) usesSVI() bool {
	return rp.sp.InternalPolicyLocal && rp.clusterIP.IsValid() && len(rp.internal) > 0
}
func (rp *resolvedPort) usesEXT() bool { return rp.sp.ExternalPolicyLocal && rp.externalPath() }
func (rp *resolvedPort) usesSVL() bool { return rp.usesEXT() && len(rp.local) > 0 }
func (rp *resolvedPort) usesFW() bool {
	return rp.restricted && len(rp.lbIPs) > 0 && rp.externalPath()
}

// internalChain is where ClusterIP traffic is balanced.
func (rp *resolvedPort) internalChain() string {
	if rp.sp.InternalPolicyLocal {
		return rp.chain(prefixSVI)
	}
	return rp.chain(prefixSVC)
}

func (rp *resolvedPort) name() model.ServicePortName { return rp.sp.Name }
func (rp *resolvedPort) proto() string               { return rp.sp.Protocol().Lower() }

// portMatch matches the port's protocol and service port.
func (rp *resolvedPort) portMatch() string { return protoMatch(rp.proto(), rp.sp.Port) }

func protoMatch(proto string, port uint16) string {
	return "-p " + proto + " -m " + proto + " --dport " + strconv.Itoa(int(port)) + " "
}

func (c *compiler) host(a netip.Addr) string {
	return a.String() + "/" + strconv.Itoa(c.hostBits)
}

// chainRules is one chain's complete rule list.
type chainRules struct {
	name  string
	rules []string
}

// portChains renders the chains owned by one port, in a fixed order.
func (c *compiler) portChains(rp *resolvedPort) []chainRules {
	if !rp.present() {
		return nil
	}
	var chains []chainRules
	if rp.usesSVC() {
		chains = append(chains, chainRules{rp.chain(prefixSVC), c.balance(rp, rp.cluster, c.masqueradeRules())})
	}
	if rp.usesSVI() {
		chains = append(chains, chainRules{rp.chain(prefixSVI), c.balance(rp, rp.internal, c.masqueradeRules())})
	}
	if rp.usesSVL() {
		// No masquerade: externalTrafficPolicy Local exists to keep the
		// client's source address.
		chains = append(chains, chainRules{rp.chain(prefixSVL), c.balance(rp, rp.local, nil)})
	}
	if rp.usesEXT() {
		chains = append(chains, chainRules{rp.chain(prefixEXT), c.localPolicyRules(rp)})
	}
	if rp.usesFW() {
		chains = append(chains, chainRules{rp.chain(prefixFW), c.firewallRules(rp)})
	}
	return chains
}

// masqueradeRules open a chain that ClusterIP traffic reaches. Traffic
// from outside the pod range (a node, or a client routed to the service
// range) is masqueraded so the reply comes back through this node to be
// un-DNATed. External traffic reaching the same chain is either already
// marked or comes from a pod, so the rule needs no destination match.
func (c *compiler) masqueradeRules() []string {
	switch {
	case c.masqueradeAll:
		return []string{"-j " + chainMarkMasq}
	case c.clusterCIDR.IsValid():
		return []string{"! -s " + c.clusterCIDR.String() + " -j " + chainMarkMasq}
	}
	return nil
}

// balance spreads new connections over endpoints without a chain per
// endpoint (the chain count is what makes iptables-nft-restore slow): each
// rule DNATs directly. Endpoint i of n is taken with probability 1/(n-i),
// which makes the choice uniform; the last one takes what is left. With
// ClientIP affinity, a client seen recently goes back to its endpoint, and
// every DNAT records the client in that endpoint's list.
func (c *compiler) balance(rp *resolvedPort, eps []model.Endpoint, first []string) []string {
	rules := slices.Grow(slices.Clone(first), 2*len(eps))
	proto := "-p " + rp.proto() + " "
	affinity := rp.sp.AffinitySeconds > 0
	var lists []string
	if affinity {
		lists = make([]string, len(eps))
		seconds := strconv.Itoa(int(rp.sp.AffinitySeconds))
		for i, ep := range eps {
			lists[i] = affinityList(rp.name(), ep.Addr)
			rules = append(rules, proto+"-m recent --name "+lists[i]+" --update --seconds "+seconds+
				" --reap --mask "+c.hostMask()+" --rsource -j DNAT --to-destination "+ep.Addr.String())
		}
	}
	for i, ep := range eps {
		rule := proto
		if n := len(eps) - i; n > 1 {
			rule += "-m statistic --mode random --probability " + strconv.FormatFloat(1/float64(n), 'f', 10, 64) + " "
		}
		if affinity {
			rule += "-m recent --name " + lists[i] + " --set --mask " + c.hostMask() + " --rsource "
		}
		rules = append(rules, rule+"-j DNAT --to-destination "+ep.Addr.String())
	}
	return rules
}

func (c *compiler) hostMask() string {
	if c.family == model.IPv6 {
		return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
	}
	return "255.255.255.255"
}

// externalTargets are the targets external traffic is sent to once it is
// admitted. Under Cluster policy it is marked for masquerade (it may be
// balanced to another node, whose reply must come back here) and balanced
// straight away: two rules instead of a chain, because every chain slows
// the restore down. Under Local policy it goes to the EXT chain.
func (c *compiler) externalTargets(rp *resolvedPort) []string {
	if rp.sp.ExternalPolicyLocal {
		return []string{"-j " + rp.chain(prefixEXT)}
	}
	return []string{"-j " + chainMarkMasq, "-j " + rp.chain(prefixSVC)}
}

// localPolicyRules fill the EXT chain of an externalTrafficPolicy Local port.
func (c *compiler) localPolicyRules(rp *resolvedPort) []string {
	label, svc := portLabel(rp.name()), rp.chain(prefixSVC)
	var rules []string
	if len(rp.cluster) > 0 && c.clusterCIDR.IsValid() {
		// A pod reaching an external address is not subject to the policy,
		// as if it had gone out to the load balancer and come back in.
		rules = append(rules, "-s "+c.clusterCIDR.String()+" -m comment --comment "+
			quoteComment("pod traffic for "+label+" external destinations")+" -j "+svc)
	}
	// The node itself picks the external address as its source, which no
	// endpoint could answer: masquerade it.
	rules = append(rules, "-m addrtype --src-type LOCAL -m comment --comment "+
		quoteComment("masquerade LOCAL traffic for "+label+" external destinations")+" -j "+chainMarkMasq)
	if len(rp.cluster) > 0 {
		rules = append(rules, "-m addrtype --src-type LOCAL -m comment --comment "+
			quoteComment("route LOCAL traffic for "+label+" external destinations")+" -j "+svc)
	}
	if len(rp.local) > 0 {
		rules = append(rules, "-j "+rp.chain(prefixSVL))
	}
	// Anything else falls through un-DNATed and the filter table drops it.
	return rules
}

// firewallRules fill the FW chain: sources in loadBalancerSourceRanges go
// on; the rest fall through un-DNATed, still addressed to the LB IP, and the
// filter table drops them. No mark is needed, and the filter rule cannot
// catch anything that was DNATed.
func (c *compiler) firewallRules(rp *resolvedPort) []string {
	targets := c.externalTargets(rp)
	var rules []string
	allowNode := false
	for _, r := range rp.sourceRanges {
		for _, t := range targets {
			rules = append(rules, "-s "+r.Masked().String()+" "+t)
		}
		allowNode = allowNode || r.Contains(c.loopback)
	}
	if allowNode {
		// A node that holds the LB IP as a local address sends to it from
		// that very address; kube-proxy lets such traffic in when the
		// ranges admit the node's own loopback.
		for _, lb := range rp.lbIPs {
			for _, t := range targets {
				rules = append(rules, "-s "+c.host(lb)+" "+t)
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
func (c *compiler) dispatchRules(rp *resolvedPort) []string {
	if !rp.present() {
		return nil
	}
	var rules []string
	rp.eachDispatch(func(kind addrKind, dst netip.Addr) {
		rules = append(rules, c.dispatchEntryRules(rp, kind, dst)...)
	})
	return rules
}

// eachDispatch calls fn for every address of the port that is dispatched in
// the nat table; an address with nowhere to go is left to the filter table.
func (rp *resolvedPort) eachDispatch(fn func(addrKind, netip.Addr)) {
	if rp.clusterIP.IsValid() && len(rp.internal) > 0 {
		fn(kindClusterIP, rp.clusterIP)
	}
	if !rp.externalPath() {
		return
	}
	for _, a := range rp.external {
		fn(kindExternalIP, a)
	}
	for _, a := range rp.lbIPs {
		fn(kindLoadBalancerIP, a)
	}
}

func (c *compiler) dispatchEntryRules(rp *resolvedPort, kind addrKind, dst netip.Addr) []string {
	match := "-d " + c.host(dst) + " " + rp.portMatch() + "-m comment --comment "
	label := portLabel(rp.name())
	switch kind {
	case kindClusterIP:
		return []string{match + quoteComment(label+" cluster IP") + " -j " + rp.internalChain()}
	case kindLoadBalancerIP:
		match += quoteComment(label+" loadbalancer IP") + " "
		if rp.restricted {
			return []string{match + "-j " + rp.chain(prefixFW)}
		}
	default:
		match += quoteComment(label+" external IP") + " "
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
func (c *compiler) nodePortRules(rp *resolvedPort) []string {
	if !rp.present() || rp.nodePort == 0 || !rp.externalPath() {
		return nil
	}
	match := protoMatch(rp.proto(), rp.nodePort) + "-m comment --comment " + quoteComment(portLabel(rp.name())) + " "
	return prefixAll(match, c.externalTargets(rp))
}

// filterRules are the port's rules in the filter table: traffic the nat
// table left un-DNATed because it has nowhere to go is refused here.
func (c *compiler) filterRules(rp *resolvedPort) []string {
	if !rp.present() {
		return nil
	}
	var rules []string
	label := portLabel(rp.name())
	if rp.clusterIP.IsValid() && len(rp.internal) == 0 {
		target, why := c.reject(rp), " has no endpoints"
		if rp.sp.InternalPolicyLocal && rp.sp.HasEndpoints {
			// As kube-proxy: endpoints exist, just not here.
			target, why = "-j DROP", " has no local endpoints"
		}
		rules = append(rules, "-d "+c.host(rp.clusterIP)+" "+rp.portMatch()+"-m comment --comment "+quoteComment(label+why)+" "+target)
	}
	if !rp.externallyAccessible() {
		return rules
	}
	switch {
	case !rp.externalEndpoints():
		rules = c.refuseExternal(rules, rp, label+" has no endpoints", c.reject(rp))
	case rp.sp.ExternalPolicyLocal && len(rp.local) == 0:
		// Pods and the node were DNATed to remote endpoints already; what
		// is left came from outside and must not be answered by a reset,
		// so the client's load balancer tries another node.
		rules = c.refuseExternal(rules, rp, label+" has no local endpoints", "-j DROP")
	case rp.restricted:
		for _, lb := range rp.lbIPs {
			rules = append(rules, "-d "+c.host(lb)+" "+rp.portMatch()+"-m comment --comment "+
				quoteComment(label+" traffic not allowed by loadBalancerSourceRanges")+" -j DROP")
		}
	}
	return rules
}

// refuseExternal adds rules refusing traffic to every external address and
// node port of the port.
func (c *compiler) refuseExternal(rules []string, rp *resolvedPort, why, target string) []string {
	tail := rp.portMatch() + "-m comment --comment " + quoteComment(why) + " " + target
	for _, a := range rp.external {
		rules = append(rules, "-d "+c.host(a)+" "+tail)
	}
	for _, a := range rp.lbIPs {
		rules = append(rules, "-d "+c.host(a)+" "+tail)
	}
	if rp.nodePort != 0 {
		np := protoMatch(rp.proto(), rp.nodePort) + "-m comment --comment " + quoteComment(why) + " " + target
		for _, dst := range c.nodePortDsts {
			rules = append(rules, dst+"-m addrtype --dst-type LOCAL "+np)
		}
	}
	return rules
}

func (c *compiler) reject(rp *resolvedPort) string {
	if rp.sp.Protocol() == model.TCP {
		return "-j REJECT --reject-with tcp-reset"
	}
	return "-j REJECT --reject-with " + c.unreachable
}

// hairpinAddrs are the port's node-local endpoint addresses, sorted: a pod
// balanced to itself must be masqueraded, or its reply would skip un-DNAT.
func (rp *resolvedPort) hairpinAddrs() []netip.Addr {
	if !rp.present() {
		return nil
	}
	var addrs []netip.Addr
	add := func(used bool, eps []model.Endpoint) {
		for _, ep := range eps {
			if used && ep.Local {
				addrs = append(addrs, ep.Addr.Addr())
			}
		}
	}
	add(rp.usesSVC(), rp.cluster)
	add(rp.usesSVI(), rp.internal)
	add(rp.usesSVL(), rp.local)
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

func (rp *resolvedPort) healthCheckPort() uint16 {
	if !rp.present() {
		return 0
	}
	return rp.sp.HealthCheckNodePort
}
