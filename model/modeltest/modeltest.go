// Package modeltest builds model values for backend tests: service ports
// stated as a test thinks of them, the views that hold them, and a
// generator of arbitrary views for property and fuzz tests.
package modeltest

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// The test world: this node is 192.168.1.10 (and fd00:192::10), its pods are
// in 10.244.1.0/24, other nodes' pods elsewhere in 10.244.0.0/16, and
// clients outside the cluster at 203.0.113.0/24.
var PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}

// PortOpt changes a service port under construction.
type PortOpt func(*portSpec)

// portSpec is a service port as a test states it: every endpoint of the
// service, whatever the policies; finish resolves the policies into the
// endpoint lists the way Compute does.
type portSpec struct {
	sp  model.ServicePort
	all []model.Endpoint
	// terminating are serving, terminating endpoints: used only when no
	// endpoint is ready, as Compute does.
	terminating []model.Endpoint
}

// Port builds a service port "ns/name:portName" of protocol proto on clusterIP:port.
func Port(ns, name, portName string, proto model.Protocol, clusterIP string, p uint16, opts ...PortOpt) *model.ServicePort {
	s := &portSpec{sp: model.ServicePort{
		Name: model.ServicePortName{Namespace: ns, Name: name, Port: portName, Protocol: proto},
		Port: p,
	}}
	if clusterIP != "" {
		s.sp.ClusterIP = netip.MustParseAddr(clusterIP)
	}
	for _, o := range opts {
		o(s)
	}
	return s.finish()
}

func (s *portSpec) finish() *model.ServicePort {
	sp := s.sp
	sp.HasEndpoints = len(s.all)+len(s.terminating) > 0
	sp.Serving = slices.Concat(s.all, s.terminating)
	slices.SortFunc(sp.Serving, func(a, b model.Endpoint) int { return a.Addr.Compare(b.Addr) })
	if len(s.all) == 0 {
		s.all = s.terminating
	}
	var local []model.Endpoint
	for _, ep := range s.all {
		if ep.Local {
			local = append(local, ep)
		}
	}
	if sp.InternalPolicyLocal {
		sp.ClusterEndpoints = local
		if sp.ExternallyAccessible() {
			sp.ExternalClusterEndpoints = s.all
		}
	} else {
		sp.ClusterEndpoints = s.all
	}
	if sp.ExternalPolicyLocal {
		sp.LocalEndpoints = local
	}
	return &sp
}

// Eps sets the endpoints: "10.244.2.5:8080" is on another node,
// "local 10.244.1.5:8080" on this one.
func Eps(addrs ...string) PortOpt {
	return func(s *portSpec) { s.all = endpoints(addrs, false) }
}

// Terminating adds serving, terminating endpoints, written as for Eps:
// new connections go to them only when no endpoint is ready, but their
// flows may go on.
func Terminating(addrs ...string) PortOpt {
	return func(s *portSpec) { s.terminating = endpoints(addrs, true) }
}

func endpoints(addrs []string, terminating bool) []model.Endpoint {
	var eps []model.Endpoint
	for _, a := range addrs {
		ep := model.Endpoint{Ready: !terminating, Serving: true, Terminating: terminating}
		if rest, ok := strings.CutPrefix(a, "local "); ok {
			a, ep.Local = rest, true
		}
		ep.Addr = netip.MustParseAddrPort(a)
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b model.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return eps
}

// NodePort gives the port a node port.
func NodePort(np uint16) PortOpt { return func(s *portSpec) { s.sp.NodePort = np } }

// ExternalIPs sets the port's external IPs.
func ExternalIPs(ips ...string) PortOpt {
	return func(s *portSpec) { s.sp.ExternalIPs = Addrs(ips) }
}

// LoadBalancer sets the port's load-balancer ingress IPs.
func LoadBalancer(ips ...string) PortOpt {
	return func(s *portSpec) { s.sp.LoadBalancerIPs = Addrs(ips) }
}

// SourceRanges sets loadBalancerSourceRanges.
func SourceRanges(prefixes ...string) PortOpt {
	return func(s *portSpec) {
		for _, p := range prefixes {
			s.sp.SourceRanges = append(s.sp.SourceRanges, netip.MustParsePrefix(p))
		}
	}
}

// ExternalLocal sets externalTrafficPolicy Local and its health check port.
func ExternalLocal(healthCheckNodePort uint16) PortOpt {
	return func(s *portSpec) {
		s.sp.ExternalPolicyLocal, s.sp.HealthCheckNodePort = true, healthCheckNodePort
	}
}

// InternalLocal sets internalTrafficPolicy Local.
func InternalLocal() PortOpt { return func(s *portSpec) { s.sp.InternalPolicyLocal = true } }

// Affinity sets ClientIP session affinity with a timeout.
func Affinity(seconds int32) PortOpt { return func(s *portSpec) { s.sp.AffinitySeconds = seconds } }

// Addrs parses and sorts addresses.
func Addrs(ss []string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// View builds the NodeView of one family holding the ports.
func View(family model.Family, ports ...*model.ServicePort) *model.NodeView {
	v := &model.NodeView{
		Family: family,
		Node: model.NodeInfo{
			Name:      "node-1",
			Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00:192::10")},
			PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		},
		Services: map[model.ServicePortName]*model.ServicePort{},
	}
	for _, p := range ports {
		v.Services[p.Name] = p
	}
	return v
}

// WithPort returns a copy of v with p added or replaced.
func WithPort(v *model.NodeView, p *model.ServicePort) *model.NodeView {
	out := Clone(v)
	out.Services[p.Name] = p
	return out
}

// WithoutPort returns a copy of v without the port named n.
func WithoutPort(v *model.NodeView, n model.ServicePortName) *model.NodeView {
	out := Clone(v)
	delete(out.Services, n)
	return out
}

// Clone copies a view, sharing its ports.
func Clone(v *model.NodeView) *model.NodeView {
	out := *v
	out.Services = maps.Clone(v.Services)
	return &out
}
