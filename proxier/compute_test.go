package proxier

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

var testNode = model.NodeInfo{Name: "node-a", Zone: "z1"}

// computeView feeds objects through a tracker, as in production, and
// computes the family's view for the node.
func computeView(t *testing.T, family model.Family, node model.NodeInfo, svcs []*v1.Service, eps ...*discoveryv1.EndpointSlice) *model.NodeView {
	t.Helper()
	tr, _, logs := newTestTracker()
	tr.SetNode(node)
	for _, s := range svcs {
		tr.UpsertService(s)
	}
	for _, es := range eps {
		tr.UpsertEndpointSlice(es)
	}
	if warned := logs.FilterMessage("object cannot be programmed, skipped"); warned.Len() > 0 {
		t.Fatalf("test input rejected: %v", warned.All()[0].ContextMap())
	}
	return Compute(tr.Snapshot(), family)
}

// epList renders endpoints as "addr:port" with "/local" for local ones, so
// a failure shows which endpoint went where.
func epList(eps []model.Endpoint) string {
	var b []string
	for _, e := range eps {
		s := e.Addr.String()
		if e.Local {
			s += "/local"
		}
		b = append(b, s)
	}
	return strings.Join(b, " ")
}

func webPort(view *model.NodeView, t *testing.T) *model.ServicePort {
	t.Helper()
	sp, ok := view.Services[model.ServicePortName{Namespace: "ns", Name: "web", Port: "http", Protocol: model.TCP}]
	if !ok {
		t.Fatalf("ns/web:http/TCP missing from the view; has %v", view.SortedNames())
	}
	return sp
}

// ready, local and the rest name the endpoint kinds the policy tests mix.
var (
	readyLocal     = pt.Ready("10.0.0.1", "node-a")
	readyRemote    = pt.Ready("10.0.0.2", "node-b")
	termLocal      = pt.Terminating("10.0.0.3", "node-a", true)
	termRemote     = pt.Terminating("10.0.0.4", "node-b", true)
	termNotServing = pt.Terminating("10.0.0.5", "node-a", false)
	notReady       = pt.NotReady("10.0.0.6", "node-a")
)

