package proxier

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestParseServiceFields(t *testing.T) {
	svc := pt.Service("ns", "web", []string{"10.96.0.10", "fd00::10"},
		pt.Port("http", "TCP", 80), pt.Port("dns", "UDP", 53), pt.Port("sig", "SCTP", 9000),
		pt.LoadBalancer("203.0.113.9", "2001:db8::9", "203.0.113.1"), pt.ProxyModeIngress("198.51.100.7"),
		pt.NodePort("http", 30080),
		pt.ExternalIPs("192.0.2.2", "192.0.2.1", "2001:db8::1", "192.0.2.1"),
		pt.SourceRanges(" 10.1.2.3/8", "2001:db8::/32"),
		pt.ExternalLocal(31000), pt.InternalLocal(), pt.Affinity(0), pt.Distribution("PreferClose"))

	got, err := ParseService(svc)
	if err != nil {
		t.Fatal(err)
	}
	want := &Service{
		Name:       ServiceName{"ns", "web"},
		ClusterIPs: addrs("10.96.0.10", "fd00::10"),
		Ports: []ServicePortSpec{
			{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080},
			{Name: "dns", Protocol: model.UDP, Port: 53},
			{Name: "sig", Protocol: model.SCTP, Port: 9000},
		},
		ExternalIPs:         addrs("192.0.2.1", "192.0.2.2", "2001:db8::1"),
		LoadBalancerIPs:     addrs("203.0.113.1", "203.0.113.9", "2001:db8::9"),
		SourceRanges:        prefixes("10.0.0.0/8", "2001:db8::/32"),
		ExternalPolicyLocal: true,
		InternalPolicyLocal: true,
		AffinitySeconds:     DefaultAffinitySeconds,
		HealthCheckNodePort: 31000,
		TrafficDistribution: PreferSameZone,
	}
	if !got.Equal(want) {
		t.Errorf("ParseService:\n got %+v\nwant %+v", got, want)
	}
}

func TestParseServicePolicies(t *testing.T) {
	tests := []struct {
		name                  string
		svc                   *v1.Service
		externalLocal, hcPort bool
		affinity              int32
		distribution          TrafficDistribution
	}{
		{
			name: "externalTrafficPolicy Local on a ClusterIP service without external IPs means nothing",
			svc:  pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.ExternalLocal(0)),
		},
		{
			name:          "ClusterIP service with external IPs honours externalTrafficPolicy Local",
			svc:           pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.ExternalIPs("192.0.2.1"), pt.ExternalLocal(0)),
			externalLocal: true,
		},
		{
			name:          "NodePort Local keeps no health check port: only load balancers have one",
			svc:           pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.NodePort("", 30001), pt.ExternalLocal(31000)),
			externalLocal: true,
		},
		{
			name:          "LoadBalancer Local keeps its health check port",
			svc:           pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.LoadBalancer(), pt.ExternalLocal(31000)),
			externalLocal: true, hcPort: true,
		},
		{
			name:     "ClientIP affinity with an explicit timeout",
			svc:      pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.Affinity(60)),
			affinity: 60,
		},
		{
			name:         "PreferSameNode",
			svc:          pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.Distribution("PreferSameNode")),
			distribution: PreferSameNode,
		},
		{
			name:         "PreferSameZone",
			svc:          pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.Distribution("PreferSameZone")),
			distribution: PreferSameZone,
		},
		{
			name: "unknown trafficDistribution means none",
			svc:  pt.Service("ns", "a", []string{"10.96.0.1"}, pt.Port("", "TCP", 80), pt.Distribution("PreferMoon")),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseService(tt.svc)
			if err != nil {
				t.Fatal(err)
			}
			if got.ExternalPolicyLocal != tt.externalLocal {
				t.Errorf("ExternalPolicyLocal = %v, want %v", got.ExternalPolicyLocal, tt.externalLocal)
			}
			if (got.HealthCheckNodePort != 0) != tt.hcPort {
				t.Errorf("HealthCheckNodePort = %d, want set: %v", got.HealthCheckNodePort, tt.hcPort)
			}
			if got.AffinitySeconds != tt.affinity {
				t.Errorf("AffinitySeconds = %d, want %d", got.AffinitySeconds, tt.affinity)
			}
			if got.TrafficDistribution != tt.distribution {
				t.Errorf("TrafficDistribution = %d, want %d", got.TrafficDistribution, tt.distribution)
			}
		})
	}
}

