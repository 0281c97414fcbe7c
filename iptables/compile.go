package iptables

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/svcproxy/svcproxy/model"
)

// The ruleset Compile writes. Its shape is set by one measurement:
// iptables-nft-restore slows down super-linearly with the number of chains
// (kube-proxy's chain per endpoint, 110k chains for 10k services, did not
// load in 2 minutes; a chain per service, 10k chains, loaded in 5 s). So
// there is no chain per endpoint, and no chain where two rules will do.
//
// nat, entered from PREROUTING and OUTPUT:
//
//	SERVICES     "-d prefix -j DST-x" per destination bucket, then
//	             "--dst-type LOCAL -j NODEPORTS" (per --nodeport-addresses prefix)
//	DST-<hash>   per bucket (dispatch.go): "-d addr -p P --dport port" per
//	             ClusterIP / external IP / LB IP that has endpoints
//	NODEPORTS    "-p P --dport nodePort" per node port that has endpoints
//	SVC-<hash>   cluster-wide endpoints: masquerade mark for sources outside
//	             the pod range, ClientIP affinity, then one DNAT per endpoint
//	SVI-<hash>   the same over node-local endpoints, for ClusterIP traffic
//	             under internalTrafficPolicy Local
//	SVL-<hash>   node-local endpoints for externalTrafficPolicy Local, no mark
//	EXT-<hash>   externalTrafficPolicy Local: pods and the node itself go to
//	             SVC (the node masqueraded), everyone else to SVL
//	FW-<hash>    loadBalancerSourceRanges: admitted sources go on, the rest
//	             fall through un-DNATed
//
// External traffic under Cluster policy is marked and sent to SVC by two
// rules where it enters, not through a chain of its own.
//
// nat, entered from POSTROUTING: POSTROUTING masquerades marked packets
// after HAIRPIN has marked pods that were balanced to themselves.
//
// filter, entered from INPUT, FORWARD and OUTPUT for new connections:
// FILTER rejects (no endpoints) or drops (no local endpoints under
// externalTrafficPolicy Local, or a source outside loadBalancerSourceRanges)
// whatever the nat table left addressed to a service. FORWARD accepts
// marked and established traffic under a DROP policy; HEALTHCHECK opens the
// health check node ports.

// Config is what the rules depend on besides the view. It must not change
// between the view a partial plan starts from and the view it goes to.
type Config struct {
	// ClusterCIDRs are the pod ranges (--cluster-cidr), at most one per
	// family; traffic from outside them to a ClusterIP is masqueraded.
	// Empty: nothing is masqueraded on the way to a ClusterIP, as in kube-proxy.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool
	// NodePortAddresses limits the node addresses node ports answer on
	// (--nodeport-addresses). Empty: every local address. Non-empty with no
	// prefix of a family: no node ports in that family.
	NodePortAddresses []netip.Prefix
	// MasqueradeBit is the packet mark bit that asks for masquerade, 1..31;
	// 0 (or out of range) means 14, kube-proxy's default, mark 0x4000.
	MasqueradeBit int
}

// DefaultMasqueradeBit is the mark bit used when Config leaves it unset.
const DefaultMasqueradeBit = 14

// compiler is Config resolved for one family: everything rule rendering
// needs that does not depend on a service.
type compiler struct {
	family model.Family
	// clusterCIDR is the pod range of the family; invalid when none is set.
	clusterCIDR   netip.Prefix
	masqueradeAll bool
	// nodePortDsts are the destinations node ports answer on: a "-d
	// prefix " match per prefix, or one match for every local address but
	// loopback.
	nodePortDsts []string
	mark         string // "0x4000"
	hostBits     int    // 32 or 128
	loopback     netip.Addr
	unreachable  string // the ICMP reject type of the family
}

func newCompiler(cfg Config, family model.Family) *compiler {
	c := &compiler{
		family:        family,
		masqueradeAll: cfg.MasqueradeAll,
		mark:          masqueradeMark(cfg.MasqueradeBit),
		hostBits:      32,
		loopback:      netip.AddrFrom4([4]byte{127, 0, 0, 1}),
		unreachable:   "icmp-port-unreachable",
	}
	if family == model.IPv6 {
		c.hostBits, c.loopback, c.unreachable = 128, netip.IPv6Loopback(), "icmp6-port-unreachable"
	}
	// kube-proxy takes one pod range per family; a second one of the same
	// family could not be expressed by the single "! -s" masquerade rule.
	for _, p := range cfg.ClusterCIDRs {
		if p.IsValid() && model.FamilyOf(p.Addr()) == family {
			c.clusterCIDR = p.Masked()
			break
		}
	}
	c.nodePortDsts = nodePortDsts(cfg.NodePortAddresses, family)
	return c
}