func TestComputePolicies(t *testing.T) {
	tests := []struct {
		name            string
		svcOpts         []pt.ServiceOption
		eps             []pt.Endpoint
		cluster, local  string
		externalCluster string
		external        string // ExternalEndpoints(), when the port is externally accessible
	}{
		{
			name:    "Cluster policy: every ready endpoint, sorted; local ones marked",
			eps:     []pt.Endpoint{readyRemote, notReady, readyLocal, termLocal},
			cluster: "10.0.0.1:8080/local 10.0.0.2:8080",
		},
		{
			name:    "Cluster policy: no ready endpoint falls back to serving terminating ones, anywhere",
			eps:     []pt.Endpoint{termRemote, termNotServing, notReady, termLocal},
			cluster: "10.0.0.3:8080/local 10.0.0.4:8080",
		},
		{
			name: "Cluster policy: nothing serving, nothing programmed",
			eps:  []pt.Endpoint{termNotServing, notReady},
		},
		{
			name:    "internalTrafficPolicy Local: only local ready endpoints",
			svcOpts: []pt.ServiceOption{pt.InternalLocal()},
			eps:     []pt.Endpoint{readyRemote, readyLocal, termLocal},
			cluster: "10.0.0.1:8080/local",
		},
		{
			name:    "internalTrafficPolicy Local: local serving terminating when no local one is ready",
			svcOpts: []pt.ServiceOption{pt.InternalLocal()},
			eps:     []pt.Endpoint{readyRemote, termLocal, termRemote, termNotServing},
			cluster: "10.0.0.3:8080/local",
		},
		{
			name:    "internalTrafficPolicy Local: never falls back to remote endpoints",
			svcOpts: []pt.ServiceOption{pt.InternalLocal()},
			eps:     []pt.Endpoint{readyRemote, termRemote},
		},
		{
			name:     "externalTrafficPolicy Local: local ready endpoints for external traffic, all for ClusterIP",
			svcOpts:  []pt.ServiceOption{pt.NodePort("http", 30080), pt.ExternalLocal(0)},
			eps:      []pt.Endpoint{readyRemote, readyLocal, termLocal},
			cluster:  "10.0.0.1:8080/local 10.0.0.2:8080",
			local:    "10.0.0.1:8080/local",
			external: "10.0.0.1:8080/local",
		},
		{
			name:     "externalTrafficPolicy Local: local serving terminating when no local one is ready",
			svcOpts:  []pt.ServiceOption{pt.LoadBalancer("203.0.113.1"), pt.ExternalLocal(31000)},
			eps:      []pt.Endpoint{readyRemote, termLocal, termNotServing},
			cluster:  "10.0.0.2:8080",
			local:    "10.0.0.3:8080/local",
			external: "10.0.0.3:8080/local",
		},
		{
			name:    "externalTrafficPolicy Local: no local endpoint, no remote fallback",
			svcOpts: []pt.ServiceOption{pt.NodePort("http", 30080), pt.ExternalLocal(0)},
			eps:     []pt.Endpoint{readyRemote},
			cluster: "10.0.0.2:8080",
		},
		{
			name:     "externalTrafficPolicy Cluster: external traffic uses the cluster endpoints",
			svcOpts:  []pt.ServiceOption{pt.ExternalIPs("192.0.2.1")},
			eps:      []pt.Endpoint{readyRemote, readyLocal},
			cluster:  "10.0.0.1:8080/local 10.0.0.2:8080",
			external: "10.0.0.1:8080/local 10.0.0.2:8080",
		},
		{
			name:            "internal Local, external Cluster: ClusterIP stays local, external traffic goes anywhere",
			svcOpts:         []pt.ServiceOption{pt.InternalLocal(), pt.NodePort("http", 30080)},
			eps:             []pt.Endpoint{readyRemote, readyLocal},
			cluster:         "10.0.0.1:8080/local",
			externalCluster: "10.0.0.1:8080/local 10.0.0.2:8080",
			external:        "10.0.0.1:8080/local 10.0.0.2:8080",
		},
		{
			name:            "internal Local, external Local: both local, cluster-wide list kept for short-circuited pod traffic",
			svcOpts:         []pt.ServiceOption{pt.InternalLocal(), pt.NodePort("http", 30080), pt.ExternalLocal(0)},
			eps:             []pt.Endpoint{readyRemote, readyLocal},
			cluster:         "10.0.0.1:8080/local",
			local:           "10.0.0.1:8080/local",
			externalCluster: "10.0.0.1:8080/local 10.0.0.2:8080",
			external:        "10.0.0.1:8080/local",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := webService(tt.svcOpts...)
			es := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(tt.eps...))
			sp := webPort(computeView(t, model.IPv4, testNode, []*v1.Service{svc}, es), t)
			check := func(what, got, want string) {
				if got != want {
					t.Errorf("%s = [%s], want [%s]", what, got, want)
				}
			}
			check("ClusterEndpoints", epList(sp.ClusterEndpoints), tt.cluster)
			check("LocalEndpoints", epList(sp.LocalEndpoints), tt.local)
			check("ExternalClusterEndpoints", epList(sp.ExternalClusterEndpoints), tt.externalCluster)
			if sp.ExternallyAccessible() {
				check("ExternalEndpoints()", epList(sp.ExternalEndpoints()), tt.external)
			}
			for what, l := range map[string][]model.Endpoint{"ClusterEndpoints": sp.ClusterEndpoints,
				"LocalEndpoints": sp.LocalEndpoints, "ExternalClusterEndpoints": sp.ExternalClusterEndpoints} {
				if l != nil && len(l) == 0 {
					t.Errorf("%s is empty but not nil", what)
				}
			}
		})
	}
}