func TestParseServiceIgnored(t *testing.T) {
	tests := map[string]*v1.Service{
		"ExternalName": pt.Service("ns", "a", nil, pt.ExternalName("example.com"), pt.Port("", "TCP", 80)),
		"headless":     pt.Service("ns", "a", []string{"None"}, pt.Port("", "TCP", 80)),
		"no ClusterIP": pt.Service("ns", "a", nil, pt.Port("", "TCP", 80)),
	}
	for name, svc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseService(svc)
			var ignored *IgnoredError
			if !errors.As(err, &ignored) || got != nil {
				t.Fatalf("ParseService = %v, %v; want an IgnoredError", got, err)
			}
		})
	}
}

func TestParseServiceInvalid(t *testing.T) {
	valid := func(opts ...pt.ServiceOption) *v1.Service {
		return pt.Service("ns", "bad", []string{"10.96.0.1"}, append([]pt.ServiceOption{pt.Port("p", "TCP", 80)}, opts...)...)
	}
	set := func(f func(*v1.Service)) pt.ServiceOption { return f }
	tests := []struct {
		name  string
		svc   *v1.Service
		field string
	}{
		{"bad clusterIP", pt.Service("ns", "bad", []string{"10.96.0.300"}, pt.Port("p", "TCP", 80)), "spec.clusterIPs[0]"},
		{"clusterIP with a zone", pt.Service("ns", "bad", []string{"fe80::1%eth0"}, pt.Port("p", "TCP", 80)), "spec.clusterIPs[0]"},
		{"bad secondary clusterIP", pt.Service("ns", "bad", []string{"10.96.0.1", "fd00::zz"}, pt.Port("p", "TCP", 80)), "spec.clusterIPs[1]"},
		{"two clusterIPs of one family", pt.Service("ns", "bad", []string{"10.96.0.1", "10.96.0.2"}, pt.Port("p", "TCP", 80)), "spec.clusterIPs[1]"},
		{"three clusterIPs", pt.Service("ns", "bad", []string{"10.96.0.1", "fd00::1", "10.96.0.2"}, pt.Port("p", "TCP", 80)), "spec.clusterIPs"},
		{"only legacy clusterIP, bad", valid(set(func(s *v1.Service) { s.Spec.ClusterIPs = nil; s.Spec.ClusterIP = "banana" })), "spec.clusterIP"},
		{"bad externalIP", valid(pt.ExternalIPs("192.0.2.1", "192.0.2")), "spec.externalIPs[1]"},
		{"bad LB ingress IP", valid(pt.LoadBalancer("203.0.113.300")), "status.loadBalancer.ingress[0].ip"},
		{"bad source range", valid(pt.LoadBalancer(), pt.SourceRanges("10.0.0.0/8", "10.0.0.0/33")), "spec.loadBalancerSourceRanges[1]"},
		{"source range without length", valid(pt.SourceRanges("10.0.0.1")), "spec.loadBalancerSourceRanges[0]"},
		{"port 0", valid(pt.Port("q", "TCP", 0)), "spec.ports[1].port"},
		{"port above 65535", valid(pt.Port("q", "TCP", 65536)), "spec.ports[1].port"},
		{"negative port", valid(pt.Port("q", "TCP", -1)), "spec.ports[1].port"},
		{"nodePort above 65535", valid(pt.NodePort("p", 70000)), "spec.ports[0].nodePort"},
		{"negative nodePort", valid(pt.NodePort("p", -5)), "spec.ports[0].nodePort"},
		{"bad protocol", valid(pt.Port("q", "ICMP", 7)), "spec.ports[1].protocol"},
		{"lower-case protocol", valid(pt.Port("q", "tcp", 7)), "spec.ports[1].protocol"},
		{"duplicate port name and protocol", valid(pt.Port("p", "TCP", 81)), "spec.ports[1].name"},
		{"health check port out of range", valid(pt.LoadBalancer(), pt.ExternalLocal(65536)), "spec.healthCheckNodePort"},
		{"affinity timeout 0", valid(set(func(s *v1.Service) {
			zero := int32(0)
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &zero}}
		})), "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
		{"affinity timeout above a day", valid(pt.Affinity(86401)), "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseService(tt.svc)
			var invalid *InvalidError
			if !errors.As(err, &invalid) {
				t.Fatalf("ParseService = %+v, %v; want an InvalidError", got, err)
			}
			if got != nil {
				t.Errorf("an invalid service must not be half-returned: %+v", got)
			}
			if invalid.Field != tt.field || invalid.Namespace != "ns" || invalid.Name != "bad" {
				t.Errorf("error %q names field %q of %s/%s, want field %q of ns/bad",
					err, invalid.Field, invalid.Namespace, invalid.Name, tt.field)
			}
		})
	}
}

