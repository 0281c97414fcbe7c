package netfilter

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// Config is what the rules depend on besides the view. It must not change
// between the view a partial plan starts from and the view it goes to.
type Config struct {
	// ClusterCIDRs tell traffic from pods by its source, at most one range
	// per family (the first counts): the cluster's pod ranges
	// (--detect-local-mode=ClusterCIDR, --cluster-cidr) or the node's own
	// (NodeCIDR). Traffic from outside them to a ClusterIP is masqueraded.
	// Empty, and no PodInterface: pod traffic cannot be told, and nothing
	// is masqueraded on the way to a ClusterIP, as in kube-proxy.
	ClusterCIDRs []netip.Prefix
	// PodInterface tells traffic from pods by the interface it comes in
	// on instead, as iptables' -i matches it: a bridge's name
	// (BridgeInterface), or a name prefix followed by "+"
	// (InterfaceNamePrefix). It wins over ClusterCIDRs.
	PodInterface string
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool
	// NodePortAddresses limits the node addresses node ports answer on
	// (--nodeport-addresses). A family none of them is of answers on every
	// local address, as in kube-proxy: limiting one family leaves the
	// other open.
	NodePortAddresses []netip.Prefix
	// MasqueradeBit is the packet mark bit that asks for masquerade, 1..31;
	// 0 (or out of range) means 14, kube-proxy's default, mark 0x4000.
	MasqueradeBit int
	// LocalhostNodePorts serves IPv4 node ports on 127.0.0.0/8 too, as
	// kube-proxy's iptables mode does by default
	// (--iptables-localhost-nodeports), when --nodeport-addresses lets
	// loopback in (no IPv4 CIDR, or one holding 127.0.0.0). It needs
	// route_localnet, which lets in packets to 127.0.0.0/8 from outside
	// too: HEALTHCHECK drops those (kube-proxy's martian filter). Never IPv6,
	// never the IPVS mode.
	LocalhostNodePorts bool
	// NodeIPs are the node's primary IPs, at most one per family (its
	// Node's first InternalIP, else ExternalIP, of the family). A family
	// without one takes loopback, as kube-proxy does.
	NodeIPs []netip.Addr
}

// DefaultMasqueradeBit is the mark bit used when Config leaves it unset.
const DefaultMasqueradeBit = 14

// Rules is Config resolved for one family: everything rule rendering needs
// that does not depend on a service.
type Rules struct {
	Family model.Family
	// PodTraffic matches packets from pods and NotPodTraffic the rest
	// ("-s range " or "-i name "; "! " before either); both "" when pod
	// traffic cannot be told.
	PodTraffic, NotPodTraffic string
	MasqueradeAll             bool
	// NodePortDsts are the destinations node ports answer on: a "-d
	// prefix " match per prefix, or one match for every local address but
	// loopback.
	NodePortDsts []string
	// NodePortPrefixes are the prefixes of --nodeport-addresses in this
	// family; empty when node ports answer on every local address.
	NodePortPrefixes []netip.Prefix
	// LocalhostNodePorts: node ports answer on 127.0.0.0/8 in this family.
	LocalhostNodePorts bool
	// NodeIP is the node's primary IP of the family, loopback if unknown.
	NodeIP      netip.Addr
	Mark        string // "0x4000"
	hostBits    int    // 32 or 128
	loopback    netip.Addr
	unreachable string // the ICMP reject type of the family
}

// NewRules resolves cfg for one family.
func NewRules(cfg Config, family model.Family) *Rules {
	r := &Rules{
		Family:        family,
		MasqueradeAll: cfg.MasqueradeAll,
		Mark:          masqueradeMark(cfg.MasqueradeBit),
		hostBits:      32,
		loopback:      netip.AddrFrom4([4]byte{127, 0, 0, 1}),
		unreachable:   "icmp-port-unreachable",
	}
	if family == model.IPv6 {
		r.hostBits, r.loopback, r.unreachable = 128, netip.IPv6Loopback(), "icmp6-port-unreachable"
	}
	r.PodTraffic, r.NotPodTraffic = podTraffic(cfg, family)
	r.NodeIP = r.loopback
	for _, a := range cfg.NodeIPs {
		if a.IsValid() && model.FamilyOf(a) == family {
			r.NodeIP = a.Unmap()
			break
		}
	}
	r.NodePortPrefixes = nodePortPrefixes(cfg.NodePortAddresses, family)
	r.LocalhostNodePorts = cfg.LocalhostNodePorts && LoopbackNodePorts(cfg.NodePortAddresses)
	r.NodePortDsts = nodePortDsts(r.NodePortPrefixes, family, r.LocalhostNodePorts)
	return r
}