func TestComputeServicePortFields(t *testing.T) {
	svc := pt.Service("ns", "web", []string{"10.96.0.10", "fd00::10"},
		pt.Port("http", "TCP", 80), pt.Port("dns", "UDP", 53),
		pt.LoadBalancer("203.0.113.9", "2001:db8::9", "203.0.113.1"), pt.ProxyModeIngress("203.0.113.50"),
		pt.NodePort("http", 30080),
		pt.ExternalIPs("192.0.2.2", "192.0.2.1", "2001:db8::1"),
		pt.SourceRanges("10.0.0.0/8", "2001:db8::/32", "172.16.0.0/12"),
		pt.ExternalLocal(31000), pt.Affinity(600))
	view := computeView(t, model.IPv4, testNode, []*v1.Service{svc})

	if len(view.Services) != 2 {
		t.Errorf("view has %v, want the two ports of ns/web", view.SortedNames())
	}
	got := webPort(view, t)
	want := &model.ServicePort{
		Name:                model.ServicePortName{Namespace: "ns", Name: "web", Port: "http", Protocol: model.TCP},
		ClusterIP:           netip.MustParseAddr("10.96.0.10"),
		Port:                80,
		NodePort:            30080,
		ExternalIPs:         addrs("192.0.2.1", "192.0.2.2"),
		LoadBalancerIPs:     addrs("203.0.113.1", "203.0.113.9"),
		SourceRanges:        prefixes("10.0.0.0/8", "172.16.0.0/12"),
		ExternalPolicyLocal: true,
		AffinitySeconds:     600,
		HealthCheckNodePort: 31000,
	}
	if !got.Equal(want) {
		t.Errorf("service port:\n got %+v\nwant %+v", got, want)
	}
	dns := view.Services[model.ServicePortName{Namespace: "ns", Name: "web", Port: "dns", Protocol: model.UDP}]
	if dns == nil || dns.Port != 53 || dns.NodePort != 0 {
		t.Errorf("dns port = %+v", dns)
	}
}

func TestComputePortMatching(t *testing.T) {
	svc := webService(pt.Port("dns", "UDP", 53), pt.Port("dns", "TCP", 53))
	objs := []*discoveryv1.EndpointSlice{
		pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.SlicePort("dns", "UDP", 5353),
			pt.Endpoints(pt.Ready("10.0.0.1", "node-b"))),
		// The same address in a second slice, local there: the local copy wins.
		pt.Slice("ns", "web-2", "web", pt.SlicePort("http", "TCP", 8080), pt.SlicePort("dns", "TCP", 5354),
			pt.Endpoints(pt.Ready("10.0.0.1", "node-a"), pt.Ready("10.0.0.2", "node-b"))),
		// A slice of another family contributes nothing to the IPv4 view.
		pt.Slice("ns", "web-3", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("fd00::1", "node-a"))),
		// A slice of another service contributes nothing.
		pt.Slice("ns", "api-1", "api", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.0.0.9", "node-a"))),
	}
	view := computeView(t, model.IPv4, testNode, []*v1.Service{svc}, objs...)
	for port, want := range map[model.ServicePortName]string{
		{Namespace: "ns", Name: "web", Port: "http", Protocol: model.TCP}: "10.0.0.1:8080/local 10.0.0.2:8080",
		{Namespace: "ns", Name: "web", Port: "dns", Protocol: model.UDP}:  "10.0.0.1:5353",
		{Namespace: "ns", Name: "web", Port: "dns", Protocol: model.TCP}:  "10.0.0.1:5354/local 10.0.0.2:5354",
	} {
		sp, ok := view.Services[port]
		if !ok {
			t.Errorf("%v missing", port)
			continue
		}
		if got := epList(sp.ClusterEndpoints); got != want {
			t.Errorf("%v endpoints = [%s], want [%s]", port, got, want)
		}
	}
}

