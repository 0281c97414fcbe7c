package ipvs

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// setNames are the names of one family's sets. IPv6 sets carry "6-" so
// the two families' backends never touch each other's.
type setNames struct {
	clusterIP, external, externalLocal, lbSources, serviceIPs, nodeIPs string
	nodePort, nodePortLocal                                            map[model.Protocol]string
	family                                                             model.Family
	byName                                                             map[string]Set
}

// SetPrefix starts the name of every set svcproxy owns.
const SetPrefix = netfilter.ChainPrefix

func newSetNames(family model.Family) setNames {
	p := SetPrefix
	if family == model.IPv6 {
		p += "6-"
	}
	n := setNames{
		clusterIP:     p + "CLUSTER-IP",
		external:      p + "EXTERNAL",
		externalLocal: p + "EXTERNAL-LOCAL",
		lbSources:     p + "LB-SOURCES",
		serviceIPs:    p + "SERVICE-IPS",
		nodeIPs:       p + "NODE-IPS",
		nodePort:      map[model.Protocol]string{},
		nodePortLocal: map[model.Protocol]string{},
		family:        family,
	}
	for _, proto := range protocols() {
		n.nodePort[proto] = p + "NODE-PORT-" + proto.String()
		n.nodePortLocal[proto] = p + "NODE-PORT-LOCAL-" + proto.String()
	}
	n.byName = map[string]Set{}
	for _, s := range n.all() {
		n.byName[s.Name] = s
	}
	return n
}

func protocols() []model.Protocol { return []model.Protocol{model.TCP, model.UDP, model.SCTP} }

// all lists every set of the family, sorted by name.
func (n setNames) all() []Set {
	sets := []Set{
		{n.clusterIP, HashIPPort, n.family},
		{n.external, HashIPPort, n.family},
		{n.externalLocal, HashIPPort, n.family},
		{n.lbSources, HashIPPortNet, n.family},
		{n.serviceIPs, HashIP, n.family},
		{n.nodeIPs, HashIP, n.family},
	}
	for _, proto := range protocols() {
		sets = append(sets, Set{n.nodePort[proto], BitmapPort, n.family}, Set{n.nodePortLocal[proto], BitmapPort, n.family})
	}
	slices.SortFunc(sets, func(a, b Set) int { return strings.Compare(a.Name, b.Name) })
	return sets
}

// owns reports whether a set name is one of this family's.
func (n setNames) owns(name string) bool {
	_, ok := n.byName[name]
	return ok
}

// admits reports whether a set's members make a service address and port
// answer: such members are added once the virtual server behind them is
// complete, and removed before it goes. The other sets record node ports,
// node addresses, source ranges and bound addresses, which must be in
// place first and stay until what they describe is gone: they are how a
// later sync, or a restarted svcproxy, knows which virtual servers are
// its own.
func (n setNames) admits(name string) bool {
	return name == n.clusterIP || name == n.external || name == n.externalLocal
}

// portObjects is what one service port wants of the kernel.
type portObjects struct {
	vss []*VirtualServer
	// external are the keys of vss on external and LB IPs, which two
	// ports may claim (the API server allocates ClusterIPs and node ports
	// uniquely, not those).
	external map[VSKey]bool
	addrs    []netip.Addr
	entries  []SetEntry
}

// addTo adds the objects to a state; a virtual server the state has
// already is left to its first owner.
func (o portObjects) addTo(s *State) {
	for _, vs := range o.vss {
		if _, taken := s.VirtualServers[vs.VSKey]; !taken {
			s.VirtualServers[vs.VSKey] = vs
		}
	}
	for _, a := range o.addrs {
		s.Addresses[a] = true
	}
	for _, e := range o.entries {
		s.Entries[e] = true
	}
}

// objects compiles one resolved port (see the top of compile.go).
func (c *compiler) objects(rp *netfilter.Port) portObjects {
	var o portObjects
	if !rp.Present() {
		return o
	}
	sp, proto := rp.SP, rp.SP.Protocol()
	o.external = map[VSKey]bool{}
	entry := func(set string, e Entry) { o.entries = append(o.entries, SetEntry{set, e}) }
	server := func(addr netip.Addr, port uint16, reals []RealServer) *VirtualServer {
		vs := &VirtualServer{VSKey: VSKey{addr, proto, port}, Scheduler: c.cfg.scheduler(), Reals: reals}
		if sp.AffinitySeconds > 0 {
			vs.Persistence = uint32(sp.AffinitySeconds)
		}
		o.vss = append(o.vss, vs)
		return vs
	}

	if rp.ClusterIP.IsValid() {
		c.bind(&o, rp.ClusterIP)
		entry(c.sets.clusterIP, Entry{Addr: rp.ClusterIP, Protocol: proto, Port: sp.Port})
		if len(rp.Internal) > 0 {
			server(rp.ClusterIP, sp.Port, c.reals(rp.Internal, sp.Serving))
		}
	}

	external, nodePorts := c.sets.external, c.sets.nodePort[proto]
	if sp.ExternalPolicyLocal {
		external, nodePorts = c.sets.externalLocal, c.sets.nodePortLocal[proto]
	}
	var reals []RealServer
	if eps := rp.ExternalEndpoints(); rp.ExternalPath() && len(eps) > 0 {
		reals = c.reals(eps, sp.Serving)
	}
	for _, a := range slices.Concat(rp.External, rp.LBIPs) {
		c.bind(&o, a)
		entry(external, Entry{Addr: a, Protocol: proto, Port: sp.Port})
		if reals != nil {
			o.external[server(a, sp.Port, reals).VSKey] = true
		}
	}
	if rp.Restricted {
		for _, lb := range rp.LBIPs {
			for _, r := range c.admitted(rp, lb) {
				entry(c.sets.lbSources, Entry{Addr: lb, Protocol: proto, Port: sp.Port, Net: r})
			}
		}
	}
	if rp.NodePort != 0 {
		entry(nodePorts, Entry{Port: rp.NodePort})
		if reals != nil {
			for _, a := range c.nodePortAddrs {
				server(a, rp.NodePort, reals)
			}
		}
	}
	return o
}

