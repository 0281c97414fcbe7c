// Package conntrack deletes conntrack entries that a sync made stale, so that
// a UDP or SCTP client (a DNS resolver above all) fails over at once instead
// of sending into a dead endpoint until its entry times out. Which entries are
// stale is worked out purely from the previous and next NodeView (Plan);
// deleting them is netlink, behind the Table interface.
//
// At startup it also tunes the conntrack table as kube-proxy does: its
// limit and timeouts, planned purely from the configuration and the CPU
// count (PlanTuning), written under /proc/sys behind the Files interface
// (Tune).
package conntrack

import (
	"net/netip"
	"slices"

	"github.com/svcproxy/svcproxy/model"
)

// Flow describes conntrack entries to delete: those of Protocol, in Family,
// sent to Dst:DstPort and DNATed to Endpoint.
type Flow struct {
	Family   model.Family
	Protocol model.Protocol
	// Dst is the service address the client sent to; invalid for a
	// NodePort, which any node address answers.
	Dst     netip.Addr
	DstPort uint16
	// Endpoint is where the entry's replies come from: the endpoint it was
	// DNATed to. Invalid means entries that were not DNATed at all (their
	// reply comes from the address the client sent to): the ones a service
	// without endpoints left behind.
	Endpoint netip.AddrPort
}

// Entry is one conntrack entry as the kernel reports it.
type Entry struct {
	Protocol model.Protocol // 0 for protocols svcproxy does not serve
	Orig     Tuple          // the client's direction
	Reply    Tuple          // the direction of the answer
}

// Tuple is one direction of a conntrack entry.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// Matches reports whether the flow describes the entry.
func (f Flow) Matches(e Entry) bool {
	if e.Protocol != f.Protocol || e.Orig.Dst.Port() != f.DstPort || model.FamilyOf(e.Orig.Dst.Addr()) != f.Family {
		return false
	}
	if f.Dst.IsValid() && e.Orig.Dst.Addr() != f.Dst {
		return false
	}
	if f.Endpoint.IsValid() {
		return e.Reply.Src == f.Endpoint
	}
	return e.Reply.Src == e.Orig.Dst
}

// keepsState reports whether a protocol's conntrack entries outlive a
// change of rules in a way clients notice. TCP is left alone: a TCP client
// sees a reset or a timeout and reconnects, and deleting an established
// connection's entry would only break it sooner.
func keepsState(p model.Protocol) bool { return p == model.UDP || p == model.SCTP }

// Plan lists the flows a sync from prev to next made stale:
//   - for each UDP and SCTP service port, the endpoints prev kept flows to
//     that next does not, at every service address of prev (ClusterIP,
//     external IPs, load-balancer IPs, and the NodePort on any address).
//     Flows to an endpoint are kept while it serves, whatever the policies,
//     topology and termination leave to new connections (see kept), as
//     kube-proxy keeps them: a change of the Service does not break a flow
//     that a TCP connection would survive;
//   - for each UDP and SCTP service port that had no endpoints in prev and
//     has some in next, the flows to its addresses that were never DNATed.
//
// With prev nil (the first sync after a start) it plans nothing: svcproxy
// does not know what it programmed before, and a restart must not disturb
// working flows.
func Plan(prev, next *model.NodeView) []Flow {
	if prev == nil || next == nil {
		return nil
	}
	var flows []Flow
	for _, name := range prev.SortedNames() {
		if keepsState(name.Protocol) {
			flows = append(flows, goneEndpointFlows(prev.Family, prev.Services[name], next.Services[name])...)
		}
	}
	for _, name := range next.SortedNames() {
		if keepsState(name.Protocol) {
			flows = append(flows, revivedServiceFlows(next.Family, prev.Services[name], next.Services[name])...)
		}
	}
	return flows
}

// goneEndpointFlows: the flows from old's addresses to endpoints cur no
// longer keeps flows to (all of them if the service port is gone).
func goneEndpointFlows(family model.Family, old, cur *model.ServicePort) []Flow {
	still := map[netip.AddrPort]bool{}
	if cur != nil {
		for _, ep := range kept(cur) {
			still[ep] = true
		}
	}
	var flows []Flow
	for _, ep := range kept(old) {
		if !still[ep] {
			flows = append(flows, addressFlows(family, old, ep)...)
		}
	}
	return flows
}

// revivedServiceFlows: the undelivered flows to cur's addresses, if it just
// got its first endpoints.
func revivedServiceFlows(family model.Family, old, cur *model.ServicePort) []Flow {
	if len(endpoints(cur)) == 0 || (old != nil && len(endpoints(old)) > 0) {
		return nil
	}
	return addressFlows(family, cur, netip.AddrPort{})
}