func TestComputeDuplicateKeepsFirstSlice(t *testing.T) {
	svc := webService()
	view := computeView(t, model.IPv4, testNode, []*v1.Service{svc},
		pt.Slice("ns", "web-b", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.NotReady("10.0.0.1", "node-b"))),
		pt.Slice("ns", "web-a", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.0.0.1", "node-b"))))
	if got := epList(webPort(view, t).ClusterEndpoints); got != "10.0.0.1:8080" {
		t.Errorf("endpoints = [%s]: the copy in the first slice by name (ready) should win", got)
	}
}

func TestComputeTopology(t *testing.T) {
	// node-a is in zone z1; node-b in z1 too; node-c in z2.
	inZ := func(e pt.Endpoint, zone string) pt.Endpoint { return e.InZone(zone) }
	a1 := inZ(pt.Ready("10.0.0.1", "node-a"), "z1")
	b1 := inZ(pt.Ready("10.0.0.2", "node-b"), "z1")
	c2 := inZ(pt.Ready("10.0.0.3", "node-c"), "z2")
	tests := []struct {
		name    string
		svcOpts []pt.ServiceOption
		eps     []pt.Endpoint
		node    model.NodeInfo
		cluster string
	}{
		{
			name:    "zone hints: only endpoints hinted for this node's zone",
			eps:     []pt.Endpoint{a1.HintZones("z1"), b1.HintZones("z2"), c2.HintZones("z1", "z2")},
			cluster: "10.0.0.1:8080/local 10.0.0.3:8080",
		},
		{
			name:    "zone hints used without trafficDistribution: hints are the controller's decision",
			eps:     []pt.Endpoint{a1.HintZones("z2"), b1.HintZones("z1"), c2.HintZones("z2")},
			cluster: "10.0.0.2:8080",
		},
		{
			name:    "zone hints naming no endpoint for this zone: all endpoints",
			eps:     []pt.Endpoint{a1.HintZones("z2"), c2.HintZones("z2")},
			cluster: "10.0.0.1:8080/local 10.0.0.3:8080",
		},
		{
			name:    "a ready endpoint without zone hints: all endpoints",
			eps:     []pt.Endpoint{a1.HintZones("z1"), b1, c2.HintZones("z2")},
			cluster: "10.0.0.1:8080/local 10.0.0.2:8080 10.0.0.3:8080",
		},
		{
			name:    "a not-ready endpoint without hints does not disable them",
			eps:     []pt.Endpoint{a1.HintZones("z2"), b1.HintZones("z1"), pt.NotReady("10.0.0.9", "node-c")},
			cluster: "10.0.0.2:8080",
		},
		{
			name:    "node hints take precedence over zone hints",
			eps:     []pt.Endpoint{a1.HintNodes("node-a").HintZones("z1"), b1.HintNodes("node-b").HintZones("z1"), c2.HintNodes("node-a").HintZones("z2")},
			cluster: "10.0.0.1:8080/local 10.0.0.3:8080",
		},
		{
			name:    "node hints naming another node: zone hints decide",
			eps:     []pt.Endpoint{a1.HintNodes("node-x").HintZones("z2"), b1.HintNodes("node-b").HintZones("z1"), c2.HintNodes("node-c").HintZones("z2")},
			cluster: "10.0.0.2:8080",
		},
		{
			name:    "node hints on some endpoints only: zone hints decide",
			eps:     []pt.Endpoint{a1.HintNodes("node-a").HintZones("z2"), b1.HintZones("z1"), c2.HintZones("z2")},
			cluster: "10.0.0.2:8080",
		},
		{
			name:    "no hints, no trafficDistribution: all endpoints",
			eps:     []pt.Endpoint{a1, b1, c2},
			cluster: "10.0.0.1:8080/local 10.0.0.2:8080 10.0.0.3:8080",
		},
		{
			name:    "no hints, PreferSameZone: derived from the endpoints' zones",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameZone")},
			eps:     []pt.Endpoint{a1, b1, c2},
			cluster: "10.0.0.1:8080/local 10.0.0.2:8080",
		},
		{
			name:    "no hints, PreferClose: same as PreferSameZone",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferClose")},
			eps:     []pt.Endpoint{c2, b1},
			cluster: "10.0.0.2:8080",
		},
		{
			name:    "no hints, PreferSameZone, nothing ready in this zone: all endpoints",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameZone")},
			eps:     []pt.Endpoint{c2, inZ(pt.NotReady("10.0.0.9", "node-b"), "z1")},
			cluster: "10.0.0.3:8080",
		},
		{
			name:    "no hints, PreferSameZone, node without a zone label: all endpoints",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameZone")},
			eps:     []pt.Endpoint{pt.Ready("10.0.0.1", "node-a"), c2},
			node:    model.NodeInfo{Name: "node-a"},
			cluster: "10.0.0.1:8080/local 10.0.0.3:8080",
		},
		{
			name:    "no hints, PreferSameNode: endpoints on this node",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameNode")},
			eps:     []pt.Endpoint{a1, b1, c2},
			cluster: "10.0.0.1:8080/local",
		},
		{
			name:    "no hints, PreferSameNode, none ready on this node: this zone",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameNode")},
			eps:     []pt.Endpoint{inZ(pt.NotReady("10.0.0.1", "node-a"), "z1"), b1, c2},
			cluster: "10.0.0.2:8080",
		},
		{
			name:    "no hints, PreferSameNode, none in this zone: all endpoints",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameNode")},
			eps:     []pt.Endpoint{c2, inZ(pt.Ready("10.0.0.4", "node-d"), "z3")},
			cluster: "10.0.0.3:8080 10.0.0.4:8080",
		},
		{
			name:    "partial hints with PreferSameZone: the controller's partial hints mean no narrowing",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameZone")},
			eps:     []pt.Endpoint{a1.HintZones("z1"), b1, c2},
			cluster: "10.0.0.1:8080/local 10.0.0.2:8080 10.0.0.3:8080",
		},
		{
			name:    "topology never applies to internalTrafficPolicy Local",
			svcOpts: []pt.ServiceOption{pt.InternalLocal()},
			eps:     []pt.Endpoint{a1.HintZones("z2"), b1.HintZones("z1"), c2.HintZones("z2")},
			cluster: "10.0.0.1:8080/local",
		},
		{
			name:    "no ready endpoint: terminating fallback ignores hints",
			eps:     []pt.Endpoint{pt.Terminating("10.0.0.1", "node-a", true).HintZones("z2"), pt.Terminating("10.0.0.3", "node-c", true).HintZones("z2")},
			cluster: "10.0.0.1:8080/local 10.0.0.3:8080",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := tt.node
			if node.Name == "" {
				node = testNode
			}
			es := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(tt.eps...))
			sp := webPort(computeView(t, model.IPv4, node, []*v1.Service{webService(tt.svcOpts...)}, es), t)
			if got := epList(sp.ClusterEndpoints); got != tt.cluster {
				t.Errorf("ClusterEndpoints = [%s], want [%s]", got, tt.cluster)
			}
		})
	}
}