// podTraffic renders kube-proxy's local traffic detector of the family.
// kube-proxy takes one pod range per family; a second one of the same
// family could not be expressed by a single "! -s" masquerade rule.
func podTraffic(cfg Config, family model.Family) (pods, notPods string) {
	if cfg.PodInterface != "" {
		return "-i " + cfg.PodInterface + " ", "! -i " + cfg.PodInterface + " "
	}
	for _, p := range cfg.ClusterCIDRs {
		if p.IsValid() && model.FamilyOf(p.Addr()) == family {
			return "-s " + p.Masked().String() + " ", "! -s " + p.Masked().String() + " "
		}
	}
	return "", ""
}

func masqueradeMark(bit int) string {
	if bit < 1 || bit > 31 {
		bit = DefaultMasqueradeBit
	}
	return fmt.Sprintf("%#x", uint32(1)<<bit)
}

func nodePortPrefixes(prefixes []netip.Prefix, family model.Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range prefixes {
		if p.IsValid() && model.FamilyOf(p.Addr()) == family {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return slices.Compact(out)
}

// ipv4Loopback is 127.0.0.0/8.
var ipv4Loopback = netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 0, 0, 0}), 8)

// LoopbackNodePorts reports whether --nodeport-addresses lets IPv4 node
// ports answer on loopback, as kube-proxy reads it: no IPv4 CIDR (every
// address), or one holding 127.0.0.0 or within 127.0.0.0/8.
func LoopbackNodePorts(nodePortAddresses []netip.Prefix) bool {
	v4 := nodePortPrefixes(nodePortAddresses, model.IPv4)
	return len(v4) == 0 || slices.ContainsFunc(v4, func(p netip.Prefix) bool {
		return p.Contains(ipv4Loopback.Addr()) || ipv4Loopback.Contains(p.Addr())
	})
}

// nodePortDsts: without route_localnet (localhost false), a packet DNATed
// from loopback to a pod cannot be routed, so it would hang where an
// unserved port answers at once: loopback is left out. IPv6 never has it.
func nodePortDsts(ofFamily []netip.Prefix, family model.Family, localhost bool) []string {
	if len(ofFamily) == 0 {
		switch {
		case family == model.IPv6:
			return []string{"! -d ::1/128 "}
		case localhost:
			return []string{""}
		}
		return []string{"! -d 127.0.0.0/8 "}
	}
	var dsts []string
	for _, p := range ofFamily {
		if family == model.IPv4 && !localhost && ipv4Loopback.Contains(p.Addr()) {
			continue // as kube-proxy skips the loopback node IPs then
		}
		dsts = append(dsts, "-d "+p.String()+" ")
	}
	slices.Sort(dsts)
	return dsts
}

// The comments of the rules that count the connections node ports accept
// on 127.0.0.0/8: kube-proxy's iptables_localhost_nodeports_accepted_packets_total,
// which it counts with an nfacct object on a second copy of every node
// port's rule. svcproxy counts with two rules instead: every new
// connection to a loopback address enters the node-port chain through the
// first; those no node port takes come back and pass the second. The
// difference is what the node ports accepted.
const (
	CommentLocalhostNodePorts   = "svcproxy node ports on localhost"
	CommentLocalhostNotNodePort = "svcproxy localhost, not a node port"
)

// NodePortJumps are the last rules of the services chain: a jump to the
// node-port chain for each destination node ports answer on, with the
// counting pair (see CommentLocalhostNodePorts) for the loopback ones.
func (r *Rules) NodePortJumps(chain string) []string {
	local := "-m addrtype --dst-type LOCAL -m comment --comment "
	var rules []string
	for _, dst := range r.NodePortDsts {
		if loop := r.loopbackDst(dst); loop != "" {
			rules = append(rules,
				loop+local+QuoteComment(CommentLocalhostNodePorts)+" -j "+chain,
				loop+"-m comment --comment "+QuoteComment(CommentLocalhostNotNodePort)+" -j RETURN")
			if dst != "" {
				continue // the prefix is all loopback: done
			}
		}
		rules = append(rules, dst+local+QuoteComment("svcproxy node ports, must be the last rule")+" -j "+chain)
	}
	return rules
}

