// Package model holds svcproxy's value model: what Compute makes of the API's
// Services and EndpointSlices for one node and one IP family (NodeView), and
// what a backend reports of a sync. Backends see nothing else, so they link
// neither client-go nor Prometheus.
package model

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Protocol is a service port's L4 protocol.
type Protocol uint8

// The protocols a Service port can use. The zero value is not a protocol, so a
// forgotten field shows up in validation rather than silently meaning TCP.
const (
	TCP Protocol = iota + 1
	UDP
	SCTP
)

// String returns the Kubernetes spelling ("TCP", "UDP", "SCTP").
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Lower returns the spelling iptables and conntrack use ("tcp", "udp", "sctp").
func (p Protocol) Lower() string { return strings.ToLower(p.String()) }

// Number is the protocol's IP protocol number (6, 17, 132), as
// iptables-save prints matches such as xt_ipvs's --vproto.
func (p Protocol) Number() int {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case SCTP:
		return 132
	}
	return 0
}

// ParseProtocol accepts the Kubernetes spelling; empty means TCP, as in the API.
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "TCP", "":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "SCTP":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unsupported protocol %q", s)
}

// MarshalText spells the protocol as Kubernetes does, for JSON.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads the Kubernetes spelling.
func (p *Protocol) UnmarshalText(b []byte) error {
	parsed, err := ParseProtocol(string(b))
	*p = parsed
	return err
}

// Family is an IP family. Each backend instance programs one family.
type Family uint8

// The two IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// MarshalText spells the family "IPv4" or "IPv6", for JSON.
func (f Family) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText reads "IPv4" or "IPv6".
func (f *Family) UnmarshalText(b []byte) error {
	switch string(b) {
	case "IPv4":
		*f = IPv4
	case "IPv6":
		*f = IPv6
	default:
		return fmt.Errorf("unknown IP family %q", b)
	}
	return nil
}

// FamilyOf returns the family of a (valid) address; IPv4-mapped IPv6 counts as IPv6.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// ServicePortName identifies one port of one service: the unit svcproxy
// programs. It is comparable and used as a map key throughout.
type ServicePortName struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Port      string   `json:"port,omitempty"` // the port's name; "" for a service's only, unnamed port
	Protocol  Protocol `json:"protocol"`
}

func (n ServicePortName) String() string {
	return fmt.Sprintf("%s/%s:%s/%s", n.Namespace, n.Name, n.Port, n.Protocol)
}

// Compare orders names for deterministic output (namespace, name, port, protocol).
func (n ServicePortName) Compare(o ServicePortName) int {
	if c := strings.Compare(n.Namespace, o.Namespace); c != 0 {
		return c
	}
	if c := strings.Compare(n.Name, o.Name); c != 0 {
		return c
	}
	if c := strings.Compare(n.Port, o.Port); c != 0 {
		return c
	}
	return int(n.Protocol) - int(o.Protocol)
}

// Endpoint is one backend of a service port as this node should use it.
// It is comparable, so two views diff with ==.
type Endpoint struct {
	Addr        netip.AddrPort `json:"addr"`
	Local       bool           `json:"local"` // the endpoint runs on this node
	Ready       bool           `json:"ready"`
	Serving     bool           `json:"serving"`
	Terminating bool           `json:"terminating"`
}

func (e Endpoint) String() string { return e.Addr.String() }

// ServicePort is everything a backend needs to program one service port in
// one IP family on this node: the addresses it answers on and the endpoints
// that apply to each kind of traffic, after every policy has been resolved.
// Nothing Kubernetes-specific survives past this type.
type ServicePort struct {
	Name      ServicePortName `json:"name"`
	ClusterIP netip.Addr      `json:"clusterIP"`
	Port      uint16          `json:"port,omitempty"`
	NodePort  uint16          `json:"nodePort,omitempty"` // 0: none

	ExternalIPs     []netip.Addr   `json:"externalIPs,omitempty"`     // spec.externalIPs of this family, sorted
	LoadBalancerIPs []netip.Addr   `json:"loadBalancerIPs,omitempty"` // status.loadBalancer.ingress IPs of this family, sorted
	SourceRanges    []netip.Prefix `json:"sourceRanges,omitempty"`    // loadBalancerSourceRanges of this family, sorted; empty: all allowed

	// ExternalPolicyLocal: external traffic goes to node-local endpoints only
	// and keeps its client source address.
	ExternalPolicyLocal bool `json:"externalPolicyLocal"`
	// InternalPolicyLocal: traffic to the ClusterIP goes to node-local endpoints only.
	InternalPolicyLocal bool `json:"internalPolicyLocal"`

	AffinitySeconds     int32  `json:"affinitySeconds,omitempty"`     // ClientIP session affinity timeout; 0: no affinity
	HealthCheckNodePort uint16 `json:"healthCheckNodePort,omitempty"` // for ExternalPolicyLocal LoadBalancers; 0: none

	// ClusterEndpoints serve traffic to the ClusterIP (and external traffic
	// when ExternalPolicyLocal is false), after internalTrafficPolicy,
	// topology and the terminating fallback. Sorted by address.
	ClusterEndpoints []Endpoint `json:"clusterEndpoints,omitempty"`
	// LocalEndpoints are the node-local endpoints external traffic uses when
	// ExternalPolicyLocal is set (ready ones, else serving terminating ones).
	// Sorted by address.
	LocalEndpoints []Endpoint `json:"localEndpoints,omitempty"`
	// ExternalClusterEndpoints is set only when InternalPolicyLocal narrows
	// ClusterEndpoints to this node but the port is externally accessible:
	// external traffic under ExternalPolicyLocal=false, and pod traffic to
	// an external address (short-circuited as kube-proxy does), still go to
	// endpoints anywhere in the cluster, after topology. Sorted by address.
	ExternalClusterEndpoints []Endpoint `json:"externalClusterEndpoints,omitempty"`

	// Serving lists every endpoint of the port that is serving, ready or
	// terminating, anywhere, whatever the policies and topology leave to
	// this node: new connections do not go to those the lists above leave
	// out, but flows already there may go on (the IPVS mode keeps them as
	// real servers of weight 0). Sorted by address; usually the very
	// slice ClusterEndpoints is.
	Serving []Endpoint `json:"serving,omitempty"`

	// HasEndpoints: some endpoint anywhere in the cluster can serve
	// (ready, or serving and terminating), whatever the policies leave to
	// this node. It tells a port that has endpoints, just none for this
	// node's traffic (dropped, as kube-proxy does), from one that has none
	// at all (rejected).
	HasEndpoints bool `json:"hasEndpoints"`
}