func TestComputeTopologyAppliesToExternalClusterTraffic(t *testing.T) {
	svc := webService(pt.NodePort("http", 30080), pt.ExternalLocal(0))
	es := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(
		pt.Ready("10.0.0.1", "node-b").HintZones("z1"), pt.Ready("10.0.0.2", "node-a").HintZones("z2")))
	sp := webPort(computeView(t, model.IPv4, testNode, []*v1.Service{svc}, es), t)
	if got := epList(sp.ClusterEndpoints); got != "10.0.0.1:8080" {
		t.Errorf("ClusterEndpoints = [%s], want the z1-hinted endpoint", got)
	}
	if got := epList(sp.LocalEndpoints); got != "10.0.0.2:8080/local" {
		t.Errorf("LocalEndpoints = [%s]: Local policy must ignore hints", got)
	}
}

func TestComputeDualStack(t *testing.T) {
	dual := pt.Service("ns", "web", []string{"fd00::10", "10.96.0.10"}, pt.Port("http", "TCP", 80),
		pt.ExternalIPs("192.0.2.1", "2001:db8::1"), pt.LoadBalancer("203.0.113.1", "2001:db8::9"),
		pt.SourceRanges("10.0.0.0/8", "2001:db8::/32"))
	v4only := pt.Service("ns", "v4", []string{"10.96.0.11"}, pt.Port("http", "TCP", 80))
	v6only := pt.Service("ns", "v6", []string{"fd00::11"}, pt.Port("http", "TCP", 80))
	svcs := []*v1.Service{dual, v4only, v6only}
	eps := []*discoveryv1.EndpointSlice{
		pt.Slice("ns", "web-v4", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.0.0.1", "node-a"))),
		pt.Slice("ns", "web-v6", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("fd00:1::1", "node-b"))),
	}
	tests := []struct {
		family                      model.Family
		names                       []string
		clusterIP, extIP, lbIP, src string
		endpoints                   string
	}{
		{model.IPv4, []string{"ns/v4:http/TCP", "ns/web:http/TCP"}, "10.96.0.10", "192.0.2.1", "203.0.113.1", "10.0.0.0/8", "10.0.0.1:8080/local"},
		{model.IPv6, []string{"ns/v6:http/TCP", "ns/web:http/TCP"}, "fd00::10", "2001:db8::1", "2001:db8::9", "2001:db8::/32", "[fd00:1::1]:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.family.String(), func(t *testing.T) {
			view := computeView(t, tt.family, testNode, svcs, eps...)
			var names []string
			for _, n := range view.SortedNames() {
				names = append(names, n.String())
			}
			if !slices.Equal(names, tt.names) {
				t.Errorf("ports = %v, want %v", names, tt.names)
			}
			sp := webPort(view, t)
			for what, pair := range map[string][2]string{
				"ClusterIP":        {sp.ClusterIP.String(), tt.clusterIP},
				"ExternalIPs":      {addrString(sp.ExternalIPs), tt.extIP},
				"LoadBalancerIPs":  {addrString(sp.LoadBalancerIPs), tt.lbIP},
				"SourceRanges":     {addrString(sp.SourceRanges), tt.src},
				"ClusterEndpoints": {epList(sp.ClusterEndpoints), tt.endpoints},
			} {
				if pair[0] != pair[1] {
					t.Errorf("%s = %s, want %s", what, pair[0], pair[1])
				}
			}
		})
	}
}