// bind binds a service address to kube-ipvs0, unless the node has it
// already: unbinding it later would take it from the node.
func (c *compiler) bind(o *portObjects, a netip.Addr) {
	if c.nodeAddrs[a] {
		return
	}
	o.addrs = append(o.addrs, a)
	o.entries = append(o.entries, SetEntry{c.sets.serviceIPs, Entry{Addr: a}})
}

// admitted are the source ranges a restricted LB IP lets in. A node that
// holds the LB IP sends to it from that very address (in this mode it
// always does: the LB IP is bound to kube-ipvs0); as in the iptables mode
// and kube-proxy, ranges admitting the node's IP admit that address too.
func (c *compiler) admitted(rp *netfilter.Port, lb netip.Addr) []netip.Prefix {
	ranges := slices.Clone(rp.SourceRanges)
	if c.admitsNode(rp) {
		ranges = append(ranges, netip.PrefixFrom(lb, lb.BitLen()))
	}
	for i := range ranges {
		ranges[i] = ranges[i].Masked()
	}
	slices.SortFunc(ranges, netip.Prefix.Compare)
	return slices.Compact(ranges)
}

// admitsNode reports whether the port's source ranges hold the node's IP,
// which admits the node's own connections to its LB IPs.
func (c *compiler) admitsNode(rp *netfilter.Port) bool {
	return slices.ContainsFunc(rp.SourceRanges, func(r netip.Prefix) bool { return r.Contains(c.rules.NodeIP) })
}

// reals are a virtual server's real servers: weight 1 for the endpoints
// new connections go to, weight 0 for every other serving endpoint, so
// that the connections and UDP flows it has go on, as conntrack keeps
// them in the iptables mode: whatever the policies, topology and
// termination leave to new connections, a flow sent there before (a
// remote endpoint before a policy turned Local, one another zone's hints
// now claim) may still be answered.
func (c *compiler) reals(chosen, serving []model.Endpoint) []RealServer {
	reals := make([]RealServer, 0, len(chosen))
	for _, ep := range chosen {
		reals = append(reals, RealServer{Addr: ep.Addr, Weight: 1})
	}
	if len(serving) == len(chosen) && (len(serving) == 0 || &serving[0] == &chosen[0]) {
		serving = nil // the usual case: every serving endpoint is chosen
	}
	for _, ep := range serving {
		if !c.rules.UsableEndpoint(ep) {
			continue
		}
		if !slices.ContainsFunc(chosen, func(x model.Endpoint) bool { return x.Addr == ep.Addr }) {
			reals = append(reals, RealServer{Addr: ep.Addr, Weight: 0})
		}
	}
	// Weight 1 sorts before weight 0, so compacting keeps the one in use.
	slices.SortFunc(reals, func(a, b RealServer) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return b.Weight - a.Weight
	})
	return slices.CompactFunc(reals, func(a, b RealServer) bool { return a.Addr == b.Addr })
}

// hairpinAddrs are the port's node-local endpoints some virtual server
// sends new connections to: a pod IPVS sends back to itself must be
// masqueraded, or its reply would skip IPVS.
func hairpinAddrs(rp *netfilter.Port) []netip.Addr {
	var used [][]model.Endpoint
	if rp.ClusterIP.IsValid() {
		used = append(used, rp.Internal)
	}
	if rp.ExternalPath() {
		used = append(used, rp.ExternalEndpoints())
	}
	return netfilter.LocalAddrs(used...)
}

// sysctls are the settings the mode needs, the same in both families.
func (c *compiler) sysctls() []Sysctl {
	s := []Sysctl{
		// Conntrack must see IPVS's connections, or the masquerade and
		// filter rules cannot act on them.
		{"net/ipv4/vs/conntrack", "1"},
		// A connection to a deleted real server ends at its next packet
		// rather than hanging, and a persistence template to a real
		// server of weight 0 expires, so affine clients move on.
		{"net/ipv4/vs/expire_nodest_conn", "1"},
		{"net/ipv4/vs/expire_quiescent_template", "1"},
	}
	if !c.cfg.ConnReuseFixed {
		// Before 5.9, reusing a port IPVS remembers stalls a SYN for a
		// second (k/k#81775).
		s = append(s, Sysctl{"net/ipv4/vs/conn_reuse_mode", "0"})
	}
	if c.cfg.StrictARP {
		s = append(s, Sysctl{"net/ipv4/conf/all/arp_ignore", "1"}, Sysctl{"net/ipv4/conf/all/arp_announce", "2"})
	}
	return s
}

// Equal reports whether two virtual servers are configured alike, real
// servers included.
func (vs *VirtualServer) Equal(o *VirtualServer) bool {
	return vs.VSKey == o.VSKey && vs.Scheduler == o.Scheduler && vs.Persistence == o.Persistence && slices.Equal(vs.Reals, o.Reals)
}
