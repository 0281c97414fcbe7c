package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unique"

	"github.com/svcproxy/svcproxy/model"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// ServiceName identifies a Service (and the EndpointSlices that belong to it).
type ServiceName struct {
	Namespace string
	Name      string
}

func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// Compare orders names by namespace, then name.
func (n ServiceName) Compare(o ServiceName) int {
	if c := strings.Compare(n.Namespace, o.Namespace); c != 0 {
		return c
	}
	return strings.Compare(n.Name, o.Name)
}

// PortName names one port of this service.
func (n ServiceName) PortName(port string, proto model.Protocol) model.ServicePortName {
	return model.ServicePortName{Namespace: n.Namespace, Name: n.Name, Port: port, Protocol: proto}
}

// TrafficDistribution is a Service's spec.trafficDistribution preference.
type TrafficDistribution uint8

// The preferences svcproxy understands. Unknown values mean no preference,
// as they do for kube-proxy: a newer API server may know values we do not.
const (
	DistributionDefault TrafficDistribution = iota
	// PreferSameZone also stands for the older spelling "PreferClose".
	PreferSameZone
	PreferSameNode
)

func parseTrafficDistribution(s *string) TrafficDistribution {
	if s == nil {
		return DistributionDefault
	}
	switch *s {
	case v1.ServiceTrafficDistributionPreferClose, v1.ServiceTrafficDistributionPreferSameZone:
		return PreferSameZone
	case v1.ServiceTrafficDistributionPreferSameNode:
		return PreferSameNode
	}
	return DistributionDefault
}

// DefaultAffinitySeconds is the ClientIP affinity timeout when the Service
// does not set one (the API server's default too).
const DefaultAffinitySeconds = 10800

// maxAffinitySeconds is the API's upper bound for the ClientIP timeout.
const maxAffinitySeconds = 86400

// Service is a parsed, valid Service: only what svcproxy programs, as values.
type Service struct {
	Name ServiceName
	// ClusterIPs holds at most one address per family, primary first.
	ClusterIPs      []netip.Addr
	Ports           []ServicePortSpec
	ExternalIPs     []netip.Addr   // every family, sorted, deduplicated
	LoadBalancerIPs []netip.Addr   // VIP-mode ingress IPs, every family, sorted, deduplicated
	SourceRanges    []netip.Prefix // masked, every family, sorted, deduplicated

	// ExternalPolicyLocal is set only for externally accessible types
	// (NodePort, LoadBalancer, or ClusterIP with external IPs): for others
	// externalTrafficPolicy means nothing.
	ExternalPolicyLocal bool
	InternalPolicyLocal bool
	AffinitySeconds     int32 // 0: no session affinity
	HealthCheckNodePort uint16
	TrafficDistribution TrafficDistribution
}

// ServicePortSpec is one entry of a Service's spec.ports.
type ServicePortSpec struct {
	Name     string
	Protocol model.Protocol
	Port     uint16
	NodePort uint16 // 0: none
}