func TestParseServiceSameFamilyOrderKeepsPrimary(t *testing.T) {
	got, err := ParseService(pt.Service("ns", "a", []string{"fd00::1", "10.96.0.1"}, pt.Port("", "TCP", 80)))
	if err != nil {
		t.Fatal(err)
	}
	if v4, _ := got.ClusterIP(model.IPv4); v4 != netip.MustParseAddr("10.96.0.1") {
		t.Errorf("IPv4 ClusterIP = %v", v4)
	}
	if v6, _ := got.ClusterIP(model.IPv6); v6 != netip.MustParseAddr("fd00::1") {
		t.Errorf("IPv6 ClusterIP = %v", v6)
	}
}

func TestParseEndpointSlice(t *testing.T) {
	es := pt.Slice("ns", "web-abc", "web",
		pt.SlicePort("http", "", 8080), pt.SlicePort("dns", "UDP", 53),
		pt.TriggerTime("2026-01-02T03:04:05Z"),
		pt.Endpoints(
			pt.Ready("10.0.0.1", "node-a").InZone("z1").HintZones("z1", "z2").HintNodes("node-a"),
			pt.Terminating("10.0.0.2", "node-b", true),
			pt.Endpoint{Addr: "10.0.0.3", Ready: pt.Bool(false)},
		))
	es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: new(string)}) // no port number: skipped
	es.Endpoints[0].Addresses = append(es.Endpoints[0].Addresses, "10.0.0.99")

	got, dropped, err := ParseEndpointSlice(es)
	if err != nil || len(dropped) != 0 {
		t.Fatalf("ParseEndpointSlice: dropped %v, err %v", dropped, err)
	}
	want := &EndpointSlice{
		Namespace: "ns", Name: "web-abc", Service: ServiceName{"ns", "web"}, Family: model.IPv4,
		Ports: []EndpointPort{{Name: "http", Protocol: model.TCP, Port: 8080}, {Name: "dns", Protocol: model.UDP, Port: 53}},
		Endpoints: []SliceEndpoint{
			{Addr: netip.MustParseAddr("10.0.0.1"), Ready: true, Serving: true, NodeName: "node-a", Zone: "z1",
				Hints: &Hints{Zones: []string{"z1", "z2"}, Nodes: []string{"node-a"}}},
			{Addr: netip.MustParseAddr("10.0.0.2"), Serving: true, Terminating: true, NodeName: "node-b"},
			// Not ready, serving unset: serving, as kube-proxy reads it.
			{Addr: netip.MustParseAddr("10.0.0.3"), Serving: true},
		},
	}
	if !got.Equal(want) {
		t.Errorf("ParseEndpointSlice:\n got %+v\nwant %+v", got, want)
	}
	if wantTime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC); !got.TriggerTime.Equal(wantTime) {
		t.Errorf("TriggerTime = %v, want %v", got.TriggerTime, wantTime)
	}
}

// TestParseEndpointConditions follows kube-proxy's reading of unset
// conditions (pkg/proxy/endpointslicecache.go): ready and serving unset
// mean true, each on its own, and terminating unset means false. A
// serving left unset is not ready's value: a slice writer that sets only
// ready=false still has a serving endpoint, which the terminating
// fallback may use.
func TestParseEndpointConditions(t *testing.T) {
	yes, no := pt.Bool(true), pt.Bool(false)
	tests := []struct {
		name                          string
		ready, serving, terminating   *bool
		wantReady, wantServing, wantT bool
	}{
		{"all unset", nil, nil, nil, true, true, false},
		{"not ready, serving unset", no, nil, nil, false, true, false},
		{"not ready, serving unset, terminating", no, nil, yes, false, true, true},
		{"ready, serving unset", yes, nil, nil, true, true, false},
		{"ready unset, not serving", nil, no, nil, true, false, false},
		{"not ready, not serving", no, no, nil, false, false, false},
		{"terminating, serving", no, yes, yes, false, true, true},
		{"terminating unset to false", yes, yes, no, true, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := pt.Slice("ns", "web-abc", "web", pt.SlicePort("http", "", 8080),
				pt.Endpoints(pt.Endpoint{Addr: "10.0.0.1", Ready: tt.ready, Serving: tt.serving, Terminating: tt.terminating}))
			got, dropped, err := ParseEndpointSlice(es)
			if err != nil || len(dropped) != 0 || len(got.Endpoints) != 1 {
				t.Fatalf("ParseEndpointSlice: %+v, dropped %v, err %v", got, dropped, err)
			}
			e := got.Endpoints[0]
			if e.Ready != tt.wantReady || e.Serving != tt.wantServing || e.Terminating != tt.wantT {
				t.Errorf("ready=%t serving=%t terminating=%t, want ready=%t serving=%t terminating=%t",
					e.Ready, e.Serving, e.Terminating, tt.wantReady, tt.wantServing, tt.wantT)
			}
		})
	}
}

