package iptables_test

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/netfilter/tracer"
)

// Addresses of the test world (see view_test.go).
const (
	nodeIP    = "192.168.1.10"  // this node
	otherIP   = "172.16.0.10"   // another address of this node, outside --nodeport-addresses
	localPod  = "10.244.1.20"   // a pod on this node
	remotePod = "10.244.2.30"   // a pod on another node
	client    = "203.0.113.7"   // outside the cluster, inside the web LB's source range
	stranger  = "198.51.100.99" // outside the cluster and every source range
	lbIP      = "198.51.100.10"
)

// traceCase is a new connection and what must become of it.
type traceCase struct {
	name               string
	src, dst           string
	port               uint16
	proto              string // "" is tcp
	srcLocal, dstLocal bool
	iface              string // the interface it comes in on, if not from the node
	invalid            bool   // a packet of no connection (ctstate INVALID)
	// want lists every endpoint the connection may be DNATed to; empty:
	// it must not be DNATed.
	want []string
	masq bool
	// masqTo lists the destinations masqueraded when that depends on the
	// endpoint chosen (a pod balanced to itself).
	masqTo     []string
	verdict    string // "" is ACCEPT
	rejectWith string
}

// traceCases are checked against the scenario of the same name.
var traceCases = map[string][]traceCase{
	"clusterip": {
		{name: "pod to ClusterIP", src: localPod, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080"}},
		{name: "off-cluster source is masqueraded", src: client, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080"}, masq: true},
		{name: "node to ClusterIP is masqueraded", src: nodeIP, srcLocal: true, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080"}, masq: true},
		{name: "other port untouched", src: localPod, dst: "10.96.0.10", port: 81},
		{name: "other protocol untouched", src: localPod, dst: "10.96.0.10", port: 80, proto: "udp"},
	},
	"multiple-endpoints": {
		{name: "any of three", src: localPod, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080", "10.244.4.9:8080"}},
	},
	"no-endpoints": {
		{name: "TCP ClusterIP rejected with reset", src: localPod, dst: "10.96.0.10", port: 80, verdict: "REJECT", rejectWith: "tcp-reset"},
		{name: "node to ClusterIP rejected", src: nodeIP, srcLocal: true, dst: "10.96.0.10", port: 80, verdict: "REJECT", rejectWith: "tcp-reset"},
		{name: "UDP ClusterIP rejected with port unreachable", src: localPod, dst: "10.96.0.53", port: 53, proto: "udp", verdict: "REJECT", rejectWith: "icmp-port-unreachable"},
		{name: "NodePort rejected", src: client, dst: nodeIP, dstLocal: true, port: 30080, verdict: "REJECT", rejectWith: "tcp-reset"},
	},
	"nodeport": {
		{name: "client to NodePort is masqueraded", src: client, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "pod to NodePort is masqueraded", src: localPod, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "node to its own NodePort", src: nodeIP, srcLocal: true, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "NodePort on a routed, non-local address untouched", src: client, dst: "10.0.0.1", port: 30080},
		{name: "NodePort on loopback untouched (it could not be routed)", src: "127.0.0.1", srcLocal: true, dst: "127.0.0.1", dstLocal: true, port: 30080},
	},
	"loadbalancer-source-ranges": {
		{name: "allowed source reaches endpoints", src: client, dst: lbIP, port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "other source dropped", src: stranger, dst: lbIP, port: 80, verdict: "DROP"},
		{name: "ClusterIP not restricted", src: stranger, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "NodePort not restricted", src: stranger, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
	},
	"loadbalancer-source-ranges-node": {
		{name: "node to the LB IP it holds, from that IP", src: lbIP, srcLocal: true, dst: lbIP, dstLocal: true, port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "node to the LB IP from its own IP", src: nodeIP, srcLocal: true, dst: lbIP, port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "other source dropped", src: stranger, dst: lbIP, port: 80, verdict: "DROP"},
		{name: "a range holding loopback only does not admit the node", src: "198.51.100.11", srcLocal: true, dst: "198.51.100.11", dstLocal: true, port: 80, verdict: "DROP"},
	},
	"external-ips": {
		{name: "client to external IP is masqueraded", src: client, dst: "192.0.2.50", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "pod to external IP", src: localPod, dst: "192.0.2.50", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
	},
	"external-local": {
		{name: "client to LB keeps its source, local endpoint only", src: client, dst: lbIP, port: 80, want: []string{"10.244.1.5:8080"}},
		{name: "client to NodePort keeps its source", src: client, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.1.5:8080"}},
		{name: "pod to LB goes anywhere", src: remotePod, dst: lbIP, port: 80, want: []string{"10.244.1.5:8080", "10.244.2.5:8080"}},
		{name: "node to LB goes anywhere, masqueraded", src: nodeIP, srcLocal: true, dst: lbIP, port: 80, want: []string{"10.244.1.5:8080", "10.244.2.5:8080"}, masq: true},
		{name: "ClusterIP uses every endpoint", src: remotePod, dst: "10.96.0.10", port: 80, want: []string{"10.244.1.5:8080", "10.244.2.5:8080"}},
	},
	"external-local-none-here": {
		{name: "client to LB dropped, not rejected", src: client, dst: lbIP, port: 80, verdict: "DROP"},
		{name: "client to NodePort dropped", src: client, dst: nodeIP, dstLocal: true, port: 30080, verdict: "DROP"},
		{name: "pod to LB reaches remote endpoints", src: localPod, dst: lbIP, port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}},
		{name: "node to NodePort reaches remote endpoints", src: nodeIP, srcLocal: true, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
	},
	"internal-local": {
		{name: "ClusterIP goes to the local endpoint only", src: remotePod, dst: "10.96.0.10", port: 80, want: []string{"10.244.1.5:8080"}},
		{name: "ClusterIP with no local endpoint dropped", src: localPod, dst: "10.96.0.20", port: 443, verdict: "DROP"},
		{name: "NodePort still reaches remote endpoints", src: client, dst: nodeIP, dstLocal: true, port: 30443, want: []string{"10.244.2.6:6443"}, masq: true},
		{name: "ClusterIP-only port with endpoints elsewhere dropped", src: localPod, dst: "10.96.0.21", port: 6379, verdict: "DROP"},
		{name: "port with no endpoints anywhere rejected", src: localPod, dst: "10.96.0.22", port: 80, verdict: "REJECT", rejectWith: "tcp-reset"},
	},
	"affinity": {
		{name: "a new client may get either endpoint", src: localPod, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}},
	},
	"hairpin": {
		{name: "pod reaching itself is masqueraded", src: "10.244.1.5", dst: "10.96.0.10", port: 80, want: []string{"10.244.1.5:8080"}, masq: true},
		{name: "another pod is not", src: localPod, dst: "10.96.0.10", port: 80, want: []string{"10.244.1.5:8080"}},
		{name: "pod balanced to itself is masqueraded", src: "10.244.1.6", dst: "10.96.0.30", port: 5432, want: []string{"10.244.1.5:5432", "10.244.1.6:5432"}, masqTo: []string{"10.244.1.6:5432"}},
	},
	"masquerade-all": {
		{name: "pod traffic masqueraded too", src: localPod, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
	},
	"no-cluster-cidr": {
		{name: "off-cluster source not masqueraded", src: client, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}},
		{name: "node still masqueraded on the way to external local", src: nodeIP, srcLocal: true, dst: "198.51.100.40", port: 443, want: []string{"10.244.1.5:8443", "10.244.2.5:8443"}, masq: true},
		{name: "pods cannot be told apart: local endpoint only", src: localPod, dst: "198.51.100.40", port: 443, want: []string{"10.244.1.5:8443"}},
	},
	"detect-local-node-cidr": {
		{name: "pod of this node to ClusterIP keeps its source", src: localPod, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}},
		{name: "other sources to ClusterIP masqueraded", src: remotePod, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "pod to Local LB IP without a local endpoint reaches the others", src: localPod, dst: "198.51.100.40", port: 443, want: []string{"10.244.2.5:8443", "10.244.3.5:8443"}},
		{name: "outside client to it dropped", src: client, dst: "198.51.100.40", port: 443, verdict: "DROP"},
	},
	"detect-local-bridge": {
		{name: "pod from the bridge keeps its source", src: localPod, iface: "cbr0", dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}},
		{name: "pod range from elsewhere masqueraded (the bridge wins)", src: localPod, iface: "eth0", dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "node masqueraded", src: nodeIP, srcLocal: true, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "pod to Local LB IP without a local endpoint reaches the others", src: localPod, iface: "cbr0", dst: "198.51.100.40", port: 443, want: []string{"10.244.2.5:8443", "10.244.3.5:8443"}},
		{name: "outside client to it dropped", src: client, iface: "eth0", dst: "198.51.100.40", port: 443, verdict: "DROP"},
	},
	"detect-local-prefix": {
		{name: "pod from a veth keeps its source", src: localPod, iface: "veth1a2b", dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}},
		{name: "client from eth0 masqueraded", src: client, iface: "eth0", dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "pod to Local LB IP without a local endpoint reaches the others", src: localPod, iface: "veth1a2b", dst: "198.51.100.40", port: 443, want: []string{"10.244.2.5:8443", "10.244.3.5:8443"}},
		{name: "outside client to it dropped", src: client, iface: "eth0", dst: "198.51.100.40", port: 443, verdict: "DROP"},
		{name: "node to it masqueraded, to the others", src: nodeIP, srcLocal: true, dst: "198.51.100.40", port: 443, want: []string{"10.244.2.5:8443", "10.244.3.5:8443"}, masq: true},
	},
	"nodeport-addresses": {
		{name: "NodePort on an allowed address", src: client, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "NodePort on another local address untouched", src: client, dst: otherIP, dstLocal: true, port: 30080},
		{name: "endpointless NodePort rejected on an allowed address", src: client, dst: nodeIP, dstLocal: true, port: 30090, verdict: "REJECT", rejectWith: "tcp-reset"},
		{name: "endpointless NodePort elsewhere left alone", src: client, dst: otherIP, dstLocal: true, port: 30090},
	},
	"nodeport-addresses-other-family": {
		{name: "NodePort on the node IP", src: client, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "NodePort on another local address too", src: client, dst: otherIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
	},
	"localhost-nodeports": {
		{name: "node to 127.0.0.1:NodePort is served, masqueraded", src: "127.0.0.1", srcLocal: true, dst: "127.0.0.1", dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "node to another loopback address too", src: "127.0.0.1", srcLocal: true, dst: "127.0.0.2", dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "node IP still served", src: client, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
		{name: "endpointless NodePort on loopback rejected", src: "127.0.0.1", srcLocal: true, dst: "127.0.0.1", dstLocal: true, port: 30090, verdict: "REJECT", rejectWith: "tcp-reset"},
		{name: "other loopback ports left to the node", src: "127.0.0.1", srcLocal: true, dst: "127.0.0.1", dstLocal: true, port: 22},
		{name: "outside to a loopback service dropped (martian filter)", src: client, iface: "eth0", dst: "127.0.0.1", dstLocal: true, port: 22, verdict: "DROP"},
		{name: "outside, a packet of no connection to loopback dropped too (the filter sees every packet, as kube-proxy's)", src: client, iface: "eth0", dst: "127.0.0.1", dstLocal: true, port: 22, invalid: true, verdict: "DROP"},
		{name: "outside, a packet of no connection to the node IP is the node's", src: client, iface: "eth0", dst: nodeIP, dstLocal: true, port: 22, invalid: true},
	},
	"localhost-nodeports-not-in-nodeport-addresses": {
		{name: "loopback not served", src: "127.0.0.1", srcLocal: true, dst: "127.0.0.1", dstLocal: true, port: 30080},
		{name: "allowed address served", src: client, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.7:8080"}, masq: true},
	},
	"localhost-nodeports-ipv6": {
		{name: "never on ::1", src: "::1", srcLocal: true, dst: "::1", dstLocal: true, port: 30080},
		{name: "node address served", src: "2001:db8:2::7", dst: "fd00:192::10", dstLocal: true, port: 30080, want: []string{"[fd00:10:244:2::5]:8080"}, masq: true},
	},
	"udp": {
		{name: "UDP to either endpoint", src: localPod, dst: "10.96.0.53", port: 53, proto: "udp", want: []string{"10.244.2.8:53", "10.244.3.8:53"}},
		{name: "TCP on the UDP port untouched", src: localPod, dst: "10.96.0.53", port: 53},
	},
	"sctp": {
		{name: "SCTP ClusterIP", src: localPod, dst: "10.96.0.60", port: 3868, proto: "sctp", want: []string{"10.244.2.9:3868"}},
		{name: "SCTP NodePort", src: client, dst: nodeIP, dstLocal: true, port: 30868, proto: "sctp", want: []string{"10.244.2.9:3868"}, masq: true},
	},
	"ipv6": {
		{name: "pod to ClusterIP", src: "fd00:10:244:1::20", dst: "fd00:96::10", port: 80, want: []string{"[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080"}},
		{name: "hairpin", src: "fd00:10:244:1::5", dst: "fd00:96::10", port: 80, want: []string{"[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080"}, masqTo: []string{"[fd00:10:244:1::5]:8080"}},
		{name: "allowed source to LB", src: "2001:db8:1::7", dst: "2001:db8::10", port: 80, want: []string{"[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080"}, masq: true},
		{name: "other source to LB dropped", src: "2001:db8:2::7", dst: "2001:db8::10", port: 80, verdict: "DROP"},
		{name: "NodePort", src: "2001:db8:2::7", dst: "fd00:192::10", dstLocal: true, port: 30080, want: []string{"[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080"}, masq: true},
		{name: "UDP without endpoints rejected", src: "fd00:10:244:1::20", dst: "fd00:96::53", port: 53, proto: "udp", verdict: "REJECT", rejectWith: "icmp6-port-unreachable"},
	},
	"partial-endpoint-change": {
		{name: "new endpoint in use", src: localPod, dst: "10.96.0.10", port: 80, want: []string{"10.244.2.5:8080", "10.244.3.8:8080"}},
		{name: "NodePort follows", src: client, dst: nodeIP, dstLocal: true, port: 30080, want: []string{"10.244.2.5:8080", "10.244.3.8:8080"}, masq: true},
		{name: "other services unchanged", src: localPod, dst: "10.96.0.53", port: 53, proto: "udp", want: []string{"10.244.2.8:53"}},
	},
}

func TestTrace(t *testing.T) {
	for _, sc := range scenarios() {
		cases, ok := traceCases[sc.name]
		if !ok {
			t.Errorf("scenario %s has no trace cases", sc.name)
			continue
		}
		rs := load(t, sc)
		for _, tc := range cases {
			t.Run(sc.name+"/"+tc.name, func(t *testing.T) { checkTrace(t, rs, tc) })
		}
	}
}

// load builds the ruleset a scenario leaves in the kernel: its previous
// view's full plan if it has one, then its plan, then the jump rules.
func load(t *testing.T, sc scenario) *tracer.Ruleset {
	t.Helper()
	rs := tracer.New(sc.view.Family)
	if sc.prev != nil {
		restore(t, rs, iptables.Compile(sc.cfg, sc.prev, nil))
	}
	restore(t, rs, sc.plan())
	insertJumps(t, rs, sc.cfg, sc.view.Family)
	return rs
}

func restore(t *testing.T, rs *tracer.Ruleset, plan *netfilter.Plan) {
	t.Helper()
	if err := rs.Restore(plan.Render(nil)); err != nil {
		t.Fatalf("restore: %v", err)
	}
}

func insertJumps(t *testing.T, rs *tracer.Ruleset, cfg netfilter.Config, family model.Family) {
	t.Helper()
	for _, j := range netfilter.JumpRules() {
		if err := rs.Insert(string(j.Table), j.Chain, j.Rule); err != nil {
			t.Fatal(err)
		}
	}
}

func checkTrace(t *testing.T, rs *tracer.Ruleset, tc traceCase) {
	t.Helper()
	pkt := tracer.Packet{
		Src: netip.MustParseAddr(tc.src), Dst: netip.MustParseAddr(tc.dst),
		Proto: cmp.Or(tc.proto, "tcp"), DPort: tc.port,
		SrcLocal: tc.srcLocal, DstLocal: tc.dstLocal, InIface: tc.iface, Invalid: tc.invalid,
	}
	outcomes, err := rs.Trace(pkt)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range outcomes {
		if o.DNAT {
			got = append(got, o.Dst.String())
		}
		verdict := cmp.Or(tc.verdict, "ACCEPT")
		masq := tc.masq || o.DNAT && slices.Contains(tc.masqTo, o.Dst.String())
		if o.Verdict != verdict || o.Masquerade != masq || o.RejectWith != tc.rejectWith && o.Verdict == "REJECT" {
			t.Errorf("got %s (reject with %q), want %s, masquerade %v, reject with %q; path:\n%s",
				o.Verdict, o.RejectWith, verdict, masq, tc.rejectWith, o)
		}
	}
	if len(got) > 0 && len(got) != len(outcomes) {
		t.Errorf("only some paths are DNATed: %v of %d", got, len(outcomes))
	}
	slices.Sort(got)
	if !slices.Equal(slices.Compact(got), tc.want) {
		t.Errorf("DNAT destinations %v, want %v; paths:\n%s", got, tc.want, outcomesText(outcomes))
	}
}

func outcomesText(outcomes []tracer.Outcome) string {
	var b strings.Builder
	for _, o := range outcomes {
		b.WriteString(o.String() + "\n")
	}
	return b.String()
}