func masqueradeMark(bit int) string {
	if bit < 1 || bit > 31 {
		bit = DefaultMasqueradeBit
	}
	return fmt.Sprintf("%#x", uint32(1)<<bit)
}

func nodePortDsts(prefixes []netip.Prefix, family model.Family) []string {
	if len(prefixes) == 0 {
		// Every local address but loopback: a packet DNATed from loopback
		// to a pod cannot be routed (svcproxy does not set route_localnet),
		// so it would hang where an unserved port answers at once.
		if family == model.IPv6 {
			return []string{"! -d ::1/128 "}
		}
		return []string{"! -d 127.0.0.0/8 "}
	}
	var dsts []string
	for _, p := range prefixes {
		if p.IsValid() && model.FamilyOf(p.Addr()) == family {
			dsts = append(dsts, "-d "+p.Masked().String()+" ")
		}
	}
	slices.Sort(dsts)
	return slices.Compact(dsts)
}

// Compile turns a view into the plan that programs it. With prev nil the
// plan is full: it writes every chain svcproxy needs. With prev (the view
// of the last successful sync, compiled with the same cfg) it writes only
// the chains whose rules differ from what prev compiled to and deletes the
// chains prev needed and view does not. Compile is pure and deterministic.
func Compile(cfg Config, view, prev *model.NodeView) *Plan {
	c := newCompiler(cfg, view.Family)
	if prev == nil || prev.Family != view.Family {
		return c.full(view)
	}
	return c.partial(view, prev)
}

// full compiles every chain of the view.
func (c *compiler) full(view *model.NodeView) *Plan {
	plan := &Plan{Family: c.family, Full: true, Write: map[ChainKey][]string{}}
	ports := c.resolveAll(view)
	for i := range ports {
		for _, ch := range c.portChains(&ports[i]) {
			plan.Write[natKey(ch.name)] = ch.rules
		}
	}
	buckets := c.buckets(ports)
	for _, b := range buckets {
		plan.Write[natKey(b.chain)] = c.bucketRules(b)
	}
	plan.Write[natKey(chainServices)] = c.servicesRules(buckets)
	plan.Write[natKey(chainNodePorts)] = sharedRules(ports, c.nodePortRules)
	plan.Write[natKey(chainHairpin)] = c.hairpinRules(ports)
	plan.Write[natKey(chainPostrouting)] = c.postroutingRules()
	plan.Write[natKey(chainMarkMasq)] = c.markMasqRules()
	plan.Write[filterKey(chainFilter)] = sharedRules(ports, c.filterRules)
	plan.Write[filterKey(chainForward)] = c.forwardRules()
	plan.Write[filterKey(chainHealthCheck)] = healthCheckRules(ports)
	return plan
}

// resolveAll resolves every port of the view, once per compilation.
func (c *compiler) resolveAll(view *model.NodeView) []resolvedPort {
	ports := make([]resolvedPort, 0, len(view.Services))
	for _, sp := range view.Services {
		if rp := c.resolve(sp); rp.present() {
			ports = append(ports, rp)
		}
	}
	return ports
}

// resolvedViews resolves the two views of a partial compilation on first
// use: only a change to a shared chain needs every port.
type resolvedViews struct {
	c                             *compiler
	view, prev                    *model.NodeView
	afterPorts, beforePorts       []resolvedPort
	resolvedAfter, resolvedBefore bool
}

func (r *resolvedViews) after() []resolvedPort {
	if !r.resolvedAfter {
		r.afterPorts, r.resolvedAfter = r.c.resolveAll(r.view), true
	}
	return r.afterPorts
}

func (r *resolvedViews) before() []resolvedPort {
	if !r.resolvedBefore {
		r.beforePorts, r.resolvedBefore = r.c.resolveAll(r.prev), true
	}
	return r.beforePorts
}