// Protocol is a shorthand for Name.Protocol.
func (sp *ServicePort) Protocol() Protocol { return sp.Name.Protocol }

// ExternallyAccessible reports whether traffic from outside the cluster can
// reach this port (NodePort, external IPs or load-balancer IPs).
func (sp *ServicePort) ExternallyAccessible() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// ExternalEndpoints are the endpoints external traffic from outside the
// cluster is sent to.
func (sp *ServicePort) ExternalEndpoints() []Endpoint {
	if sp.ExternalPolicyLocal {
		return sp.LocalEndpoints
	}
	return sp.ClusterPolicyEndpoints()
}

// ClusterPolicyEndpoints are the endpoints anywhere in the cluster that
// Cluster traffic policy uses (kube-proxy's cluster endpoints): external
// traffic under ExternalPolicyLocal=false, and traffic from this node's pods
// to an external address, which is short-circuited to them even under
// ExternalPolicyLocal.
func (sp *ServicePort) ClusterPolicyEndpoints() []Endpoint {
	if sp.InternalPolicyLocal {
		return sp.ExternalClusterEndpoints
	}
	return sp.ClusterEndpoints
}

// ReachableEndpoints is every endpoint some traffic to this port can reach,
// sorted and without duplicates: what a backend makes per-endpoint state for.
func (sp *ServicePort) ReachableEndpoints() []Endpoint {
	all := slices.Concat(sp.ClusterEndpoints, sp.LocalEndpoints, sp.ExternalClusterEndpoints)
	slices.SortFunc(all, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	return slices.CompactFunc(all, func(a, b Endpoint) bool { return a.Addr == b.Addr })
}

// Equal reports whether two service ports would be programmed identically.
func (sp *ServicePort) Equal(o *ServicePort) bool {
	if sp == o {
		return true // successive views share unchanged ports (see Update)
	}
	return sp.Name == o.Name && sp.ClusterIP == o.ClusterIP && sp.Port == o.Port &&
		sp.NodePort == o.NodePort &&
		slices.Equal(sp.ExternalIPs, o.ExternalIPs) &&
		slices.Equal(sp.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(sp.SourceRanges, o.SourceRanges) &&
		sp.ExternalPolicyLocal == o.ExternalPolicyLocal &&
		sp.InternalPolicyLocal == o.InternalPolicyLocal &&
		sp.AffinitySeconds == o.AffinitySeconds &&
		sp.HealthCheckNodePort == o.HealthCheckNodePort &&
		sp.HasEndpoints == o.HasEndpoints &&
		slices.Equal(sp.ClusterEndpoints, o.ClusterEndpoints) &&
		slices.Equal(sp.LocalEndpoints, o.LocalEndpoints) &&
		slices.Equal(sp.ExternalClusterEndpoints, o.ExternalClusterEndpoints) &&
		slices.Equal(sp.Serving, o.Serving)
}

// NodeInfo is what svcproxy knows of the node it runs on.
type NodeInfo struct {
	Name      string         `json:"name"`
	Zone      string         `json:"zone,omitempty"`      // topology.kubernetes.io/zone label; "" if unset
	Addresses []netip.Addr   `json:"addresses,omitempty"` // from Node.status.addresses (InternalIP, ExternalIP)
	PodCIDRs  []netip.Prefix `json:"podCIDRs,omitempty"`  // from Node.spec.podCIDRs
}

// NodeView is the outcome of Compute for one IP family: every service port
// this node must program, keyed by name. Backends see nothing else. A view
// and its ServicePorts are immutable once made: successive views share the
// ports that did not change.
type NodeView struct {
	Family   Family
	Node     NodeInfo
	Services map[ServicePortName]*ServicePort

	// id names a view made by NewNodeView or Derive; base is the id of
	// the view it was derived from, and touched the ports Set or Delete
	// gave since. With them ChangedPorts between a view and its base
	// looks at those ports alone: at 10,000 services a one-endpoint change
	// touches one port, and walking all of them was a fifth of its sync.
	// Ids, not pointers, so that a view does not keep its base alive.
	id, base uint64
	touched  []ServicePortName
}

var lastViewID atomic.Uint64

// NewNodeView makes an empty view with room for size ports.
func NewNodeView(family Family, node NodeInfo, size int) *NodeView {
	return &NodeView{Family: family, Node: node, Services: make(map[ServicePortName]*ServicePort, size),
		id: lastViewID.Add(1)}
}

// Derive makes a view for node holding v's ports, to be changed by Set
// and Delete only, which record what they touch. v is not modified.
func (v *NodeView) Derive(node NodeInfo) *NodeView {
	// A base of 0 (v a view literal) marks no lineage.
	return &NodeView{Family: v.Family, Node: node, Services: maps.Clone(v.Services), id: lastViewID.Add(1), base: v.id}
}

// Set adds or replaces a port of a view being made.
func (v *NodeView) Set(sp *ServicePort) {
	if v.base != 0 {
		v.touched = append(v.touched, sp.Name)
	}
	v.Services[sp.Name] = sp
}

// Delete removes a port of a view being made.
func (v *NodeView) Delete(name ServicePortName) {
	if v.base != 0 {
		v.touched = append(v.touched, name)
	}
	delete(v.Services, name)
}

// SortedNames returns the view's service port names in a stable order, for
// deterministic compilation.
func (v *NodeView) SortedNames() []ServicePortName {
	names := make([]ServicePortName, 0, len(v.Services))
	for n := range v.Services {
		names = append(names, n)
	}
	slices.SortFunc(names, ServicePortName.Compare)
	return names
}

// PacketCounts are the packets a backend's rules have counted since the
// process started, for kube-proxy's nfacct-based metrics.
type PacketCounts struct {
	// InvalidDropped: packets dropped because conntrack found them INVALID.
	InvalidDropped uint64
	// LocalhostNodePortsAccepted: new connections node ports accepted on
	// 127.0.0.0/8.
	LocalhostNodePortsAccepted uint64
}

// SyncResult reports what one backend sync did, for logs, metrics and
// benchmarks, in terms that hold for every mode.
type SyncResult struct {
	Full bool
	// KernelOps counts the requests the sync made of the kernel: one per
	// iptables-restore or other program run, one per netlink request.
	KernelOps int
	// Written and Deleted count the kernel objects the sync created or
	// changed, and removed: chains in the iptables mode; virtual servers,
	// real servers, addresses and set members in the IPVS mode.
	Written, Deleted int
	// Rules counts the iptables rules written; Bytes is the size of the
	// iptables-restore input.
	Rules, Bytes int
	// RestoreFailed: the sync failed in iptables-restore, which is what
	// kube-proxy's restore failure metrics count.
	RestoreFailed bool
	// Tables counts the rules of svcproxy's own iptables chains by table,
	// for kube-proxy's sync_proxy_rules_iptables_* metrics; only the
	// iptables mode reports them (nil otherwise), and only after a sync
	// that succeeded.
	Tables *TableRules
	// RecheckAfter, when positive, asks for another sync after that long
	// even if nothing changes: the backend has work in progress, such as
	// real servers draining their connections.
	RecheckAfter time.Duration
}

// TableRules counts iptables rules in the filter and nat tables: those a
// sync wrote, and those svcproxy's chains hold after it.
type TableRules struct {
	FilterWritten, NATWritten int
	FilterTotal, NATTotal     int
}

// ChangedPorts lists, in order, the ports added, removed or changed
// between two views.
//
// A view derived from prev (Derive) is compared on the ports it touched;
// any other pair, on all of both views' ports.
func ChangedPorts(view, prev *NodeView) []ServicePortName {
	if prev.id != 0 && view.base == prev.id {
		return changedAmong(view, prev, view.touched)
	}
	return changedPortsWalk(view, prev)
}

func changedAmong(view, prev *NodeView, names []ServicePortName) []ServicePortName {
	names = slices.Clone(names)
	slices.SortFunc(names, ServicePortName.Compare)
	names = slices.Compact(names)
	return slices.DeleteFunc(names, func(name ServicePortName) bool { return !portChanged(view, prev, name) })
}

func portChanged(view, prev *NodeView, name ServicePortName) bool {
	sp, inView := view.Services[name]
	old, inPrev := prev.Services[name]
	return inView != inPrev || (inView && old != sp && !old.Equal(sp))
}

func changedPortsWalk(view, prev *NodeView) []ServicePortName {
	var changed []ServicePortName
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
	slices.SortFunc(changed, ServicePortName.Compare)
	return changed
}