// ClusterIP returns the service's ClusterIP of the given family.
func (s *Service) ClusterIP(f model.Family) (netip.Addr, bool) {
	for _, ip := range s.ClusterIPs {
		if model.FamilyOf(ip) == f {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Equal reports whether two parsed services would be programmed identically.
func (s *Service) Equal(o *Service) bool {
	return s.Name == o.Name &&
		slices.Equal(s.ClusterIPs, o.ClusterIPs) &&
		slices.Equal(s.Ports, o.Ports) &&
		slices.Equal(s.ExternalIPs, o.ExternalIPs) &&
		slices.Equal(s.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(s.SourceRanges, o.SourceRanges) &&
		s.ExternalPolicyLocal == o.ExternalPolicyLocal &&
		s.InternalPolicyLocal == o.InternalPolicyLocal &&
		s.AffinitySeconds == o.AffinitySeconds &&
		s.HealthCheckNodePort == o.HealthCheckNodePort &&
		s.TrafficDistribution == o.TrafficDistribution
}

// EndpointSlice is a parsed EndpointSlice of an IP address type.
type EndpointSlice struct {
	Namespace string
	Name      string
	Service   ServiceName // from the kubernetes.io/service-name label
	Family    model.Family
	Ports     []EndpointPort
	Endpoints []SliceEndpoint
	// TriggerTime is the endpoints.kubernetes.io/last-change-trigger-time
	// annotation: when the change this slice reflects happened. Zero if
	// absent. It is not part of Equal: it never changes what is programmed.
	TriggerTime time.Time
}

// EndpointPort is one entry of a slice's ports.
type EndpointPort struct {
	Name     string
	Protocol model.Protocol
	Port     uint16
}

// SliceEndpoint is one endpoint of a slice, with its conditions resolved.
// It is held for every endpoint of the cluster as long as svcproxy runs,
// so it is kept small: node and zone names are interned (a cluster has few
// of them, and 100,000 endpoints each held their own copies), and the
// hints, which most endpoints lack, sit behind a pointer.
type SliceEndpoint struct {
	Addr        netip.Addr
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	Hints       *Hints // nil: none
}

// Hints are an endpoint's topology hints.
type Hints struct {
	Zones []string // hints.forZones, sorted
	Nodes []string // hints.forNodes, sorted
}

// ZoneHints are the zones the endpoint is hinted for.
func (e *SliceEndpoint) ZoneHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Zones
}

// NodeHints are the nodes the endpoint is hinted for.
func (e *SliceEndpoint) NodeHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Nodes
}

// Equal reports whether two parsed slices would be programmed identically.
func (s *EndpointSlice) Equal(o *EndpointSlice) bool {
	return s.Namespace == o.Namespace && s.Name == o.Name && s.Service == o.Service &&
		s.Family == o.Family &&
		slices.Equal(s.Ports, o.Ports) &&
		slices.EqualFunc(s.Endpoints, o.Endpoints, SliceEndpoint.equal)
}

func (e SliceEndpoint) equal(o SliceEndpoint) bool {
	return e.Addr == o.Addr && e.Ready == o.Ready && e.Serving == o.Serving &&
		e.Terminating == o.Terminating && e.NodeName == o.NodeName && e.Zone == o.Zone &&
		slices.Equal(e.ZoneHints(), o.ZoneHints()) && slices.Equal(e.NodeHints(), o.NodeHints())
}

// IgnoredError says an object is deliberately not programmed (ExternalName
// or headless services, slices of FQDNs or without a service): nothing is
// wrong with it, and it is logged at debug level only.
type IgnoredError struct {
	Kind, Namespace, Name string
	Reason                string
}

func (e *IgnoredError) Error() string {
	return fmt.Sprintf("%s %s/%s ignored: %s", e.Kind, e.Namespace, e.Name, e.Reason)
}

// InvalidError says an object has a field svcproxy cannot program.
type InvalidError struct {
	Kind, Namespace, Name string
	Field                 string // JSON path, e.g. spec.ports[1].nodePort
	Value                 string
	Reason                string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("%s %s/%s: invalid %s %q: %s", e.Kind, e.Namespace, e.Name, e.Field, e.Value, e.Reason)
}

// ParseService converts a Service to svcproxy's model. It returns an
// *IgnoredError for services with nothing to program and an *InvalidError
// for the first field it cannot use.
//
// A single bad field rejects the whole service rather than programming the
// rest of it: a service missing, say, its source ranges or one of its ports
// would accept traffic it should refuse or refuse traffic for reasons nobody
// can see. None of this should happen past API validation; when it does
// (an old object, a bypassed webhook) the warning names the field to fix.
func ParseService(svc *v1.Service) (*Service, error) {
	p := serviceParser{svc: svc}
	if reason := p.ignoredReason(); reason != "" {
		return nil, &IgnoredError{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Reason: reason}
	}
	out := &Service{
		Name:                ServiceName{Namespace: svc.Namespace, Name: svc.Name},
		ClusterIPs:          p.clusterIPs(),
		Ports:               p.ports(),
		ExternalIPs:         p.addrs("spec.externalIPs", svc.Spec.ExternalIPs),
		LoadBalancerIPs:     p.loadBalancerIPs(),
		SourceRanges:        p.sourceRanges(),
		ExternalPolicyLocal: externallyAccessible(svc) && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal,
		InternalPolicyLocal: svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
		AffinitySeconds:     p.affinitySeconds(),
		TrafficDistribution: parseTrafficDistribution(svc.Spec.TrafficDistribution),
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && out.ExternalPolicyLocal {
		out.HealthCheckNodePort = p.port("spec.healthCheckNodePort", svc.Spec.HealthCheckNodePort, true)
	}
	if p.err != nil {
		return nil, p.err
	}
	return out, nil
}

// externallyAccessible mirrors the API's notion: only such services may use
// externalTrafficPolicy.
func externallyAccessible(svc *v1.Service) bool {
	switch svc.Spec.Type {
	case v1.ServiceTypeLoadBalancer, v1.ServiceTypeNodePort:
		return true
	case v1.ServiceTypeClusterIP, "":
		return len(svc.Spec.ExternalIPs) > 0
	}
	return false
}

// serviceParser keeps the first error so the parse reads as one list of
// fields; later fields are still parsed but their errors are dropped.
type serviceParser struct {
	svc *v1.Service
	err error
}

func (p *serviceParser) fail(field, value, reason string) {
	if p.err == nil {
		p.err = &InvalidError{Kind: "Service", Namespace: p.svc.Namespace, Name: p.svc.Name,
			Field: field, Value: value, Reason: reason}
	}
}

func (p *serviceParser) ignoredReason() string {
	spec := &p.svc.Spec
	switch {
	case spec.Type == v1.ServiceTypeExternalName:
		return "ExternalName service"
	case spec.ClusterIP == v1.ClusterIPNone || (len(spec.ClusterIPs) > 0 && spec.ClusterIPs[0] == v1.ClusterIPNone):
		return "headless service"
	case spec.ClusterIP == "" && len(spec.ClusterIPs) == 0:
		return "no ClusterIP allocated"
	}
	return ""
}

func (p *serviceParser) clusterIPs() []netip.Addr {
	raw := p.svc.Spec.ClusterIPs
	fieldAt := func(i int) string { return fmt.Sprintf("spec.clusterIPs[%d]", i) }
	if len(raw) == 0 {
		// Objects from before dual-stack may only have the singular field.
		raw = []string{p.svc.Spec.ClusterIP}
		fieldAt = func(int) string { return "spec.clusterIP" }
	}
	if len(raw) > 2 {
		p.fail("spec.clusterIPs", strings.Join(raw, ","), "more than two addresses")
		return nil
	}
	ips := make([]netip.Addr, 0, len(raw))
	for i, s := range raw {
		ip, ok := parseAddr(s)
		if !ok {
			p.fail(fieldAt(i), s, "not an IP address")
			continue
		}
		if i == 1 && len(ips) == 1 && model.FamilyOf(ips[0]) == model.FamilyOf(ip) {
			p.fail(fieldAt(i), s, "two addresses of one family")
			continue
		}
		ips = append(ips, ip)
	}
	return ips
}

func (p *serviceParser) ports() []ServicePortSpec {
	out := make([]ServicePortSpec, 0, len(p.svc.Spec.Ports))
	for i, sp := range p.svc.Spec.Ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		proto, err := model.ParseProtocol(string(sp.Protocol))
		if err != nil {
			p.fail(field+".protocol", string(sp.Protocol), "unsupported protocol")
		}
		spec := ServicePortSpec{
			Name:     sp.Name,
			Protocol: proto,
			Port:     p.port(field+".port", sp.Port, false),
			NodePort: p.port(field+".nodePort", sp.NodePort, true),
		}
		if slices.ContainsFunc(out, func(o ServicePortSpec) bool { return o.Name == spec.Name && o.Protocol == spec.Protocol }) {
			p.fail(field+".name", sp.Name, "duplicate port name and protocol")
		}
		out = append(out, spec)
	}
	return out
}

// port checks a port number; zeroOK is for optional ports (nodePort,
// healthCheckNodePort), where 0 means none.
func (p *serviceParser) port(field string, n int32, zeroOK bool) uint16 {
	if n < 0 || n > 65535 || (n == 0 && !zeroOK) {
		p.fail(field, fmt.Sprint(n), "port out of range")
		return 0
	}
	return uint16(n)
}

func (p *serviceParser) addrs(field string, raw []string) []netip.Addr {
	var out []netip.Addr
	for i, s := range raw {
		ip, ok := parseAddr(s)
		if !ok {
			p.fail(fmt.Sprintf("%s[%d]", field, i), s, "not an IP address")
			continue
		}
		out = append(out, ip)
	}
	return sortedUnique(out, netip.Addr.Compare)
}

// loadBalancerIPs keeps VIP-mode ingress IPs: an ipMode Proxy load balancer
// delivers traffic addressed to the node, so svcproxy must not capture its IP
// (kube-proxy does the same). Hostname-only entries have nothing to program.
func (p *serviceParser) loadBalancerIPs() []netip.Addr {
	var out []netip.Addr
	for i, ing := range p.svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy) {
			continue
		}
		ip, ok := parseAddr(ing.IP)
		if !ok {
			p.fail(fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP, "not an IP address")
			continue
		}
		out = append(out, ip)
	}
	return sortedUnique(out, netip.Addr.Compare)
}

