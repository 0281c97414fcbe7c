package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// fuzzInput decodes fuzz bytes into choices; past the end it reads zeros.
type fuzzInput struct{ data []byte }

func (in *fuzzInput) byte() byte {
	if len(in.data) == 0 {
		return 0
	}
	b := in.data[0]
	in.data = in.data[1:]
	return b
}

func (in *fuzzInput) done() bool { return len(in.data) == 0 }

func pickFrom[T any](in *fuzzInput, choices ...T) T { return choices[int(in.byte())%len(choices)] }

// The choices below put valid, typical values first, so that low bytes
// (and the zeros past the end of the input) build objects that are
// programmed, and the fuzzer spends its time on policy rather than on
// rejected input.

// addr is mostly a valid address from a small space (so endpoints collide
// and dedup is exercised), sometimes garbage.
func (in *fuzzInput) addr() string {
	switch in.byte() % 8 {
	case 7:
		return pickFrom(in, "banana", "", "10.0.0.300", "fe80::1%eth0", "::ffff:10.0.0.1", "10.0.0.1/24", "010.0.0.1")
	case 4, 5, 6:
		return fmt.Sprintf("fd00::%x", in.byte()%8)
	default:
		return fmt.Sprintf("10.0.0.%d", in.byte()%8)
	}
}

func (in *fuzzInput) port() int32 {
	return pickFrom[int32](in, 80, 443, 53, 8080, 65535, 0, -1, 65536)
}

func (in *fuzzInput) protocol() string { return pickFrom(in, "TCP", "UDP", "SCTP", "", "ICMP", "tcp") }

func (in *fuzzInput) boolPtr() *bool { return pickFrom[*bool](in, nil, pt.Bool(true), pt.Bool(false)) }

func (in *fuzzInput) service() *v1.Service {
	name := pickFrom(in, "a", "b", "c")
	var ips []string
	switch in.byte() % 4 {
	case 0:
		ips = []string{in.addr()}
	case 1:
		ips = []string{in.addr(), in.addr()}
	case 2:
		ips = []string{"None"}
	}
	opts := []pt.ServiceOption{}
	for range 1 + in.byte()%2 {
		opts = append(opts, pt.Port(pickFrom(in, "", "p", "q"), in.protocol(), in.port()))
	}
	for flags := in.byte(); flags != 0; flags &= flags - 1 {
		switch flags & -flags {
		case 1:
			opts = append(opts, pt.NodePort(pickFrom(in, "", "p", "q"), 30000+int32(in.byte())))
		case 2:
			opts = append(opts, pt.LoadBalancer(in.addr()))
		case 4:
			opts = append(opts, pt.ExternalIPs(in.addr()))
		case 8:
			opts = append(opts, pt.ExternalLocal(31000))
		case 16:
			opts = append(opts, pt.InternalLocal())
		case 32:
			opts = append(opts, pt.Distribution(pickFrom(in, "PreferSameNode", "PreferSameZone", "PreferClose", "Nope")))
		case 64:
			opts = append(opts, pt.SourceRanges(pickFrom(in, "10.0.0.0/8", "fd00::/8", "bad", "10.0.0.0/33")))
		case 128:
			opts = append(opts, pt.Affinity(int32(in.byte())))
		}
	}
	return pt.Service("ns", name, ips, opts...)
}

func (in *fuzzInput) slice() *discoveryv1.EndpointSlice {
	svc := pickFrom(in, "a", "b", "c", "")
	var opts []pt.SliceOption
	for range 1 + in.byte()%2 {
		opts = append(opts, pt.SlicePort(pickFrom(in, "", "p", "q"), in.protocol(), in.port()))
	}
	var eps []pt.Endpoint
	for range 1 + in.byte()%4 {
		e := pt.Endpoint{
			Addr: in.addr(), Node: pickFrom(in, "node-a", "node-b", ""), Zone: pickFrom(in, "z1", "z2", ""),
			Ready: in.boolPtr(), Serving: in.boolPtr(), Terminating: in.boolPtr(),
		}
		if in.byte()%2 == 1 {
			e.ForZones = []string{pickFrom(in, "z1", "z2")}
		}
		if in.byte()%2 == 1 {
			e.ForNodes = []string{pickFrom(in, "node-a", "node-b")}
		}
		eps = append(eps, e)
	}
	opts = append(opts, pt.Endpoints(eps...))
	if in.byte()%4 == 0 {
		opts = append(opts, pt.AddressType(pickFrom[discoveryv1.AddressType](in, "IPv4", "IPv6", "FQDN")))
	}
	es := pt.Slice("ns", pickFrom(in, "s1", "s2", "s3", "s4"), svc, opts...)
	if svc == "" {
		delete(es.Labels, discoveryv1.LabelServiceName)
	}
	return es
}

