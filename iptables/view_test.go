package iptables_test

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// The test world: this node is 192.168.1.10 (and fd00:192::10), its pods are
// in 10.244.1.0/24, other nodes' pods elsewhere in 10.244.0.0/16, and
// clients outside the cluster at 203.0.113.0/24.
var (
	podCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}
	testCfg  = netfilter.Config{ClusterCIDRs: podCIDRs}
)

// portOpt changes a service port under construction.
type portOpt func(*portSpec)

// portSpec is a service port as a test states it: every endpoint of the
// service, whatever the policies; finish resolves the policies into the
// endpoint lists the way Compute does.
type portSpec struct {
	sp  model.ServicePort
	all []model.Endpoint
}

// port builds a service port "ns/name:portName" of protocol proto on clusterIP:port.
func port(ns, name, portName string, proto model.Protocol, clusterIP string, p uint16, opts ...portOpt) *model.ServicePort {
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
	sp.HasEndpoints = len(s.all) > 0
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

// eps sets the endpoints: "10.244.2.5:8080" is on another node,
// "local 10.244.1.5:8080" on this one.
func eps(addrs ...string) portOpt {
	return func(s *portSpec) {
		s.all = nil
		for _, a := range addrs {
			ep := model.Endpoint{Ready: true, Serving: true}
			if rest, ok := strings.CutPrefix(a, "local "); ok {
				a, ep.Local = rest, true
			}
			ep.Addr = netip.MustParseAddrPort(a)
			s.all = append(s.all, ep)
		}
		slices.SortFunc(s.all, func(a, b model.Endpoint) int { return a.Addr.Compare(b.Addr) })
	}
}

func nodePort(np uint16) portOpt { return func(s *portSpec) { s.sp.NodePort = np } }

func externalIPs(ips ...string) portOpt {
	return func(s *portSpec) { s.sp.ExternalIPs = addrs(ips) }
}

func loadBalancer(ips ...string) portOpt {
	return func(s *portSpec) { s.sp.LoadBalancerIPs = addrs(ips) }
}

func sourceRanges(prefixes ...string) portOpt {
	return func(s *portSpec) {
		for _, p := range prefixes {
			s.sp.SourceRanges = append(s.sp.SourceRanges, netip.MustParsePrefix(p))
		}
	}
}

func externalLocal(healthCheckNodePort uint16) portOpt {
	return func(s *portSpec) {
		s.sp.ExternalPolicyLocal, s.sp.HealthCheckNodePort = true, healthCheckNodePort
	}
}

func internalLocal() portOpt { return func(s *portSpec) { s.sp.InternalPolicyLocal = true } }

func affinity(seconds int32) portOpt { return func(s *portSpec) { s.sp.AffinitySeconds = seconds } }

func addrs(ss []string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// view builds the NodeView of one family holding the ports.
func view(family model.Family, ports ...*model.ServicePort) *model.NodeView {
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

// withPort returns a copy of v with p added or replaced.
func withPort(v *model.NodeView, p *model.ServicePort) *model.NodeView {
	out := clone(v)
	out.Services[p.Name] = p
	return out
}

// withoutPort returns a copy of v without the port named n.
func withoutPort(v *model.NodeView, n model.ServicePortName) *model.NodeView {
	out := clone(v)
	delete(out.Services, n)
	return out
}

func clone(v *model.NodeView) *model.NodeView {
	out := *v
	out.Services = maps.Clone(v.Services)
	return &out
}