// sourceRanges trims whitespace because API validation historically let
// padded ranges through; kube-proxy accepts them too.
func (p *serviceParser) sourceRanges() []netip.Prefix {
	var out []netip.Prefix
	for i, s := range p.svc.Spec.LoadBalancerSourceRanges {
		pfx, ok := parsePrefix(strings.TrimSpace(s))
		if !ok {
			p.fail(fmt.Sprintf("spec.loadBalancerSourceRanges[%d]", i), s, "not a CIDR")
			continue
		}
		out = append(out, pfx)
	}
	return sortedUnique(out, comparePrefixes)
}

func (p *serviceParser) affinitySeconds() int32 {
	if p.svc.Spec.SessionAffinity != v1.ServiceAffinityClientIP {
		return 0
	}
	cfg := p.svc.Spec.SessionAffinityConfig
	if cfg == nil || cfg.ClientIP == nil || cfg.ClientIP.TimeoutSeconds == nil {
		return DefaultAffinitySeconds
	}
	t := *cfg.ClientIP.TimeoutSeconds
	if t <= 0 || t > maxAffinitySeconds {
		p.fail("spec.sessionAffinityConfig.clientIP.timeoutSeconds", fmt.Sprint(t), "must be 1 to 86400")
		return 0
	}
	return t
}

