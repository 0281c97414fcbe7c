package iptables

import (
	"slices"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
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
//
// POSTROUTING, MARK-MASQ, HAIRPIN, FILTER, FORWARD and HEALTHCHECK are
// written by netfilter.Shared, as in the IPVS mode; this package adds the
// DNAT chains.

// compiler is the family's netfilter.Rules plus what only this mode's
// rules need: the shared chains as this mode fills them.
type compiler struct {
	*netfilter.Rules
	shared netfilter.Shared
}

func newCompiler(cfg netfilter.Config, family model.Family) *compiler {
	c := &compiler{Rules: netfilter.NewRules(cfg, family)}
	// The nat table DNATs every source a restricted LB IP admits, so
	// whatever is still addressed to the LB IP in the filter table is not.
	c.shared = netfilter.Shared{
		Rules:     c.Rules,
		Filter:    func(rp *netfilter.Port) []string { return c.FilterRules(rp, "") },
		Hairpin:   hairpinAddrs,
		InputHead: c.LocalnetFilterRules(),
		Balanced:  "-m conntrack --ctstate DNAT",
	}
	return c
}

// Compile turns a view into the plan that programs it. With prev nil the
// plan is full: it writes every chain svcproxy needs. With prev (the view
// of the last successful sync, compiled with the same cfg) it writes only
// the chains whose rules differ from what prev compiled to and deletes the
// chains prev needed and view does not. Compile is pure and deterministic.
func Compile(cfg netfilter.Config, view, prev *model.NodeView) *netfilter.Plan {
	c := newCompiler(cfg, view.Family)
	if prev == nil || prev.Family != view.Family {
		return c.full(view)
	}
	return c.partial(view, prev)
}

// full compiles every chain of the view.
func (c *compiler) full(view *model.NodeView) *netfilter.Plan {
	plan := netfilter.NewPlan(c.Family, true)
	ports := c.ResolveAll(view)
	for i := range ports {
		for _, ch := range c.portChains(&ports[i]) {
			plan.Write[netfilter.NatKey(ch.name)] = ch.rules
		}
	}
	buckets := c.buckets(ports)
	for _, b := range buckets {
		plan.Write[netfilter.NatKey(b.chain)] = c.bucketRules(b)
	}
	plan.Write[netfilter.NatKey(netfilter.ChainServices)] = c.servicesRules(buckets)
	plan.Write[netfilter.NatKey(chainNodePorts)] = netfilter.SharedRules(ports, c.nodePortRules)
	c.shared.WriteAll(plan, ports)
	return plan
}

// partial compiles only what the ports that changed since prev can affect:
// their own chains, and each shared chain they contribute differently to,
// which is then compiled from both views to see whether it really changed.
func (c *compiler) partial(view, prev *model.NodeView) *netfilter.Plan {
	plan := netfilter.NewPlan(c.Family, false)
	var affected changes
	for _, name := range model.ChangedPorts(view, prev) {
		before, after := c.Resolve(prev.Services[name]), c.Resolve(view.Services[name])
		c.diffPortChains(plan, &before, &after)
		affected.note(c, &before, &after)
	}
	ports := c.Views(view, prev)
	if len(affected.dispatch) > 0 {
		c.diffDispatch(plan, ports, affected.dispatch)
	}
	if affected.nodePorts {
		netfilter.DiffChain(plan, netfilter.NatKey(chainNodePorts),
			netfilter.SharedRules(ports.Before(), c.nodePortRules), netfilter.SharedRules(ports.After(), c.nodePortRules))
	}
	c.shared.WriteChanged(plan, affected.shared, ports.Before, ports.After)
	plan.SortDeletes()
	return plan
}

// changes records which chains shared by ports the changed ports
// contribute to differently; only those are compiled again.
type changes struct {
	// dispatch names the ports whose dispatch rules changed: the buckets
	// holding their addresses, before or after, may have to be rewritten.
	dispatch  map[model.ServicePortName]bool
	nodePorts bool
	shared    netfilter.SharedChanges
}

func (s *changes) note(c *compiler, before, after *netfilter.Port) {
	if !slices.Equal(c.dispatchRules(before), c.dispatchRules(after)) {
		if s.dispatch == nil {
			s.dispatch = map[model.ServicePortName]bool{}
		}
		for _, rp := range []*netfilter.Port{before, after} {
			if rp.Present() {
				s.dispatch[rp.Name()] = true
			}
		}
	}
	s.nodePorts = s.nodePorts || !slices.Equal(c.nodePortRules(before), c.nodePortRules(after))
	c.shared.Note(&s.shared, before, after)
}

// diffPortChains writes the port's chains whose rules changed and deletes
// those it no longer needs.
func (c *compiler) diffPortChains(plan *netfilter.Plan, before, after *netfilter.Port) {
	old, cur := c.portChains(before), c.portChains(after)
	for _, ch := range cur {
		if i := indexChain(old, ch.name); i < 0 || !slices.Equal(old[i].rules, ch.rules) {
			plan.Write[netfilter.NatKey(ch.name)] = ch.rules
		}
	}
	for _, o := range old {
		if indexChain(cur, o.name) < 0 {
			plan.Delete = append(plan.Delete, netfilter.NatKey(o.name))
		}
	}
}

func indexChain(chains []chainRules, name string) int {
	return slices.IndexFunc(chains, func(ch chainRules) bool { return ch.name == name })
}