func addrString[T interface{ String() string }](l []T) string {
	var out []string
	for _, x := range l {
		out = append(out, x.String())
	}
	return strings.Join(out, " ")
}

func TestComputeLocalNeedsNodeName(t *testing.T) {
	svc := webService(pt.InternalLocal())
	es := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080),
		pt.Endpoints(pt.Endpoint{Addr: "10.0.0.1"}))
	sp := webPort(computeView(t, model.IPv4, model.NodeInfo{}, []*v1.Service{svc}, es), t)
	if sp.ClusterEndpoints != nil {
		t.Errorf("an endpoint without nodeName counted as local on a node without a name: %v", sp.ClusterEndpoints)
	}
}

func TestComputeIsDeterministic(t *testing.T) {
	snap := benchSnapshot(200, 10)
	a, b := Compute(snap, model.IPv4), Compute(snap, model.IPv4)
	if len(a.Services) != 200 || len(a.Services) != len(b.Services) {
		t.Fatalf("views have %d and %d ports, want 200", len(a.Services), len(b.Services))
	}
	for name, sp := range a.Services {
		if other, ok := b.Services[name]; !ok || !sp.Equal(other) {
			t.Errorf("%v differs between two Computes of one snapshot", name)
		}
	}
}

func TestUpdateMatchesComputeAndReusesUnchangedPorts(t *testing.T) {
	tr, _, _ := newTestTracker()
	tr.SetNode(testNode)
	tr.UpsertService(webService())
	tr.UpsertService(pt.Service("ns", "api", []string{"10.96.0.11"}, pt.Port("http", "TCP", 80)))
	tr.UpsertService(pt.Service("ns", "old", []string{"10.96.0.12"}, pt.Port("http", "TCP", 80)))
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
	tr.UpsertEndpointSlice(pt.Slice("ns", "api-1", "api", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.0.1.1", "node-b"))))
	first := tr.Snapshot()
	firstView := Compute(first, model.IPv4)
	apiPort := model.ServicePortName{Namespace: "ns", Name: "api", Port: "http", Protocol: model.TCP}

	steps := []struct {
		name   string
		change func()
		from   func() (*Snapshot, *model.NodeView)
	}{
		{"an endpoint added, consecutive snapshots", func() { tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1", "10.0.0.2")) }, nil},
		{"a service deleted and one added", func() {
			tr.DeleteService("ns", "old")
			tr.UpsertService(pt.Service("ns", "new", []string{"10.96.0.13"}, pt.Port("http", "TCP", 80)))
		}, nil},
		{"from a snapshot two syncs back (a failed sync in between)", func() { tr.UpsertEndpointSlice(webSlice("web-2", "10.0.0.3")) },
			func() (*Snapshot, *model.NodeView) { return first, firstView }},
	}
	prevSnap, prev := first, firstView
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.change()
			snap := tr.Snapshot()
			base, baseView := prevSnap, prev
			if step.from != nil {
				base, baseView = step.from()
			}
			got := Update(snap, model.IPv4, base, baseView)
			if d := viewDiff(got, Compute(snap, model.IPv4)); d != "" {
				t.Fatalf("Update differs from Compute: %s", d)
			}
			if got.Services[apiPort] != firstView.Services[apiPort] {
				t.Error("the unchanged api port was recomputed instead of reused")
			}
			prevSnap, prev = snap, got
		})
	}

	t.Run("a node change recomputes everything", func(t *testing.T) {
		tr.SetNode(model.NodeInfo{Name: "node-b", Zone: "z1"})
		snap := tr.Snapshot()
		got := Update(snap, model.IPv4, prevSnap, prev)
		if d := viewDiff(got, Compute(snap, model.IPv4)); d != "" {
			t.Fatalf("Update differs from Compute: %s", d)
		}
		if got := epList(got.Services[apiPort].ClusterEndpoints); got != "10.0.1.1:8080/local" {
			t.Errorf("api endpoints after the node became node-b = [%s], want the endpoint local", got)
		}
	})

	t.Run("no previous view is a full Compute", func(t *testing.T) {
		snap := tr.Snapshot()
		if d := viewDiff(Update(snap, model.IPv6, nil, nil), Compute(snap, model.IPv6)); d != "" {
			t.Fatal(d)
		}
	})
}

func TestReachableEndpointsIsTheUnion(t *testing.T) {
	svc := webService(pt.InternalLocal(), pt.NodePort("http", 30080), pt.ExternalLocal(0))
	es := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080),
		pt.Endpoints(readyRemote, readyLocal, termRemote, notReady))
	sp := webPort(computeView(t, model.IPv4, testNode, []*v1.Service{svc}, es), t)
	if got := epList(sp.ReachableEndpoints()); got != "10.0.0.1:8080/local 10.0.0.2:8080" {
		t.Errorf("ReachableEndpoints = [%s], want the local and the remote ready endpoint once each", got)
	}
}