// ParseEndpointSlice converts an EndpointSlice. It returns an *IgnoredError
// for slices svcproxy has no use for (FQDN, no service label). Unusable
// ports and endpoints are dropped, each with a reason in dropped, and the
// rest of the slice is kept: one bad address must not take a service's
// other endpoints out of rotation.
func ParseEndpointSlice(es *discoveryv1.EndpointSlice) (slice *EndpointSlice, dropped []string, err error) {
	ignore := func(reason string) error {
		return &IgnoredError{Kind: "EndpointSlice", Namespace: es.Namespace, Name: es.Name, Reason: reason}
	}
	svcName := es.Labels[discoveryv1.LabelServiceName]
	if svcName == "" {
		return nil, nil, ignore("no " + discoveryv1.LabelServiceName + " label")
	}
	var family model.Family
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4:
		family = model.IPv4
	case discoveryv1.AddressTypeIPv6:
		family = model.IPv6
	default:
		return nil, nil, ignore(fmt.Sprintf("address type %q", es.AddressType))
	}
	out := &EndpointSlice{
		Namespace: es.Namespace,
		Name:      es.Name,
		Service:   ServiceName{Namespace: es.Namespace, Name: svcName},
		Family:    family,
	}
	out.Ports, dropped = parseEndpointPorts(es.Ports, dropped)
	out.Endpoints, dropped = parseEndpoints(es.Endpoints, family, dropped)
	out.TriggerTime, dropped = parseTriggerTime(es.Annotations[v1.EndpointsLastChangeTriggerTime], dropped)
	return out, dropped, nil
}

// parseEndpointPorts skips ports without a number silently: the
// EndpointSlice controller writes those for services whose targetPort name
// matches no container port, and kube-proxy skips them the same way.
func parseEndpointPorts(ports []discoveryv1.EndpointPort, dropped []string) ([]EndpointPort, []string) {
	out := make([]EndpointPort, 0, len(ports))
	for i, p := range ports {
		if p.Port == nil {
			continue
		}
		ep := EndpointPort{Protocol: model.TCP}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Protocol != nil {
			proto, err := model.ParseProtocol(string(*p.Protocol))
			if err != nil {
				dropped = append(dropped, fmt.Sprintf("ports[%d].protocol %q: unsupported", i, *p.Protocol))
				continue
			}
			ep.Protocol = proto
		}
		if *p.Port <= 0 || *p.Port > 65535 {
			dropped = append(dropped, fmt.Sprintf("ports[%d].port %d: out of range", i, *p.Port))
			continue
		}
		ep.Port = uint16(*p.Port)
		out = append(out, ep)
	}
	return out, dropped
}