// loopbackDst is the loopback part of a node-port destination when node
// ports answer on localhost: all of 127.0.0.0/8 for every local address
// (""), the prefix itself for one within it; "" otherwise.
func (r *Rules) loopbackDst(dst string) string {
	if !r.LocalhostNodePorts || r.Family != model.IPv4 {
		return ""
	}
	if dst == "" {
		return "-d " + ipv4Loopback.String() + " "
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(strings.TrimPrefix(dst, "-d ")))
	if err == nil && ipv4Loopback.Contains(p.Addr()) && p.Bits() >= ipv4Loopback.Bits() {
		return dst
	}
	return ""
}

// LocalnetFilterRules drop what route_localnet lets in that it must not:
// a new connection to 127.0.0.0/8 from elsewhere, not DNATed (kube-proxy's
// and kubelet's KUBE-FIREWALL rule, CVE-2020-8558). Only when node ports
// answer on loopback, for which svcproxy sets route_localnet.
func (r *Rules) LocalnetFilterRules() []string {
	if !r.LocalhostNodePorts || r.Family != model.IPv4 {
		return nil
	}
	return []string{"! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment " + QuoteComment("block incoming localnet connections") +
		" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"}
}

// Host renders an address as a host prefix ("10.0.0.1/32").
func (r *Rules) Host(a netip.Addr) string {
	return a.String() + "/" + strconv.Itoa(r.hostBits)
}

// Loopback is the family's loopback address.
func (r *Rules) Loopback() netip.Addr { return r.loopback }

// HostMask is the family's all-ones mask, as xt_recent takes it.
func (r *Rules) HostMask() string {
	if r.Family == model.IPv6 {
		return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
	}
	return "255.255.255.255"
}

// Reject is the target refusing a new connection of the port's protocol
// at once: a TCP reset, else ICMP port unreachable.
func (r *Rules) Reject(p *Port) string {
	if p.SP.Protocol() == model.TCP {
		return "-j REJECT --reject-with tcp-reset"
	}
	return "-j REJECT --reject-with " + r.unreachable
}

// MasqueradeRules open what ClusterIP traffic reaches first. Traffic not
// from a pod (a node, or a client routed to the service range)
// is masqueraded so the reply comes back through this node to be
// un-DNATed. External traffic reaching the same rules is either already
// marked or comes from a pod, so they need no destination match.
func (r *Rules) MasqueradeRules() []string {
	switch {
	case r.MasqueradeAll:
		return []string{"-j " + ChainMarkMasq}
	case r.NotPodTraffic != "":
		return []string{r.NotPodTraffic + "-j " + ChainMarkMasq}
	}
	return nil
}

// Port is a service port reduced to what one family's rules use.
// Addresses of the other family and endpoints no rule could reach are
// dropped once here, so rendering never checks again. The zero value is an
// absent port: it has no rules at all.
type Port struct {
	SP        *model.ServicePort
	ClusterIP netip.Addr // invalid: none
	NodePort  uint16     // 0: none, or node ports are off in this family
	External  []netip.Addr
	LBIPs     []netip.Addr
	// Restricted: loadBalancerSourceRanges are set, so the LB IPs admit only
	// SourceRanges (which may be empty if none was usable: then nobody).
	Restricted   bool
	SourceRanges []netip.Prefix
	Internal     []model.Endpoint // for ClusterIP traffic
	Cluster      []model.Endpoint // anywhere in the cluster (cluster traffic policy)
	Local        []model.Endpoint // on this node, for externalTrafficPolicy Local
	hash         string           // of the name; set on first use
}

// Resolve reduces a port; nil, or a port no rule can express (port 0, an
// unknown protocol), resolves to the absent port.
func (r *Rules) Resolve(sp *model.ServicePort) Port {
	if sp == nil || sp.Port == 0 || sp.Protocol() < model.TCP || sp.Protocol() > model.SCTP {
		return Port{}
	}
	p := Port{
		SP:           sp,
		External:     ofFamily(sp.ExternalIPs, r.usableAddr),
		LBIPs:        ofFamily(sp.LoadBalancerIPs, r.usableAddr),
		Restricted:   len(sp.SourceRanges) > 0,
		SourceRanges: ofFamily(sp.SourceRanges, r.usablePrefix),
		Internal:     ofFamily(sp.ClusterEndpoints, r.usableEndpoint),
	}
	// Without internalTrafficPolicy Local both lists are one.
	p.Cluster = p.Internal
	if sp.InternalPolicyLocal {
		p.Cluster = ofFamily(sp.ClusterPolicyEndpoints(), r.usableEndpoint)
	}
	if r.usableAddr(sp.ClusterIP) {
		p.ClusterIP = sp.ClusterIP
	}
	if len(r.NodePortDsts) > 0 {
		p.NodePort = sp.NodePort
	}
	if sp.ExternalPolicyLocal {
		p.Local = ofFamily(sp.LocalEndpoints, r.usableEndpoint)
	}
	return p
}

