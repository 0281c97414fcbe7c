package proxier

import (
	"github.com/svcproxy/svcproxy/model"
	"net/netip"
	"slices"
)

// Compute works out, for one IP family, every service port this node must
// program and the endpoints each kind of traffic uses. It is pure: the same
// snapshot gives an Equal view, and nothing in the snapshot is modified.
// A NodeView and its ServicePorts must be treated as immutable: Update
// shares ServicePorts between views.
func Compute(snap *Snapshot, family model.Family) *model.NodeView {
	view := model.NewNodeView(family, snap.Node, snap.NumServices())
	// scratch is reused across ports: candidates never outlive one port.
	var scratch []candidate
	for svc := range snap.Services() {
		scratch = addServicePorts(view, svc, snap, scratch)
	}
	return view
}

// Update returns what Compute(snap, family) returns, reusing the service
// ports of prev, which must have been computed (by Compute or Update) from
// prevSnap; with no prev (nil) it is Compute. A service's ports are reused only when its Service
// and EndpointSlices are the very objects prevSnap held and the node is
// unchanged: the tracker replaces, never edits, what it stores, so identity
// proves the inputs equal. prevSnap need not be the snapshot just before
// snap, so a failed sync costs no correctness. On the hot path of a
// one-endpoint change this turns O(services × endpoints) work into
// O(services) pointer comparisons plus the changed services.
func Update(snap *Snapshot, family model.Family, prevSnap *Snapshot, prev *model.NodeView) *model.NodeView {
	if prev == nil || prevSnap == nil || prev.Family != family ||
		!nodeEqual(prev.Node, snap.Node) || !nodeEqual(prevSnap.Node, snap.Node) {
		return Compute(snap, family)
	}
	view := prev.Derive(snap.Node)
	changed := changedBetween(prevSnap, snap)
	for _, name := range changed {
		if old, ok := prevSnap.services.Get(name); ok {
			for _, spec := range old.Ports {
				view.Delete(name.PortName(spec.Name, spec.Protocol))
			}
		}
	}
	var scratch []candidate
	for _, name := range changed {
		if svc, ok := snap.services.Get(name); ok {
			scratch = addServicePorts(view, svc, snap, scratch)
		}
	}
	return view
}

// changedBetween lists the services whose inputs may differ between two
// snapshots. For consecutive snapshots the tracker's own list is exact
// (services it left out are Equal, so their ports are too); otherwise every
// service is compared by identity.
func changedBetween(prevSnap, snap *Snapshot) []ServiceName {
	if snap.follows(prevSnap) {
		return snap.ChangedServices
	}
	var changed []ServiceName
	for name := range prevSnap.services.All() {
		if !sameInputs(prevSnap, snap, name) {
			changed = append(changed, name)
		}
	}
	for name := range snap.services.All() {
		if _, known := prevSnap.services.Get(name); !known {
			changed = append(changed, name)
		}
	}
	return changed
}

// sameInputs reports whether a service's stored objects are identical in
// two snapshots.
func sameInputs(a, b *Snapshot, name ServiceName) bool {
	if a.services.Value(name) != b.services.Value(name) {
		return false
	}
	return slices.Equal(a.slices.Value(name), b.slices.Value(name))
}

// addServicePorts adds a service's ports in the view's family, if it has a
// ClusterIP of that family.
func addServicePorts(view *model.NodeView, svc *Service, snap *Snapshot, scratch []candidate) []candidate {
	clusterIP, ok := svc.ClusterIP(view.Family)
	if !ok {
		return scratch
	}
	svcSlices := snap.EndpointSlices(svc.Name)
	for _, spec := range svc.Ports {
		sp := servicePort(svc, spec, clusterIP, view.Family)
		scratch = collectCandidates(scratch[:0], svcSlices, view.Family, spec, snap.Node.Name)
		selectEndpoints(sp, scratch, svc.TrafficDistribution, snap.Node)
		view.Set(sp)
	}
	return scratch
}

// servicePort fills in everything but the endpoints.
func servicePort(svc *Service, spec ServicePortSpec, clusterIP netip.Addr, family model.Family) *model.ServicePort {
	return &model.ServicePort{
		Name:                svc.Name.PortName(spec.Name, spec.Protocol),
		ClusterIP:           clusterIP,
		Port:                spec.Port,
		NodePort:            spec.NodePort,
		ExternalIPs:         ofFamily(svc.ExternalIPs, family, netip.Addr.Is4),
		LoadBalancerIPs:     ofFamily(svc.LoadBalancerIPs, family, netip.Addr.Is4),
		SourceRanges:        ofFamily(svc.SourceRanges, family, func(p netip.Prefix) bool { return p.Addr().Is4() }),
		ExternalPolicyLocal: svc.ExternalPolicyLocal,
		InternalPolicyLocal: svc.InternalPolicyLocal,
		AffinitySeconds:     svc.AffinitySeconds,
		HealthCheckNodePort: svc.HealthCheckNodePort,
	}
}

// ofFamily returns the members of a sorted list in one family, as a new
// list (the input belongs to the snapshot), or nil if there are none.
func ofFamily[T any](all []T, family model.Family, is4 func(T) bool) []T {
	var out []T
	for _, x := range all {
		if is4(x) == (family == model.IPv4) {
			out = append(out, x)
		}
	}
	return out
}