func parseEndpoints(eps []discoveryv1.Endpoint, family model.Family, dropped []string) ([]SliceEndpoint, []string) {
	out := make([]SliceEndpoint, 0, len(eps))
	for i, ep := range eps {
		if len(ep.Addresses) == 0 {
			dropped = append(dropped, fmt.Sprintf("endpoints[%d]: no address", i))
			continue
		}
		// Only the first address counts: the API says all of an
		// endpoint's addresses are fungible, and kube-proxy uses the first.
		addr, ok := parseAddr(ep.Addresses[0])
		if !ok || model.FamilyOf(addr) != family {
			dropped = append(dropped, fmt.Sprintf("endpoints[%d].addresses[0] %q: not an %s address", i, ep.Addresses[0], family))
			continue
		}
		out = append(out, sliceEndpoint(addr, &ep))
	}
	return out, dropped
}

func sliceEndpoint(addr netip.Addr, ep *discoveryv1.Endpoint) SliceEndpoint {
	// kube-proxy's reading of unset conditions: ready and serving each
	// mean true (serving is not ready's value: a writer that sets only
	// ready=false still has a serving endpoint), terminating means false.
	c := ep.Conditions
	out := SliceEndpoint{
		Addr:        addr,
		Ready:       c.Ready == nil || *c.Ready,
		Serving:     c.Serving == nil || *c.Serving,
		Terminating: c.Terminating != nil && *c.Terminating,
		NodeName:    intern(deref(ep.NodeName)),
		Zone:        intern(deref(ep.Zone)),
	}
	if ep.Hints != nil && len(ep.Hints.ForZones)+len(ep.Hints.ForNodes) > 0 {
		h := &Hints{}
		for _, z := range ep.Hints.ForZones {
			h.Zones = append(h.Zones, intern(z.Name))
		}
		for _, n := range ep.Hints.ForNodes {
			h.Nodes = append(h.Nodes, intern(n.Name))
		}
		h.Zones = sortedUnique(h.Zones, strings.Compare)
		h.Nodes = sortedUnique(h.Nodes, strings.Compare)
		out.Hints = h
	}
	return out
}

func parseTriggerTime(s string, dropped []string) (time.Time, []string) {
	if s == "" {
		return time.Time{}, dropped
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, append(dropped, fmt.Sprintf("annotation %s %q: not an RFC 3339 time", v1.EndpointsLastChangeTriggerTime, s))
	}
	return t, dropped
}

// parseAddr parses an IP address the way the API stored it. Zones
// ("fe80::1%eth0") are never valid for a service or endpoint address.
// IPv4 with leading zeros ("010.000.000.001") is accepted and read as
// decimal: the API allowed it before 1.20 and keeps it on old objects, and
// kube-proxy (ParseIPSloppy) programs such services.
func parseAddr(s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return parseLegacyIPv4(s)
	}
	if ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return ip, true
}

func parseLegacyIPv4(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}

// parsePrefix is parseAddr for CIDRs, masked.
func parsePrefix(s string) (netip.Prefix, bool) {
	if pfx, err := netip.ParsePrefix(s); err == nil {
		return pfx.Masked(), true
	}
	addr, bits, found := strings.Cut(s, "/")
	ip, ok := parseLegacyIPv4(addr)
	n, err := strconv.Atoi(bits)
	if !found || !ok || err != nil || n < 0 || n > 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, n).Masked(), true
}

// intern returns the one copy of s that every parse shares; copies no
// endpoint names any longer are collected.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// sortedUnique sorts s in place and drops duplicates; nil stays nil.
func sortedUnique[T comparable](s []T, cmp func(a, b T) int) []T {
	if len(s) == 0 {
		return nil
	}
	slices.SortFunc(s, cmp)
	return slices.Compact(s)
}