// HasEndpoints tells "endpoints, none for this node" (traffic dropped) from
// "no endpoints anywhere" (traffic rejected), whatever the policies.
func TestComputeHasEndpoints(t *testing.T) {
	tests := []struct {
		name    string
		svcOpts []pt.ServiceOption
		eps     []pt.Endpoint
		want    bool
	}{
		{"ready endpoints", nil, []pt.Endpoint{readyRemote}, true},
		{"internalTrafficPolicy Local with remote endpoints only", []pt.ServiceOption{pt.InternalLocal()}, []pt.Endpoint{readyRemote}, true},
		{"serving terminating endpoints only", nil, []pt.Endpoint{termRemote}, true},
		{"nothing that can serve", []pt.ServiceOption{pt.InternalLocal()}, []pt.Endpoint{notReady, termNotServing}, false},
		{"no endpoints", nil, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := pt.Service("ns", "web", []string{"10.96.0.10"}, append([]pt.ServiceOption{pt.Port("http", "TCP", 80)}, tc.svcOpts...)...)
			slice := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(tc.eps...))
			if got := webPort(computeView(t, model.IPv4, testNode, []*v1.Service{svc}, slice), t).HasEndpoints; got != tc.want {
				t.Fatalf("HasEndpoints = %v, want %v", got, tc.want)
			}
		})
	}
}

// Serving lists every serving endpoint, whatever the policies and the
// terminating fallback chose for new connections: flows to them may go on.
func TestComputeServingIsEveryServingEndpoint(t *testing.T) {
	svc := webService(pt.InternalLocal())
	es := pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080),
		pt.Endpoints(readyRemote, readyLocal, termLocal, termRemote, termNotServing, notReady))
	sp := webPort(computeView(t, model.IPv4, testNode, []*v1.Service{svc}, es), t)
	if got := epList(sp.ClusterEndpoints); got != "10.0.0.1:8080/local" {
		t.Errorf("ClusterEndpoints = [%s], want the local ready one", got)
	}
	if got, want := epList(sp.Serving), "10.0.0.1:8080/local 10.0.0.2:8080 10.0.0.3:8080/local 10.0.0.4:8080"; got != want {
		t.Errorf("Serving = [%s], want [%s]", got, want)
	}
	plain := webPort(computeView(t, model.IPv4, testNode, []*v1.Service{webService()},
		pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(readyRemote, readyLocal))), t)
	if &plain.Serving[0] != &plain.ClusterEndpoints[0] {
		t.Error("with every serving endpoint in use, Serving must share ClusterEndpoints' memory")
	}
}