// endpoints returns the distinct endpoint addresses a service port sends
// any traffic to, sorted.
func endpoints(sp *model.ServicePort) []netip.AddrPort {
	reachable := sp.ReachableEndpoints()
	eps := make([]netip.AddrPort, len(reachable))
	for i, ep := range reachable {
		eps[i] = ep.Addr
	}
	return eps
}

// kept returns the distinct endpoint addresses whose flows a service port
// keeps, sorted: those it sends traffic to and every other serving one
// (ready, or terminating and still serving, wherever it is). An endpoint
// that policies or topology leave out of new connections, or that is
// terminating, may still answer the flows it has.
func kept(sp *model.ServicePort) []netip.AddrPort {
	eps := endpoints(sp)
	for _, ep := range sp.Serving {
		eps = append(eps, ep.Addr)
	}
	slices.SortFunc(eps, netip.AddrPort.Compare)
	return slices.Compact(eps)
}

// addressFlows returns one flow per address the service port answers on.
func addressFlows(family model.Family, sp *model.ServicePort, ep netip.AddrPort) []Flow {
	flow := func(dst netip.Addr, port uint16) Flow {
		return Flow{Family: family, Protocol: sp.Protocol(), Dst: dst, DstPort: port, Endpoint: ep}
	}
	var flows []Flow
	if sp.ClusterIP.IsValid() {
		flows = append(flows, flow(sp.ClusterIP, sp.Port))
	}
	for _, ip := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
		flows = append(flows, flow(ip, sp.Port))
	}
	if sp.NodePort != 0 {
		flows = append(flows, flow(netip.Addr{}, sp.NodePort))
	}
	return flows
}

// PlanFromTable works out the stale flows from what the table holds rather
// than from a change: for the first sync after a start, when no earlier
// view exists. An entry is stale when it was sent to a UDP or SCTP service
// address of next and was DNATed to an endpoint next keeps no flows to, or was
// not DNATed at all although the port now has endpoints (a reject or a
// black hole cached from before). Entries to node ports count only when
// DNATed: which node addresses a node port answers on is not in the view.
func PlanFromTable(next *model.NodeView, entries []Entry) []Flow {
	ports := indexServiceAddresses(next)
	var flows []Flow
	for _, e := range entries {
		if !keepsState(e.Protocol) || model.FamilyOf(e.Orig.Dst.Addr()) != next.Family {
			continue
		}
		dnated := e.Reply.Src != e.Orig.Dst
		key := serviceAddress{e.Protocol, e.Orig.Dst}
		sp, byAddress := ports[key]
		if !byAddress && dnated {
			sp = ports[serviceAddress{e.Protocol, netip.AddrPortFrom(netip.Addr{}, e.Orig.Dst.Port())}]
		}
		if sp == nil || !staleEntry(sp, e, dnated) {
			continue
		}
		f := Flow{Family: next.Family, Protocol: e.Protocol, Dst: e.Orig.Dst.Addr(), DstPort: e.Orig.Dst.Port()}
		if !byAddress {
			f.Dst = netip.Addr{} // a node port, on whichever node address
		}
		if dnated {
			f.Endpoint = e.Reply.Src
		}
		flows = append(flows, f)
	}
	slices.SortFunc(flows, compareFlows)
	return slices.Compact(flows)
}

// serviceAddress is where a client sends to reach a service port; a node
// port has no address.
type serviceAddress struct {
	protocol model.Protocol
	dst      netip.AddrPort
}

func indexServiceAddresses(v *model.NodeView) map[serviceAddress]*model.ServicePort {
	index := map[serviceAddress]*model.ServicePort{}
	for _, sp := range v.Services {
		if !keepsState(sp.Protocol()) {
			continue
		}
		for _, f := range addressFlows(v.Family, sp, netip.AddrPort{}) {
			index[serviceAddress{sp.Protocol(), netip.AddrPortFrom(f.Dst, f.DstPort)}] = sp
		}
	}
	return index
}

// staleEntry reports whether an entry to sp's address is stale: DNATed to
// an endpoint sp keeps no flows to, or not DNATed while sp has somewhere
// to send it.
func staleEntry(sp *model.ServicePort, e Entry, dnated bool) bool {
	if !dnated {
		return len(endpoints(sp)) > 0
	}
	_, found := slices.BinarySearchFunc(kept(sp), e.Reply.Src, netip.AddrPort.Compare)
	return !found
}

func compareFlows(a, b Flow) int {
	if c := a.Dst.Compare(b.Dst); c != 0 {
		return c
	}
	if c := int(a.DstPort) - int(b.DstPort); c != 0 {
		return c
	}
	if c := int(a.Protocol) - int(b.Protocol); c != 0 {
		return c
	}
	return a.Endpoint.Compare(b.Endpoint)
}
