package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// PortWants is what one service port needs of the kernel in the IPVS
// mode, as a full plan of the whole view wants it: its virtual servers
// with their real servers, its addresses on kube-ipvs0, its set entries,
// and its iptables rules.
type PortWants struct {
	VirtualServers []*VirtualServer
	Addresses      []netip.Addr
	Entries        []SetEntry
	Rules          netfilter.PortRules
}

// PortObjects lists what each port of the view needs, given the node's
// addresses. Pure, like Compile.
func PortObjects(cfg Config, view *model.NodeView, nodeAddrs []netip.Addr) map[model.ServicePortName]*PortWants {
	c := newCompiler(cfg, view.Family, nodeAddrs)
	ports := sortedPorts(c.rules.ResolveAll(view))
	out := make(map[model.ServicePortName]*PortWants, len(ports))
	taken := map[VSKey]bool{}
	for i := range ports {
		rp := &ports[i]
		o := c.objects(rp)
		w := &PortWants{Addresses: o.addrs, Entries: o.entries}
		// Two ports may claim one external address and port: as in a
		// plan, the first in name order has the virtual server.
		for _, vs := range o.vss {
			if !taken[vs.VSKey] {
				taken[vs.VSKey] = true
				w.VirtualServers = append(w.VirtualServers, vs)
			}
		}
		w.Rules.AddShared(netfilter.NatKey(netfilter.ChainServices), c.localPolicyRules(rp))
		c.shared.PortRules(&w.Rules, rp)
		out[rp.Name()] = w
	}
	return out
}

// Inspect implements proxier.Backend: it reads the family's IPVS table,
// kube-ipvs0's addresses, svcproxy's sets and chains once, and checks
// each port's objects against them.
func (b *Backend) Inspect(ctx context.Context, view *model.NodeView) (map[model.ServicePortName][]model.KernelObject, error) {
	k, err := b.open()
	if err != nil {
		return nil, fmt.Errorf("opening the kernel's IPVS and netlink interfaces: %w", err)
	}
	defer k.Close()
	nodeAddrs, err := k.HostAddrs(b.family, DummyName)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	seen, err := (&applyRun{a: b.applier, k: &countingKernel{Kernel: k}}).observe()
	if err != nil {
		return nil, err
	}
	saved, err := b.rules.Saved(ctx)
	if err != nil {
		return nil, err
	}
	out := map[model.ServicePortName][]model.KernelObject{}
	for name, w := range PortObjects(b.cfg, view, nodeAddrs) {
		out[name] = append(w.check(seen), w.Rules.Check(saved)...)
	}
	return out, nil
}

// check tells, for each IPVS object of the port, whether the kernel holds it.
func (w *PortWants) check(seen *observed) []model.KernelObject {
	var objs []model.KernelObject
	for _, vs := range w.VirtualServers {
		obj := model.KernelObject{Kind: "virtual server", Name: vs.VSKey.String(), State: model.InPlace}
		cur, ok := seen.servers[vs.VSKey]
		switch {
		case !ok:
			obj.State = model.Missing
		case cur.Scheduler != vs.Scheduler || cur.Persistence != vs.Persistence:
			obj.State, obj.Detail = model.Differs, fmt.Sprintf("scheduler %s persistence %d, want %s persistence %d",
				cur.Scheduler, cur.Persistence, vs.Scheduler, vs.Persistence)
		case !realsHold(vs.Reals, seen.reals[vs.VSKey]):
			obj.State, obj.Detail = model.Differs, "real servers "+realsText(seen.reals[vs.VSKey])+", want "+wantedText(vs.Reals)
		}
		obj.Name += " -> " + wantedText(vs.Reals)
		objs = append(objs, obj)
	}
	for _, a := range w.Addresses {
		objs = append(objs, present("address", DummyName+" "+a.String(), seen.addrs[a]))
	}
	for _, e := range w.Entries {
		objs = append(objs, present("set entry", e.String(), seen.entries[e]))
	}
	return objs
}

func present(kind, name string, ok bool) model.KernelObject {
	obj := model.KernelObject{Kind: kind, Name: name, State: model.InPlace}
	if !ok {
		obj.State = model.Missing
	}
	return obj
}

// wantedText spells real servers as "10.244.1.5:80 (1), ...".
func wantedText(reals []RealServer) string {
	if len(reals) == 0 {
		return "no real server"
	}
	parts := make([]string, len(reals))
	for i, rs := range reals {
		parts[i] = fmt.Sprintf("%s (%d)", rs.Addr, rs.Weight)
	}
	return strings.Join(parts, ", ")
}

func realsText(reals []RealStatus) string {
	plain := make([]RealServer, len(reals))
	for i, rs := range reals {
		plain[i] = rs.RealServer
	}
	return wantedText(plain)
}