// ResolveAll resolves every port of a view, in no particular order.
func (r *Rules) ResolveAll(view *model.NodeView) []Port {
	ports := make([]Port, 0, len(view.Services))
	for _, sp := range view.Services {
		if p := r.Resolve(sp); p.Present() {
			ports = append(ports, p)
		}
	}
	return ports
}

func (r *Rules) usableAddr(a netip.Addr) bool {
	return a.IsValid() && a.Zone() == "" && model.FamilyOf(a) == r.Family
}

func (r *Rules) usablePrefix(p netip.Prefix) bool {
	return p.IsValid() && model.FamilyOf(p.Addr()) == r.Family
}

// UsableEndpoint reports whether an endpoint can be programmed in this
// family.
func (r *Rules) UsableEndpoint(ep model.Endpoint) bool { return r.usableEndpoint(ep) }

func (r *Rules) usableEndpoint(ep model.Endpoint) bool {
	return r.usableAddr(ep.Addr.Addr()) && ep.Addr.Port() != 0
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

// Present reports whether the port has rules at all.
func (p *Port) Present() bool { return p.SP != nil }

// Name is the port's name.
func (p *Port) Name() model.ServicePortName { return p.SP.Name }

// Proto is the protocol as iptables spells it ("tcp").
func (p *Port) Proto() string { return p.SP.Protocol().Lower() }

// NameHash is a digest of the port's name, for the names of its chains
// and sets: stable across restarts, so a listing shows what belongs
// together.
func (p *Port) NameHash() string {
	if p.hash == "" {
		p.hash = NameHash(p.Name().String())
	}
	return p.hash
}

// ExternallyAccessible reports whether traffic from outside the cluster
// can reach the port in this family.
func (p *Port) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.External) > 0 || len(p.LBIPs) > 0
}

// HasExternalEndpoints reports whether external traffic has endpoints to
// go to: under externalTrafficPolicy Local, pods and the node itself still
// reach the cluster-wide endpoints even when no endpoint is local.
func (p *Port) HasExternalEndpoints() bool {
	return len(p.Cluster) > 0 || (p.SP.ExternalPolicyLocal && len(p.Local) > 0)
}

// ExternalPath reports whether some external traffic gets in and can be
// balanced. LB IPs whose source ranges admit nobody are no way in.
func (p *Port) ExternalPath() bool {
	in := p.NodePort != 0 || len(p.External) > 0 || (len(p.LBIPs) > 0 && (!p.Restricted || len(p.SourceRanges) > 0))
	return in && p.HasExternalEndpoints()
}

// ExternalEndpoints are the endpoints traffic from outside the cluster is
// balanced over.
func (p *Port) ExternalEndpoints() []model.Endpoint {
	if p.SP.ExternalPolicyLocal {
		return p.Local
	}
	return p.Cluster
}

// PortMatch matches the port's protocol and service port.
func (p *Port) PortMatch() string { return ProtoMatch(p.Proto(), p.SP.Port) }

// ProtoMatch matches a protocol and destination port.
func ProtoMatch(proto string, port uint16) string {
	return "-p " + proto + " -m " + proto + " --dport " + strconv.Itoa(int(port)) + " "
}

// HealthCheckPort is the port's health check node port; 0: none.
func (p *Port) HealthCheckPort() uint16 {
	if !p.Present() {
		return 0
	}
	return p.SP.HealthCheckNodePort
}

// Views resolves the two views of a partial compilation on first use:
// only a change to a chain shared by ports needs every port.
func (r *Rules) Views(view, prev *model.NodeView) *Views {
	return &Views{rules: r, view: view, prev: prev}
}

// Views are the ports of a partial compilation's two views.
type Views struct {
	rules                         *Rules
	view, prev                    *model.NodeView
	afterPorts, beforePorts       []Port
	resolvedAfter, resolvedBefore bool
}

// After are the ports of the view compiled to.
func (v *Views) After() []Port {
	if !v.resolvedAfter {
		v.afterPorts, v.resolvedAfter = v.rules.ResolveAll(v.view), true
	}
	return v.afterPorts
}

// Before are the ports of the view compiled from.
func (v *Views) Before() []Port {
	if !v.resolvedBefore {
		v.beforePorts, v.resolvedBefore = v.rules.ResolveAll(v.prev), true
	}
	return v.beforePorts
}
