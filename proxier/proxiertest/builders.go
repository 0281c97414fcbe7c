// Package proxiertest builds Kubernetes Services and EndpointSlices for
// tests, tersely: a test states only the fields it is about.
//
//	svc := proxiertest.Service("ns", "web", []string{"10.96.0.10"},
//		proxiertest.Port("http", "TCP", 80), proxiertest.NodePort("http", 30080))
//	es := proxiertest.Slice("ns", "web-1", "web", proxiertest.SlicePort("http", "TCP", 8080),
//		proxiertest.Endpoints(proxiertest.Ready("10.0.0.1", "node-a"),
//			proxiertest.Terminating("10.0.0.2", "node-b", true)))
package proxiertest

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServiceOption changes a Service under construction.
type ServiceOption func(*v1.Service)

// Service returns a ClusterIP Service; clusterIPs are the family addresses,
// primary first ("None" for headless, none for no ClusterIP at all).
func Service(namespace, name string, clusterIPs []string, opts ...ServiceOption) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIPs: clusterIPs},
	}
	if len(clusterIPs) > 0 {
		svc.Spec.ClusterIP = clusterIPs[0]
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

// Port adds a port (protocol "TCP", "UDP", "SCTP", or anything for invalid input).
func Port(name, protocol string, port int32) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: name, Protocol: v1.Protocol(protocol), Port: port})
	}
}

// NodePort makes the service type NodePort and sets the node port of the
// port named portName.
func NodePort(portName string, nodePort int32) ServiceOption {
	return func(s *v1.Service) {
		if s.Spec.Type == v1.ServiceTypeClusterIP {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		for i := range s.Spec.Ports {
			if s.Spec.Ports[i].Name == portName {
				s.Spec.Ports[i].NodePort = nodePort
			}
		}
	}
}

// LoadBalancer makes the service type LoadBalancer with VIP-mode ingress IPs.
func LoadBalancer(ingressIPs ...string) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		for _, ip := range ingressIPs {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

// ProxyModeIngress adds a load-balancer ingress IP with ipMode Proxy.
func ProxyModeIngress(ip string) ServiceOption {
	return func(s *v1.Service) {
		mode := v1.LoadBalancerIPModeProxy
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip, IPMode: &mode})
	}
}

// ExternalIPs sets spec.externalIPs.
func ExternalIPs(ips ...string) ServiceOption {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

// SourceRanges sets spec.loadBalancerSourceRanges.
func SourceRanges(cidrs ...string) ServiceOption {
	return func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = cidrs }
}

// ExternalLocal sets externalTrafficPolicy Local and the health check node port.
func ExternalLocal(healthCheckNodePort int32) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

// InternalLocal sets internalTrafficPolicy Local.
func InternalLocal() ServiceOption {
	return func(s *v1.Service) {
		p := v1.ServiceInternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = &p
	}
}

// Affinity sets ClientIP session affinity; timeout 0 leaves the timeout unset.
func Affinity(timeout int32) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		if timeout != 0 {
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &timeout}}
		}
	}
}

// Distribution sets spec.trafficDistribution.
func Distribution(d string) ServiceOption {
	return func(s *v1.Service) { s.Spec.TrafficDistribution = &d }
}

// ExternalName makes the service type ExternalName.
func ExternalName(host string) ServiceOption {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeExternalName
		s.Spec.ExternalName = host
	}
}

// SliceOption changes an EndpointSlice under construction.
type SliceOption func(*discoveryv1.EndpointSlice)

// Slice returns an EndpointSlice labelled for service; its address type
// follows the first endpoint's address (IPv4 if none or unparsable).
func Slice(namespace, name, service string, opts ...SliceOption) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: service},
		},
	}
	for _, o := range opts {
		o(es)
	}
	if es.AddressType == "" {
		es.AddressType = discoveryv1.AddressTypeIPv4
		if len(es.Endpoints) > 0 && len(es.Endpoints[0].Addresses) > 0 {
			if a, err := netip.ParseAddr(es.Endpoints[0].Addresses[0]); err == nil && a.Is6() {
				es.AddressType = discoveryv1.AddressTypeIPv6
			}
		}
	}
	return es
}

// AddressType sets the slice's address type explicitly.
func AddressType(t discoveryv1.AddressType) SliceOption {
	return func(es *discoveryv1.EndpointSlice) { es.AddressType = t }
}

// SlicePort adds a port (protocol "" leaves it nil, meaning TCP).
func SlicePort(name, protocol string, port int32) SliceOption {
	return func(es *discoveryv1.EndpointSlice) {
		p := discoveryv1.EndpointPort{Name: &name, Port: &port}
		if protocol != "" {
			proto := v1.Protocol(protocol)
			p.Protocol = &proto
		}
		es.Ports = append(es.Ports, p)
	}
}

// TriggerTime sets the last-change-trigger-time annotation verbatim.
func TriggerTime(rfc3339 string) SliceOption {
	return func(es *discoveryv1.EndpointSlice) {
		if es.Annotations == nil {
			es.Annotations = map[string]string{}
		}
		es.Annotations[v1.EndpointsLastChangeTriggerTime] = rfc3339
	}
}

// Endpoint describes one slice endpoint; the zero value of each condition is
// the API's nil (ready: true, serving: as ready, terminating: false).
type Endpoint struct {
	Addr        string
	Node, Zone  string
	Ready       *bool
	Serving     *bool
	Terminating *bool
	ForZones    []string
	ForNodes    []string
}

// Endpoints adds endpoints to the slice.
func Endpoints(eps ...Endpoint) SliceOption {
	return func(es *discoveryv1.EndpointSlice) {
		for _, e := range eps {
			es.Endpoints = append(es.Endpoints, e.build())
		}
	}
}

func (e Endpoint) build() discoveryv1.Endpoint {
	out := discoveryv1.Endpoint{
		Addresses:  []string{e.Addr},
		Conditions: discoveryv1.EndpointConditions{Ready: e.Ready, Serving: e.Serving, Terminating: e.Terminating},
	}
	if e.Node != "" {
		out.NodeName = &e.Node
	}
	if e.Zone != "" {
		out.Zone = &e.Zone
	}
	if len(e.ForZones) > 0 || len(e.ForNodes) > 0 {
		out.Hints = &discoveryv1.EndpointHints{}
		for _, z := range e.ForZones {
			out.Hints.ForZones = append(out.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
		for _, n := range e.ForNodes {
			out.Hints.ForNodes = append(out.Hints.ForNodes, discoveryv1.ForNode{Name: n})
		}
	}
	return out
}

// Ready is a ready endpoint on node.
func Ready(addr, node string) Endpoint { return Endpoint{Addr: addr, Node: node} }

// NotReady is an endpoint that is neither ready nor serving.
func NotReady(addr, node string) Endpoint {
	return Endpoint{Addr: addr, Node: node, Ready: Bool(false), Serving: Bool(false)}
}

// Terminating is a terminating endpoint on node, serving or not.
func Terminating(addr, node string, serving bool) Endpoint {
	return Endpoint{Addr: addr, Node: node, Ready: Bool(false), Serving: Bool(serving), Terminating: Bool(true)}
}

// InZone returns e in zone.
func (e Endpoint) InZone(zone string) Endpoint { e.Zone = zone; return e }

// HintZones returns e with hints.forZones.
func (e Endpoint) HintZones(zones ...string) Endpoint { e.ForZones = zones; return e }

// HintNodes returns e with hints.forNodes.
func (e Endpoint) HintNodes(nodes ...string) Endpoint { e.ForNodes = nodes; return e }

// Bool returns a pointer to b.
func Bool(b bool) *bool { return &b }