// partial compiles only what the ports that changed since prev can affect:
// their own chains, and each shared chain they contribute differently to,
// which is then compiled from both views to see whether it really changed.
func (c *compiler) partial(view, prev *model.NodeView) *Plan {
	plan := &Plan{Family: c.family, Write: map[ChainKey][]string{}}
	var affected sharedChanges
	for _, name := range changedPorts(view, prev) {
		before, after := c.resolve(prev.Services[name]), c.resolve(view.Services[name])
		c.diffPortChains(plan, &before, &after)
		affected.note(c, &before, &after)
	}
	ports := &resolvedViews{c: c, view: view, prev: prev}
	if len(affected.dispatch) > 0 {
		c.diffDispatch(plan, ports, affected.dispatch)
	}
	if affected.nodePorts {
		diffChain(plan, natKey(chainNodePorts), sharedRules(ports.before(), c.nodePortRules), sharedRules(ports.after(), c.nodePortRules))
	}
	if affected.hairpin {
		diffChain(plan, natKey(chainHairpin), c.hairpinRules(ports.before()), c.hairpinRules(ports.after()))
	}
	if affected.filter {
		diffChain(plan, filterKey(chainFilter), sharedRules(ports.before(), c.filterRules), sharedRules(ports.after(), c.filterRules))
	}
	if affected.healthCheck {
		diffChain(plan, filterKey(chainHealthCheck), healthCheckRules(ports.before()), healthCheckRules(ports.after()))
	}
	slices.SortFunc(plan.Delete, compareChainKeys)
	return plan
}

// changedPorts lists, in order, the ports added, removed or changed.
func changedPorts(view, prev *model.NodeView) []model.ServicePortName {
	var changed []model.ServicePortName
	for name, sp := range view.Services {
		old, ok := prev.Services[name]
		if !ok || (old != sp && !old.Equal(sp)) {
			changed = append(changed, name)
		}
	}
	for name := range prev.Services {
		if _, ok := view.Services[name]; !ok {
			changed = append(changed, name)
		}
	}
	slices.SortFunc(changed, model.ServicePortName.Compare)
	return changed
}

// sharedChanges records which shared chains the changed ports contribute
// to differently; only those are compiled again.
type sharedChanges struct {
	// dispatch names the ports whose dispatch rules changed: the buckets
	// holding their addresses, before or after, may have to be rewritten.
	dispatch                                map[model.ServicePortName]bool
	nodePorts, hairpin, filter, healthCheck bool
}

func (s *sharedChanges) note(c *compiler, before, after *resolvedPort) {
	if !slices.Equal(c.dispatchRules(before), c.dispatchRules(after)) {
		if s.dispatch == nil {
			s.dispatch = map[model.ServicePortName]bool{}
		}
		for _, rp := range []*resolvedPort{before, after} {
			if rp.present() {
				s.dispatch[rp.name()] = true
			}
		}
	}
	s.nodePorts = s.nodePorts || !slices.Equal(c.nodePortRules(before), c.nodePortRules(after))
	s.hairpin = s.hairpin || !slices.Equal(before.hairpinAddrs(), after.hairpinAddrs())
	s.filter = s.filter || !slices.Equal(c.filterRules(before), c.filterRules(after))
	s.healthCheck = s.healthCheck || before.healthCheckPort() != after.healthCheckPort()
}

// diffPortChains writes the port's chains whose rules changed and deletes
// those it no longer needs.
func (c *compiler) diffPortChains(plan *Plan, before, after *resolvedPort) {
	old, cur := c.portChains(before), c.portChains(after)
	for _, ch := range cur {
		if i := indexChain(old, ch.name); i < 0 || !slices.Equal(old[i].rules, ch.rules) {
			plan.Write[natKey(ch.name)] = ch.rules
		}
	}
	for _, o := range old {
		if indexChain(cur, o.name) < 0 {
			plan.Delete = append(plan.Delete, natKey(o.name))
		}
	}
}

func indexChain(chains []chainRules, name string) int {
	return slices.IndexFunc(chains, func(ch chainRules) bool { return ch.name == name })
}

// diffChain writes a chain that always exists if its rules changed.
func diffChain(plan *Plan, key ChainKey, before, after []string) {
	if !slices.Equal(before, after) {
		plan.Write[key] = after
	}
}

func natKey(name string) ChainKey    { return ChainKey{Table: TableNAT, Name: name} }
func filterKey(name string) ChainKey { return ChainKey{Table: TableFilter, Name: name} }
