package iptables

import (
	"context"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// PortRules lists what each port of the view contributes to the rules a
// full plan of the view writes: its own chains, its dispatch rules in
// their destination buckets, its node port rules and its rules in the
// shared chains. Pure, like Compile.
func PortRules(cfg netfilter.Config, view *model.NodeView) map[model.ServicePortName]*netfilter.PortRules {
	c := newCompiler(cfg, view.Family)
	ports := c.ResolveAll(view)
	out := make(map[model.ServicePortName]*netfilter.PortRules, len(ports))
	for i := range ports {
		rp := &ports[i]
		pr := &netfilter.PortRules{}
		for _, ch := range c.portChains(rp) {
			pr.Own = append(pr.Own, netfilter.Chain{Key: netfilter.NatKey(ch.name), Rules: ch.rules})
		}
		pr.AddShared(netfilter.NatKey(chainNodePorts), c.nodePortRules(rp))
		c.shared.PortRules(pr, rp)
		out[rp.Name()] = pr
	}
	for _, b := range c.buckets(ports) {
		for _, e := range b.entries {
			out[e.port.Name()].AddShared(netfilter.NatKey(b.chain), c.dispatchEntryRules(e.port, e.kind, e.dst))
		}
	}
	return out
}

// Inspect implements proxier.Backend: it reads svcproxy's chains once and
// checks each port's rules against them.
func (b *Backend) Inspect(ctx context.Context, view *model.NodeView) (map[model.ServicePortName][]model.KernelObject, error) {
	saved, err := b.applier.Saved(ctx)
	if err != nil {
		return nil, err
	}
	out := map[model.ServicePortName][]model.KernelObject{}
	for name, pr := range PortRules(b.cfg, view) {
		out[name] = pr.Check(saved)
	}
	return out, nil
}
