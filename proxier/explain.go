package proxier

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// EndpointUse is one endpoint of a service port as this node sees it, and
// why each kind of traffic does or does not go to it: what
// `svcproxy explain` shows.
type EndpointUse struct {
	Addr        netip.AddrPort `json:"addr"`
	Node        string         `json:"node,omitempty"`
	Zone        string         `json:"zone,omitempty"`
	Local       bool           `json:"local"`
	Ready       bool           `json:"ready"`
	Serving     bool           `json:"serving"`
	Terminating bool           `json:"terminating"`
	// Scopes are the endpoint lists of the port it is in: "cluster"
	// (traffic to the ClusterIP, and external traffic under the Cluster
	// policy), "local" (external traffic under externalTrafficPolicy
	// Local), "external" (external traffic when internalTrafficPolicy
	// Local narrows the cluster scope). Empty: no new connection goes to it.
	Scopes []string `json:"scopes"`
	// Why says, in words, what decided it.
	Why string `json:"why"`
}

// The scopes of EndpointUse.
const (
	ScopeCluster  = "cluster"
	ScopeLocal    = "local"
	ScopeExternal = "external"
)

// ExplainEndpoints tells why each endpoint of a port of the snapshot's
// services is or is not used on this node. It reruns the selection
// Compute made (the same candidates and topology mode), and reads the
// outcome from sp, the port Compute made, so the explanation cannot
// disagree with what is programmed. It returns nil for a port the
// snapshot does not hold.
func ExplainEndpoints(snap *Snapshot, sp *model.ServicePort, family model.Family) []EndpointUse {
	svc, ok := snap.Service(ServiceName{Namespace: sp.Name.Namespace, Name: sp.Name.Name})
	if !ok {
		return nil
	}
	i := slices.IndexFunc(svc.Ports, func(p ServicePortSpec) bool { return p.Name == sp.Name.Port && p.Protocol == sp.Name.Protocol })
	if i < 0 {
		return nil
	}
	cands := collectCandidates(nil, snap.EndpointSlices(svc.Name), family, svc.Ports[i], snap.Node.Name)
	mode := topologyFor(cands, svc.TrafficDistribution, snap.Node)
	uses := make([]EndpointUse, 0, len(cands))
	for i := range cands {
		c := &cands[i]
		u := EndpointUse{Addr: c.Addr, Node: c.src.NodeName, Zone: c.src.Zone, Local: c.Local,
			Ready: c.Ready, Serving: c.Serving, Terminating: c.Terminating}
		for _, scope := range []struct {
			name string
			eps  []model.Endpoint
		}{{ScopeCluster, sp.ClusterEndpoints}, {ScopeLocal, sp.LocalEndpoints}, {ScopeExternal, sp.ExternalClusterEndpoints}} {
			if slices.ContainsFunc(scope.eps, func(e model.Endpoint) bool { return e.Addr == c.Addr }) {
				u.Scopes = append(u.Scopes, scope.name)
			}
		}
		u.Why = why(c, sp, mode, snap.Node, u.Scopes)
		uses = append(uses, u)
	}
	return uses
}

// why puts into words what the selection of selectEndpoints decided.
func why(c *candidate, sp *model.ServicePort, mode topologyMode, node model.NodeInfo, scopes []string) string {
	var reasons []string
	switch {
	case c.Ready:
		reasons = append(reasons, "ready")
	case c.Serving && c.Terminating:
		if len(scopes) > 0 {
			reasons = append(reasons, "terminating but serving, used because no endpoint is ready")
		} else {
			reasons = append(reasons, "terminating: used only when no ready endpoint is left")
		}
	default:
		return "not serving"
	}
	if !c.Ready {
		return strings.Join(reasons, "; ")
	}
	if !mode.allows(c.src, node) {
		reasons = append(reasons, "topology keeps it from this node ("+mode.describe(c.src)+")")
	} else if mode != topologyAny {
		reasons = append(reasons, "topology lets this node use it ("+mode.describe(c.src)+")")
	}
	if !c.Local {
		if sp.InternalPolicyLocal {
			reasons = append(reasons, "on another node, and internalTrafficPolicy is Local")
		}
		if sp.ExternalPolicyLocal {
			reasons = append(reasons, "on another node, and externalTrafficPolicy is Local: external traffic keeps to this node's endpoints")
		}
	}
	return strings.Join(reasons, "; ")
}

// describe says what the mode looks at for an endpoint.
func (m topologyMode) describe(e *SliceEndpoint) string {
	switch m {
	case topologyNodeHints:
		return "hints for nodes " + strings.Join(e.NodeHints(), ",")
	case topologyZoneHints:
		return "hints for zones " + strings.Join(e.ZoneHints(), ",")
	case topologySameNode:
		return "trafficDistribution PreferSameNode, endpoint on " + orNone(e.NodeName)
	case topologySameZone:
		return "trafficDistribution prefers this node's zone, endpoint in " + orNone(e.Zone)
	}
	return "no narrowing"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