// FuzzCompute drives a tracker with arbitrary objects and checks, at every
// snapshot, that Compute never panics, that its views keep their
// invariants, and that Update from any earlier snapshot gives the same view.
func FuzzCompute(f *testing.F) {
	// A walk through the main cases (more seeds in testdata/fuzz): an IPv4
	// service and its slice, then Local policies, hints, trafficDistribution,
	// a dual-stack service with an IPv6 slice, a slice deleted, the node
	// renamed. Bytes are read by fuzzInput in the order of its methods.
	f.Add([]byte{
		0, 0, 0, 0, 10, 0, 0, 0, 0, 0, // service a 10.0.0.2, port 80/TCP
		4, 0, 0, // node-a in z1
		1, 0, 0, 0, 0, 0, 2, // slice for a, port 80/TCP, 3 endpoints:
		0, 1, 0, 0, 0, 0, 0, 0, 0, //   10.0.0.1 on node-a, z1, ready
		0, 3, 1, 1, 0, 0, 0, 0, 0, //   10.0.0.3 on node-b, z2, ready
		0, 4, 1, 0, 2, 1, 1, 0, 0, //   10.0.0.4 on node-b, z1, serving terminating
		1, 0, // address type from the addresses, name s1
		5,                                    // snapshot
		0, 0, 0, 0, 10, 0, 0, 0, 0, 25, 0, 5, // a again: NodePort 30005, external and internal Local
		5,                   // snapshot
		1, 0, 0, 0, 0, 0, 1, // slice s2 for a, 2 endpoints with hints
		0, 5, 0, 0, 0, 0, 0, 1, 0, 1, 0,
		0, 6, 1, 1, 0, 0, 0, 1, 1, 1, 1,
		1, 1,
		0, 0, 0, 0, 10, 0, 0, 0, 0, 32, 1, // a again: PreferSameZone
		5,
		0, 1, 1, 0, 20, 4, 3, 1, 1, 0, 0, 2, 1, 2, 6, 0, 7, 4, 2, // b: dual-stack, ports p and q, LB and external IPs
		1, 1, 1, 1, 0, 3, 2, 1, 2, 1, // slice s3 for b: ports p 8080/TCP and q 53/UDP, 2 IPv6 endpoints
		4, 1, 0, 0, 0, 0, 0, 0, 0,
		4, 2, 1, 1, 0, 0, 0, 0, 0,
		1, 2,
		3, 0, // delete slice s1
		5,
		4, 1, 0, // the node becomes node-b
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{data: data}
		tr, _, _ := newTestTracker()
		var history []computedViews
		for steps := 0; !in.done() && steps < 64; steps++ {
			switch in.byte() % 6 {
			case 0:
				tr.UpsertService(in.service())
			case 1:
				tr.UpsertEndpointSlice(in.slice())
			case 2:
				tr.DeleteService("ns", pickFrom(in, "a", "b", "c"))
			case 3:
				tr.DeleteEndpointSlice("ns", pickFrom(in, "s1", "s2", "s3", "s4"))
			case 4:
				tr.SetNode(model.NodeInfo{Name: pickFrom(in, "node-a", "node-b", ""), Zone: pickFrom(in, "z1", "z2", "")})
			case 5:
				history = append(history, checkSnapshot(t, tr.Snapshot(), history))
			}
		}
		checkSnapshot(t, tr.Snapshot(), history)
	})
}

// computedViews are the views of one snapshot, kept so that later
// snapshots can check Update from them.
type computedViews struct {
	snap  *Snapshot
	views map[model.Family]*model.NodeView
}

// checkSnapshot computes both families' views, checks their invariants and
// that Update from every earlier snapshot agrees with Compute.
func checkSnapshot(t *testing.T, snap *Snapshot, history []computedViews) computedViews {
	t.Helper()
	c := computedViews{snap: snap, views: map[model.Family]*model.NodeView{}}
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		view := Compute(snap, family)
		checkView(t, snap, view)
		for _, earlier := range history {
			updated := Update(snap, family, earlier.snap, earlier.views[family])
			if d := viewDiff(updated, view); d != "" {
				t.Fatalf("Update from snapshot %d differs from Compute: %s", earlier.snap.seq, d)
			}
			// The ports an updated view says it changed are those a walk
			// of both views finds (a view literal has no lineage).
			walked := &model.NodeView{Family: updated.Family, Node: updated.Node, Services: updated.Services}
			if got, want := model.ChangedPorts(updated, earlier.views[family]), model.ChangedPorts(walked, earlier.views[family]); !slices.Equal(got, want) {
				t.Fatalf("Update from snapshot %d: changed ports %v, a walk finds %v", earlier.snap.seq, got, want)
			}
		}
		c.views[family] = view
	}
	return c
}

