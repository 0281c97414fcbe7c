package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/model"
)

func dnsName() model.ServicePortName {
	return model.ServicePortName{Namespace: "kube-system", Name: "kube-dns", Port: "dns", Protocol: model.UDP}
}

func ep(s string) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddrPort(s), Ready: true, Serving: true}
}

// dnsPort is a UDP service port with every kind of address.
func dnsPort(name model.ServicePortName, eps ...model.Endpoint) *model.ServicePort {
	return &model.ServicePort{
		Name:             name,
		ClusterIP:        netip.MustParseAddr("10.96.0.10"),
		Port:             53,
		NodePort:         30053,
		ExternalIPs:      []netip.Addr{netip.MustParseAddr("203.0.113.7")},
		LoadBalancerIPs:  []netip.Addr{netip.MustParseAddr("198.51.100.9")},
		ClusterEndpoints: eps,
	}
}

// serving sets the port's serving endpoints: all of them, wherever they
// are and whatever traffic the port sends them.
func serving(sp *model.ServicePort, eps ...model.Endpoint) *model.ServicePort {
	sp.Serving = eps
	return sp
}

// terminating is an endpoint that is terminating but still serving.
func terminating(e model.Endpoint) model.Endpoint {
	e.Ready, e.Terminating = false, true
	return e
}

// withLocal sets the endpoints on this node that Local policies use.
func withLocal(sp *model.ServicePort, eps ...model.Endpoint) *model.ServicePort {
	sp.ClusterEndpoints = eps
	return sp
}

// clusterIPOnly leaves the port no external address and no node port.
func clusterIPOnly(sp *model.ServicePort) *model.ServicePort {
	sp.NodePort, sp.ExternalIPs, sp.LoadBalancerIPs = 0, nil, nil
	return sp
}

// externalLocal makes the port externalTrafficPolicy Local with these
// local endpoints.
func externalLocal(sp *model.ServicePort, eps ...model.Endpoint) *model.ServicePort {
	sp.ExternalPolicyLocal = true
	sp.LocalEndpoints = eps
	return sp
}

func view(sps ...*model.ServicePort) *model.NodeView {
	v := &model.NodeView{Family: model.IPv4, Services: map[model.ServicePortName]*model.ServicePort{}}
	for _, sp := range sps {
		v.Services[sp.Name] = sp
	}
	return v
}

// flowsText renders flows one a line, "udp 10.96.0.10:53 -> 10.244.0.5:53",
// with "*" for any node address and "(not DNATed)" for no endpoint.
func flowsText(flows []Flow) string {
	var lines []string
	for _, f := range flows {
		dst, to := "*", "(not DNATed)"
		if f.Dst.IsValid() {
			dst = f.Dst.String()
		}
		if f.Endpoint.IsValid() {
			to = f.Endpoint.String()
		}
		lines = append(lines, fmt.Sprintf("%s %s:%d -> %s", f.Protocol.Lower(), dst, f.DstPort, to))
	}
	return strings.Join(lines, "\n")
}