func TestParseEndpointSliceDropsBadEntries(t *testing.T) {
	es := pt.Slice("ns", "web-abc", "web",
		pt.SlicePort("ok", "TCP", 80), pt.SlicePort("proto", "ICMP", 81), pt.SlicePort("zero", "TCP", 0),
		pt.SlicePort("big", "TCP", 70000),
		pt.TriggerTime("yesterday"),
		pt.Endpoints(pt.Ready("10.0.0.1", "n"), pt.Ready("10.0.0.300", "n"), pt.Ready("fd00::1", "n"), pt.Ready("10.0.0.2", "n")))
	es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{})

	got, dropped, err := ParseEndpointSlice(es)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 7 {
		t.Errorf("dropped %d entries, want 7 (3 ports, 3 endpoints, 1 annotation): %q", len(dropped), dropped)
	}
	if want := []EndpointPort{{Name: "ok", Protocol: model.TCP, Port: 80}}; !slices.Equal(got.Ports, want) {
		t.Errorf("ports = %v, want %v", got.Ports, want)
	}
	var kept []netip.Addr
	for _, e := range got.Endpoints {
		kept = append(kept, e.Addr)
	}
	if want := addrs("10.0.0.1", "10.0.0.2"); !slices.Equal(kept, want) {
		t.Errorf("kept endpoints %v, want %v", kept, want)
	}
	if !got.TriggerTime.IsZero() {
		t.Errorf("unparsable trigger time kept as %v", got.TriggerTime)
	}
}

func TestParseEndpointSliceIgnored(t *testing.T) {
	noLabel := pt.Slice("ns", "a", "web", pt.Endpoints(pt.Ready("10.0.0.1", "n")))
	delete(noLabel.Labels, discoveryv1.LabelServiceName)
	tests := map[string]*discoveryv1.EndpointSlice{
		"no service label": noLabel,
		"FQDN":             pt.Slice("ns", "a", "web", pt.AddressType(discoveryv1.AddressTypeFQDN)),
	}
	for name, es := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, err := ParseEndpointSlice(es)
			var ignored *IgnoredError
			if !errors.As(err, &ignored) {
				t.Fatalf("err = %v, want an IgnoredError", err)
			}
		})
	}
}

func TestParseEndpointSliceIPv6(t *testing.T) {
	es := pt.Slice("ns", "a", "web", pt.SlicePort("", "TCP", 80),
		pt.Endpoints(pt.Ready("fd00::1", "n"), pt.Ready("10.0.0.1", "n")))
	got, dropped, err := ParseEndpointSlice(es)
	if err != nil {
		t.Fatal(err)
	}
	if got.Family != model.IPv6 || len(got.Endpoints) != 1 || len(dropped) != 1 {
		t.Errorf("family %v, endpoints %v, dropped %v; want IPv6 with the IPv4 address dropped", got.Family, got.Endpoints, dropped)
	}
}

func TestParseLegacyLeadingZeroAddresses(t *testing.T) {
	svc := pt.Service("ns", "old", []string{"010.096.000.010"}, pt.Port("", "TCP", 80),
		pt.ExternalIPs("192.000.002.001"), pt.SourceRanges("010.0.0.0/08"))
	got, err := ParseService(svc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.ClusterIPs, addrs("10.96.0.10")) || !slices.Equal(got.ExternalIPs, addrs("192.0.2.1")) ||
		!slices.Equal(got.SourceRanges, prefixes("10.0.0.0/8")) {
		t.Errorf("legacy addresses read as %v %v %v, want decimal", got.ClusterIPs, got.ExternalIPs, got.SourceRanges)
	}
	for _, bad := range []string{"1.2.3", "1.2.3.4.5", "1.2.3.256", "1.2..4", "1.2.3.-4", "1.2.3.0x4"} {
		if ip, ok := parseAddr(bad); ok {
			t.Errorf("parseAddr(%q) = %v, want rejected", bad, ip)
		}
	}
	for _, bad := range []string{"010.0.0.0/33", "010.0.0.0", "010.0.0.0/", "010.0.0.0/-1"} {
		if p, ok := parsePrefix(bad); ok {
			t.Errorf("parsePrefix(%q) = %v, want rejected", bad, p)
		}
	}
}