// checkView asserts what any backend relies on in a view.
func checkView(t *testing.T, snap *Snapshot, view *model.NodeView) {
	t.Helper()
	for name, sp := range view.Services {
		if sp.Name != name {
			t.Fatalf("%v filed under %v", sp.Name, name)
		}
		if model.FamilyOf(sp.ClusterIP) != view.Family {
			t.Fatalf("%v: ClusterIP %v in the %v view", name, sp.ClusterIP, view.Family)
		}
		for _, a := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
			if model.FamilyOf(a) != view.Family {
				t.Fatalf("%v: address %v in the %v view", name, a, view.Family)
			}
		}
		for _, p := range sp.SourceRanges {
			if model.FamilyOf(p.Addr()) != view.Family {
				t.Fatalf("%v: source range %v in the %v view", name, p, view.Family)
			}
		}
		if sp.Port == 0 || sp.Protocol() < model.TCP || sp.Protocol() > model.SCTP {
			t.Fatalf("%v: port %d protocol %v", name, sp.Port, sp.Protocol())
		}
		lists := map[string][]model.Endpoint{"cluster": sp.ClusterEndpoints, "local": sp.LocalEndpoints, "externalCluster": sp.ExternalClusterEndpoints}
		for what, eps := range lists {
			checkEndpoints(t, snap, view, name, what, eps)
		}
		for _, e := range sp.LocalEndpoints {
			if !e.Local {
				t.Fatalf("%v: remote endpoint %v among the local ones", name, e)
			}
		}
		if sp.InternalPolicyLocal {
			for _, e := range sp.ClusterEndpoints {
				if !e.Local {
					t.Fatalf("%v: internalTrafficPolicy Local but ClusterIP traffic may reach %v", name, e)
				}
			}
		}
	}
}

func checkEndpoints(t *testing.T, snap *Snapshot, view *model.NodeView, name model.ServicePortName, what string, eps []model.Endpoint) {
	t.Helper()
	if eps != nil && len(eps) == 0 {
		t.Fatalf("%v: %s endpoints empty but not nil", name, what)
	}
	if !slices.IsSortedFunc(eps, func(a, b model.Endpoint) int { return a.Addr.Compare(b.Addr) }) {
		t.Fatalf("%v: %s endpoints not sorted: %v", name, what, eps)
	}
	for i, e := range eps {
		if i > 0 && eps[i-1].Addr == e.Addr {
			t.Fatalf("%v: %s endpoint %v twice", name, what, e)
		}
		if model.FamilyOf(e.Addr.Addr()) != view.Family {
			t.Fatalf("%v: %s endpoint %v in the %v view", name, what, e, view.Family)
		}
		if !e.Ready && !(e.Serving && e.Terminating) {
			t.Fatalf("%v: %s endpoint %v is neither ready nor serving-terminating", name, what, e)
		}
		if e.Local && !runsOn(snap, ServiceName{name.Namespace, name.Name}, e.Addr.Addr(), view.Node.Name) {
			t.Fatalf("%v: %s endpoint %v marked local but no slice puts it on %q", name, what, e, view.Node.Name)
		}
	}
}

func runsOn(snap *Snapshot, svc ServiceName, addr netip.Addr, node string) bool {
	for _, es := range snap.EndpointSlices(svc) {
		for _, e := range es.Endpoints {
			if e.Addr == addr && e.NodeName == node && node != "" {
				return true
			}
		}
	}
	return false
}

// viewDiff describes the first difference between two views, or "".
func viewDiff(got, want *model.NodeView) string {
	if got.Family != want.Family || !nodeEqual(got.Node, want.Node) {
		return fmt.Sprintf("family/node %v %+v, want %v %+v", got.Family, got.Node, want.Family, want.Node)
	}
	for name, sp := range want.Services {
		if other, ok := got.Services[name]; !ok || !sp.Equal(other) {
			return fmt.Sprintf("%v: got %+v, want %+v", name, other, sp)
		}
	}
	for name := range got.Services {
		if _, ok := want.Services[name]; !ok {
			return fmt.Sprintf("%v present, want absent", name)
		}
	}
	return ""
}