func TestPlan(t *testing.T) {
	dns := dnsName()
	tcp := dns
	tcp.Protocol = model.TCP
	sctp := dns
	sctp.Protocol = model.SCTP
	a, b := ep("10.244.0.5:53"), ep("10.244.0.6:53")
	localOnly := dnsPort(dns)
	localOnly.LocalEndpoints = []model.Endpoint{a}
	// internalTrafficPolicy Local, externally reachable: the ClusterIP uses
	// local endpoints, outside traffic all of them.
	internalLocal := func(external ...model.Endpoint) *model.ServicePort {
		sp := dnsPort(dns)
		sp.InternalPolicyLocal = true
		sp.ExternalClusterEndpoints = external
		return sp
	}

	cases := []struct {
		name       string
		prev, next *model.NodeView
		want       []string
	}{
		{name: "first sync after a start flushes nothing", prev: nil, next: view(dnsPort(dns, a))},
		{
			name: "internalTrafficPolicy Local: a remote endpoint outside traffic used is gone",
			prev: view(internalLocal(a, b)), next: view(internalLocal(a)),
			want: []string{
				"udp 10.96.0.10:53 -> 10.244.0.6:53",
				"udp 203.0.113.7:53 -> 10.244.0.6:53",
				"udp 198.51.100.9:53 -> 10.244.0.6:53",
				"udp *:30053 -> 10.244.0.6:53",
			},
		},
		{name: "nothing changed", prev: view(dnsPort(dns, a, b)), next: view(dnsPort(dns, a, b))},
		{name: "an endpoint added", prev: view(dnsPort(dns, a)), next: view(dnsPort(dns, a, b))},
		{
			name: "UDP endpoint gone: every service address", prev: view(dnsPort(dns, a, b)), next: view(dnsPort(dns, a)),
			want: []string{
				"udp 10.96.0.10:53 -> 10.244.0.6:53",
				"udp 203.0.113.7:53 -> 10.244.0.6:53",
				"udp 198.51.100.9:53 -> 10.244.0.6:53",
				"udp *:30053 -> 10.244.0.6:53",
			},
		},
		{
			name: "SCTP endpoint gone", prev: view(dnsPort(sctp, a, b)), next: view(dnsPort(sctp, b)),
			want: []string{
				"sctp 10.96.0.10:53 -> 10.244.0.5:53",
				"sctp 203.0.113.7:53 -> 10.244.0.5:53",
				"sctp 198.51.100.9:53 -> 10.244.0.5:53",
				"sctp *:30053 -> 10.244.0.5:53",
			},
		},
		{name: "TCP endpoint gone is left to TCP", prev: view(dnsPort(tcp, a, b)), next: view(dnsPort(tcp, a))},
		{
			name: "endpoint moved to another port", prev: view(dnsPort(dns, a)), next: view(dnsPort(dns, ep("10.244.0.5:5353"))),
			want: []string{
				"udp 10.96.0.10:53 -> 10.244.0.5:53",
				"udp 203.0.113.7:53 -> 10.244.0.5:53",
				"udp 198.51.100.9:53 -> 10.244.0.5:53",
				"udp *:30053 -> 10.244.0.5:53",
			},
		},
		{name: "endpoint still used for external traffic", prev: view(dnsPort(dns, a)), next: view(localOnly)},
		{
			name: "service deleted", prev: view(dnsPort(dns, a), dnsPort(tcp, a)), next: view(),
			want: []string{
				"udp 10.96.0.10:53 -> 10.244.0.5:53",
				"udp 203.0.113.7:53 -> 10.244.0.5:53",
				"udp 198.51.100.9:53 -> 10.244.0.5:53",
				"udp *:30053 -> 10.244.0.5:53",
			},
		},
		{
			name: "first endpoints of a service", prev: view(dnsPort(dns)), next: view(dnsPort(dns, a)),
			want: []string{
				"udp 10.96.0.10:53 -> (not DNATed)",
				"udp 203.0.113.7:53 -> (not DNATed)",
				"udp 198.51.100.9:53 -> (not DNATed)",
				"udp *:30053 -> (not DNATed)",
			},
		},
		{
			name: "new service with endpoints", prev: view(), next: view(dnsPort(dns, a)),
			want: []string{
				"udp 10.96.0.10:53 -> (not DNATed)",
				"udp 203.0.113.7:53 -> (not DNATed)",
				"udp 198.51.100.9:53 -> (not DNATed)",
				"udp *:30053 -> (not DNATed)",
			},
		},
		{name: "service lost its last endpoint", prev: view(dnsPort(tcp, a)), next: view(dnsPort(tcp))},
		// kube-proxy keeps the flows to every serving endpoint, whatever
		// the policies, topology or termination leave to new connections.
		{
			name: "endpoint terminating but serving keeps its flows",
			prev: view(serving(dnsPort(dns, a, b), a, b)), next: view(serving(dnsPort(dns, a), a, terminating(b))),
		},
		{
			name: "terminating endpoint stops serving",
			prev: view(serving(dnsPort(dns, a), a, terminating(b))), next: view(serving(dnsPort(dns, a), a)),
			want: []string{
				"udp 10.96.0.10:53 -> 10.244.0.6:53",
				"udp 203.0.113.7:53 -> 10.244.0.6:53",
				"udp 198.51.100.9:53 -> 10.244.0.6:53",
				"udp *:30053 -> 10.244.0.6:53",
			},
		},
		{
			name: "only terminating endpoints left: the fallback keeps the flows",
			prev: view(serving(dnsPort(dns, a, b), a, b)), next: view(serving(dnsPort(dns, terminating(b)), terminating(a), terminating(b))),
		},
		{
			name: "topology leaves a serving endpoint out of new connections",
			prev: view(serving(dnsPort(dns, a, b), a, b)), next: view(serving(dnsPort(dns, a), a, b)),
		},
		{
			name: "internalTrafficPolicy turned Local: remote serving endpoints keep their flows",
			prev: view(serving(clusterIPOnly(dnsPort(dns, a, b)), a, b)),
			next: view(serving(clusterIPOnly(withLocal(internalLocal(), a)), a, b)),
		},
		{
			name: "externalTrafficPolicy turned Local: remote serving endpoints keep their flows",
			prev: view(serving(dnsPort(dns, a, b), a, b)), next: view(serving(externalLocal(dnsPort(dns, a, b), a), a, b)),
		},
		{
			name: "endpoint left out by topology before is gone",
			prev: view(serving(dnsPort(dns, a), a, b)), next: view(serving(dnsPort(dns, a), a)),
			want: []string{
				"udp 10.96.0.10:53 -> 10.244.0.6:53",
				"udp 203.0.113.7:53 -> 10.244.0.6:53",
				"udp 198.51.100.9:53 -> 10.244.0.6:53",
				"udp *:30053 -> 10.244.0.6:53",
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := flowsText(Plan(c.prev, c.next))
			if want := strings.Join(c.want, "\n"); got != want {
				t.Errorf("Plan:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestPlanIsDeterministic(t *testing.T) {
	prev, next := view(), view()
	for i := range 20 {
		name := dnsName()
		name.Name = fmt.Sprintf("svc-%02d", i)
		prev.Services[name] = dnsPort(name, ep("10.244.0.5:53"), ep(fmt.Sprintf("10.244.1.%d:53", i)))
		next.Services[name] = dnsPort(name, ep("10.244.0.5:53"))
	}
	first := flowsText(Plan(prev, next))
	for range 5 {
		if again := flowsText(Plan(prev, next)); again != first {
			t.Fatalf("Plan changed between runs:\n%s\nthen:\n%s", first, again)
		}
	}
}

func entry(proto model.Protocol, client, dst, replySrc string) Entry {
	c := netip.MustParseAddrPort(client)
	return Entry{
		Protocol: proto,
		Orig:     Tuple{Src: c, Dst: netip.MustParseAddrPort(dst)},
		Reply:    Tuple{Src: netip.MustParseAddrPort(replySrc), Dst: c},
	}
}

func TestCleanDeletesOnlyStaleEntries(t *testing.T) {
	a, b := ep("10.244.0.5:53"), ep("10.244.0.6:53")
	dns, other := dnsName(), dnsName()
	other.Name = "other"
	otherPort := dnsPort(other, b)
	otherPort.ClusterIP = netip.MustParseAddr("10.96.0.11")
	otherPort.NodePort = 30054

	table := &FakeTable{Entries: []Entry{
		entry(model.UDP, "10.244.0.9:40000", "10.96.0.10:53", "10.244.0.6:53"),        // stale: to b via ClusterIP
		entry(model.UDP, "192.168.50.2:40001", "192.168.50.1:30053", "10.244.0.6:53"), // stale: to b via NodePort
		entry(model.UDP, "192.168.50.2:40002", "198.51.100.9:53", "10.244.0.6:53"),    // stale: to b via LB IP
		entry(model.UDP, "10.244.0.9:40003", "10.96.0.10:53", "10.244.0.5:53"),        // to a, still an endpoint
		entry(model.UDP, "10.244.0.9:40004", "10.96.0.11:53", "10.244.0.6:53"),        // another service's flow to b
		entry(model.TCP, "10.244.0.9:40005", "10.96.0.10:53", "10.244.0.6:53"),        // TCP
		entry(model.UDP, "10.244.0.9:40006", "10.244.0.6:53", "10.244.0.6:53"),        // straight to the pod
	}}
	prev := view(dnsPort(dns, a, b), otherPort)
	next := view(dnsPort(dns, a), otherPort)

	n, err := Clean(table, prev, next)
	if err != nil {
		t.Fatal(err)
	}
	var left []uint16
	for _, e := range table.Entries {
		left = append(left, e.Orig.Src.Port())
	}
	if want := []uint16{40003, 40004, 40005, 40006}; n != 3 || !slices.Equal(left, want) {
		t.Errorf("deleted %d, entries left from client ports %v; want 3 deleted, %v left", n, left, want)
	}
}

func TestCleanRevivedServiceDeletesUndeliveredEntriesOnly(t *testing.T) {
	dns := dnsName()
	table := &FakeTable{Entries: []Entry{
		entry(model.UDP, "10.244.0.9:40000", "10.96.0.10:53", "10.96.0.10:53"),             // sent while no endpoint
		entry(model.UDP, "192.168.50.2:40001", "192.168.50.1:30053", "192.168.50.1:30053"), // NodePort, no endpoint
		entry(model.UDP, "10.244.0.9:40002", "10.96.0.10:53", "10.244.0.5:53"),             // already DNATed
	}}
	if _, err := Clean(table, view(dnsPort(dns)), view(dnsPort(dns, ep("10.244.0.5:53")))); err != nil {
		t.Fatal(err)
	}
	if len(table.Entries) != 1 || table.Entries[0].Orig.Src.Port() != 40002 {
		t.Errorf("entries left: %v; want only the DNATed one from port 40002", table.Entries)
	}
}

func TestCleanSkipsTheTableWhenNothingIsStale(t *testing.T) {
	dns := dnsName()
	table := &FakeTable{Err: fmt.Errorf("must not be called")}
	if _, err := Clean(table, view(dnsPort(dns, ep("10.244.0.5:53"))), view(dnsPort(dns, ep("10.244.0.5:53")))); err != nil {
		t.Errorf("Clean with nothing stale: %v", err)
	}
	if _, err := Clean(table, nil, view(dnsPort(dns, ep("10.244.0.5:53")))); err != nil {
		t.Errorf("Clean on the first sync: %v", err)
	}
	if len(table.Calls) != 0 {
		t.Errorf("Clean called the table %d times for nothing", len(table.Calls))
	}
}

func TestCleanReportsTableErrors(t *testing.T) {
	dns := dnsName()
	table := &FakeTable{Err: fmt.Errorf("netlink: operation not permitted")}
	_, err := Clean(table, view(dnsPort(dns, ep("10.244.0.5:53"))), view(dnsPort(dns)))
	if err == nil || !strings.Contains(err.Error(), "operation not permitted") {
		t.Errorf("Clean error = %v, want the table's error", err)
	}
}

func TestFlowMatchesOnlyItsFamily(t *testing.T) {
	f := Flow{Family: model.IPv6, Protocol: model.UDP, DstPort: 30053, Endpoint: netip.MustParseAddrPort("[fd00:244::5]:53")}
	v6 := entry(model.UDP, "[fd00:50::2]:40000", "[fd00:50::1]:30053", "[fd00:244::5]:53")
	v4 := entry(model.UDP, "192.168.50.2:40000", "192.168.50.1:30053", "10.244.0.5:53")
	if !f.Matches(v6) || f.Matches(v4) {
		t.Errorf("NodePort flow %+v: matches v6 entry %v, v4 entry %v; want true, false", f, f.Matches(v6), f.Matches(v4))
	}
}

// PlanFromTable judges the entries a table holds against a view: the first
// sync of a restarted svcproxy has no earlier view to diff with.
func TestPlanFromTable(t *testing.T) {
	dns := dnsName()
	a, b, c := ep("10.244.0.5:53"), ep("10.244.0.6:53"), terminating(ep("10.244.0.7:53"))
	next := view(serving(dnsPort(dns, a), a, c))
	entry := func(proto model.Protocol, dst, replySrc string) Entry {
		d := netip.MustParseAddrPort(dst)
		return Entry{Protocol: proto, Orig: Tuple{Src: netip.MustParseAddrPort("10.244.0.9:40000"), Dst: d},
			Reply: Tuple{Src: netip.MustParseAddrPort(replySrc), Dst: netip.MustParseAddrPort("10.244.0.9:40000")}}
	}
	entries := []Entry{
		entry(model.UDP, "10.96.0.10:53", a.Addr.String()),         // live endpoint: kept
		entry(model.UDP, "10.96.0.10:53", b.Addr.String()),         // gone endpoint: stale
		entry(model.UDP, "198.51.100.9:53", b.Addr.String()),       // LB IP to a gone endpoint: stale
		entry(model.UDP, "192.168.1.7:30053", b.Addr.String()),     // node port to a gone endpoint: stale
		entry(model.UDP, "192.168.1.7:30053", "192.168.1.7:30053"), // node port, not DNATed: not ours to judge
		entry(model.UDP, "203.0.113.7:53", "203.0.113.7:53"),       // external IP never DNATed, endpoints now: stale
		entry(model.TCP, "10.96.0.10:53", b.Addr.String()),         // TCP: left alone
		entry(model.UDP, "10.96.0.99:53", b.Addr.String()),         // not a service address: left alone
		entry(model.UDP, "10.96.0.10:53", c.Addr.String()),         // serving, terminating: kept
	}
	got := flowsText(PlanFromTable(next, entries))
	want := strings.Join([]string{
		"udp *:30053 -> 10.244.0.6:53",
		"udp 10.96.0.10:53 -> 10.244.0.6:53",
		"udp 198.51.100.9:53 -> 10.244.0.6:53",
		"udp 203.0.113.7:53 -> (not DNATed)",
	}, "\n")
	if got != want {
		t.Fatalf("PlanFromTable:\n%s\nwant:\n%s", got, want)
	}
}

func TestCleanWithoutPrevDeletesOnlyWhatTheViewMakesStale(t *testing.T) {
	dns := dnsName()
	a, b := ep("10.244.0.5:53"), ep("10.244.0.6:53")
	live := Entry{Protocol: model.UDP, Orig: Tuple{Dst: netip.MustParseAddrPort("10.96.0.10:53")}, Reply: Tuple{Src: a.Addr}}
	dead := Entry{Protocol: model.UDP, Orig: Tuple{Dst: netip.MustParseAddrPort("10.96.0.10:53")}, Reply: Tuple{Src: b.Addr}}
	table := &FakeTable{Entries: []Entry{live, dead}}
	n, err := Clean(table, nil, view(dnsPort(dns, a)))
	if err != nil || n != 1 || !slices.Equal(table.Entries, []Entry{live}) {
		t.Fatalf("Clean(nil prev) = %d, %v; left %v, want only the live entry", n, err, table.Entries)
	}
}