// candidate is an endpoint of a service port before policy and topology:
// the model's Endpoint plus the slice entry it came from, for its hints.
type candidate struct {
	model.Endpoint
	src *SliceEndpoint
}

// collectCandidates gathers the endpoints of one service port from slices of
// the family whose port matches by name and protocol, sorted by address and
// deduplicated. When two slices list one address (an endpoint moving between
// slices), the first in slice-name order wins unless a later one is local,
// as in kube-proxy; iterating slices in name order makes that deterministic.
func collectCandidates(out []candidate, svcSlices []*EndpointSlice, family model.Family, spec ServicePortSpec, nodeName string) []candidate {
	for _, es := range svcSlices {
		if es.Family != family {
			continue
		}
		port, ok := matchingPort(es.Ports, spec)
		if !ok {
			continue
		}
		for i := range es.Endpoints {
			e := &es.Endpoints[i]
			out = append(out, candidate{
				Endpoint: model.Endpoint{
					Addr:        netip.AddrPortFrom(e.Addr, port),
					Local:       nodeName != "" && e.NodeName == nodeName,
					Ready:       e.Ready,
					Serving:     e.Serving,
					Terminating: e.Terminating,
				},
				src: e,
			})
		}
	}
	slices.SortStableFunc(out, func(a, b candidate) int { return a.Addr.Compare(b.Addr) })
	return dedupCandidates(out)
}

func matchingPort(ports []EndpointPort, spec ServicePortSpec) (uint16, bool) {
	for _, p := range ports {
		if p.Name == spec.Name && p.Protocol == spec.Protocol {
			return p.Port, true
		}
	}
	return 0, false
}

// dedupCandidates keeps one candidate per address from a stably sorted list:
// the first, or the first local one if there is one.
func dedupCandidates(sorted []candidate) []candidate {
	out := sorted[:0]
	for i := 0; i < len(sorted); {
		j, keep := i+1, sorted[i]
		for ; j < len(sorted) && sorted[j].Addr == keep.Addr; j++ {
			if sorted[j].Local && !keep.Local {
				keep = sorted[j]
			}
		}
		out = append(out, keep)
		i = j
	}
	return out
}

// selectEndpoints resolves traffic policies, topology and the terminating
// fallback into the port's endpoint lists, following kube-proxy's
// CategorizeEndpoints: Cluster policy uses ready endpoints allowed by
// topology, else serving terminating ones; Local policy uses local ready
// endpoints, else local serving terminating ones, and never remote ones.
func selectEndpoints(sp *model.ServicePort, cands []candidate, dist TrafficDistribution, node model.NodeInfo) {
	if len(cands) == 0 {
		return
	}
	sp.HasEndpoints = slices.ContainsFunc(cands, func(c candidate) bool { return c.Ready || (c.Serving && c.Terminating) })
	external := sp.ExternallyAccessible()
	usesClusterPolicy := !sp.InternalPolicyLocal || external
	usesLocalPolicy := sp.InternalPolicyLocal || sp.ExternalPolicyLocal

	var clusterPolicy, localPolicy []model.Endpoint
	if usesClusterPolicy {
		clusterPolicy = clusterPolicyEndpoints(cands, topologyFor(cands, dist, node), node)
	}
	if usesLocalPolicy {
		localPolicy = localPolicyEndpoints(cands)
	}

	if sp.InternalPolicyLocal {
		sp.ClusterEndpoints = localPolicy
		if external {
			sp.ExternalClusterEndpoints = clusterPolicy
		}
	} else {
		sp.ClusterEndpoints = clusterPolicy
	}
	if sp.ExternalPolicyLocal {
		sp.LocalEndpoints = localPolicy
	}
	sp.Serving = pick(cands, func(c *candidate) bool { return c.Serving })
	if slices.Equal(sp.Serving, sp.ClusterEndpoints) {
		sp.Serving = sp.ClusterEndpoints // the usual case costs no memory
	}
}

// clusterPolicyEndpoints are the ready endpoints topology allows, else the
// serving terminating ones. The fallback needs no topology filter: a
// topology mode is only chosen when it leaves at least one ready endpoint,
// so the fallback only runs when no endpoint anywhere is ready.
func clusterPolicyEndpoints(cands []candidate, mode topologyMode, node model.NodeInfo) []model.Endpoint {
	eps := pick(cands, func(c *candidate) bool { return c.Ready && mode.allows(c.src, node) })
	if eps == nil {
		eps = pick(cands, func(c *candidate) bool { return c.Serving && c.Terminating })
	}
	return eps
}

func localPolicyEndpoints(cands []candidate) []model.Endpoint {
	eps := pick(cands, func(c *candidate) bool { return c.Local && c.Ready })
	if eps == nil {
		eps = pick(cands, func(c *candidate) bool { return c.Local && c.Serving && c.Terminating })
	}
	return eps
}

// pick returns the chosen candidates' endpoints, in order, or nil if none.
func pick(cands []candidate, keep func(*candidate) bool) []model.Endpoint {
	n := 0
	for i := range cands {
		if keep(&cands[i]) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]model.Endpoint, 0, n)
	for i := range cands {
		if keep(&cands[i]) {
			out = append(out, cands[i].Endpoint)
		}
	}
	return out
}
