package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
)

// natBed is a node DNATing UDP "services" to pods with hand-written rules,
// standing in for the iptables backend.
type natBed struct {
	t        *testing.T
	bed      *netnstest.Bed
	family   model.Family
	iptables string
	rules    map[netip.AddrPort]*netnstest.NS // where each DNAT rule leads
}

func (b *natBed) addr(ns *netnstest.NS) netip.Addr {
	if b.family == model.IPv6 {
		return ns.IPv6()
	}
	return ns.IPv4()
}

// dnat sends UDP to dst to pod's port 5353, replacing what dst led to before.
func (b *natBed) dnat(dst netip.AddrPort, pod *netnstest.NS) {
	b.t.Helper()
	rule := func(op string, to *netnstest.NS) []string {
		return []string{"-t", "nat", op, "PREROUTING", "-d", dst.Addr().String(), "-p", "udp",
			"--dport", strconv.Itoa(int(dst.Port())), "-j", "DNAT", "--to-destination", b.endpoint(to).String()}
	}
	if before, ok := b.rules[dst]; ok {
		b.bed.Node().MustRun(b.iptables, rule("-D", before)...)
	}
	b.bed.Node().MustRun(b.iptables, rule("-A", pod)...)
	b.rules[dst] = pod
}

func (b *natBed) endpoint(pod *netnstest.NS) netip.AddrPort {
	return netip.AddrPortFrom(b.addr(pod), 5353)
}

func (b *natBed) ep(pod *netnstest.NS) model.Endpoint {
	return model.Endpoint{Addr: b.endpoint(pod), Ready: true, Serving: true}
}

func (b *natBed) ask(c *netnstest.UDPClient, want string) {
	b.t.Helper()
	got, err := c.Ask()
	switch {
	case want == "" && err == nil:
		b.t.Errorf("%s: answered by %s, want no answer", c.Local(), got)
	case want != "" && err != nil:
		b.t.Errorf("%s: %v, want an answer from %s", c.Local(), err, want)
	case want != "" && got.Server != want:
		b.t.Errorf("%s: answered by %s, want %s", c.Local(), got, want)
	}
}

// TestCleanFailsUDPClientsOverAtOnce: real UDP flows through DNAT rules in
// a node namespace; after an endpoint goes and the rules change, the clients
// keep reaching the old endpoint until Clean deletes their entries, and then
// reach the new one with their very next datagram. Unrelated flows survive.
func TestCleanFailsUDPClientsOverAtOnce(t *testing.T) {
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		t.Run(family.String(), func(t *testing.T) {
			b := &natBed{t: t, bed: netnstest.NewBed(t, 3), family: family, iptables: "iptables-nft", rules: map[netip.AddrPort]*netnstest.NS{}}
			if family == model.IPv6 {
				b.iptables = "ip6tables-nft"
			}
			testFailover(b, false)
		})
	}
}

// TestCleanAfterRestartJudgesTheTable: the first sync of a new process has
// no earlier view; Clean then reads the table and deletes the same stale
// entries, and keeps the rest (no flush).
func TestCleanAfterRestartJudgesTheTable(t *testing.T) {
	b := &natBed{t: t, bed: netnstest.NewBed(t, 3), family: model.IPv4, iptables: "iptables-nft", rules: map[netip.AddrPort]*netnstest.NS{}}
	testFailover(b, true)
}

// testFailover runs the failover scenario; afterRestart cleans with no
// previous view, as the first sync of a restarted svcproxy does.
func testFailover(b *natBed, afterRestart bool) {
	t, bed := b.t, b.bed
	pod0, pod1, client := bed.Pod(0), bed.Pod(1), bed.Pod(2)
	pod0.ServeUDP(5353)
	pod1.ServeUDP(5353)
	client.Timeout = 300 * time.Millisecond
	vip, otherVIP := serviceIPs(b.family)
	nodePort := netip.AddrPortFrom(b.addr(bed.Node()), 30053)

	dnsPort := &model.ServicePort{
		Name:             model.ServicePortName{Namespace: "kube-system", Name: "kube-dns", Protocol: model.UDP},
		ClusterIP:        vip,
		Port:             53,
		NodePort:         30053,
		ClusterEndpoints: []model.Endpoint{b.ep(pod0), b.ep(pod1)},
	}
	otherPort := &model.ServicePort{
		Name:             model.ServicePortName{Namespace: "default", Name: "other", Protocol: model.UDP},
		ClusterIP:        otherVIP,
		Port:             53,
		ClusterEndpoints: []model.Endpoint{b.ep(pod0)},
	}
	prev := nodeView(b.family, dnsPort, otherPort)

	// The kernel balanced these clients onto pod-0.
	b.dnat(netip.AddrPortFrom(vip, 53), pod0)
	b.dnat(nodePort, pod0)
	b.dnat(netip.AddrPortFrom(otherVIP, 53), pod0)
	viaVIP := udpClient(t, client, netip.AddrPortFrom(vip, 53))
	viaNodePort := udpClient(t, bed.Outside(), nodePort)
	unrelated := udpClient(t, client, netip.AddrPortFrom(otherVIP, 53))
	b.ask(viaVIP, "pod-0")
	b.ask(viaNodePort, "pod-0")
	b.ask(unrelated, "pod-0")

	// pod-0 leaves kube-dns; the rules follow, but not the existing flows.
	b.dnat(netip.AddrPortFrom(vip, 53), pod1)
	b.dnat(nodePort, pod1)
	b.ask(viaVIP, "pod-0")

	next := nodeView(b.family, withEndpoints(dnsPort, b.ep(pod1)), otherPort)
	if afterRestart {
		prev = nil
	}
	deleted := clean(t, bed, prev, next)
	if deleted != 2 {
		t.Errorf("Clean deleted %d entries, want 2 (the ClusterIP and the NodePort flow)", deleted)
	}
	b.ask(viaVIP, "pod-1")
	b.ask(viaNodePort, "pod-1")
	// The other service's flow still goes to pod-0 even once its rule
	// points elsewhere: its entry survived.
	b.dnat(netip.AddrPortFrom(otherVIP, 53), pod1)
	b.ask(unrelated, "pod-0")
}

// TestCleanRevivesAServiceThatHadNoEndpoints: datagrams sent while a
// service had no endpoints leave an entry that would keep later ones from
// being DNATed; Clean deletes it when the first endpoint appears.
func TestCleanRevivesAServiceThatHadNoEndpoints(t *testing.T) {
	b := &natBed{t: t, bed: netnstest.NewBed(t, 3), family: model.IPv4, iptables: "iptables-nft", rules: map[netip.AddrPort]*netnstest.NS{}}
	bed := b.bed
	bed.Pod(1).ServeUDP(5353)
	bed.Pod(2).Timeout = 300 * time.Millisecond
	vip, _ := serviceIPs(b.family)
	empty := &model.ServicePort{
		Name:      model.ServicePortName{Namespace: "default", Name: "late", Protocol: model.UDP},
		ClusterIP: vip,
		Port:      53,
	}
	// A nat table makes the node track connections, as svcproxy's would.
	b.dnat(netip.MustParseAddrPort("10.96.99.99:9"), bed.Pod(0))
	c := udpClient(t, bed.Pod(2), netip.AddrPortFrom(vip, 53))
	b.ask(c, "")

	b.dnat(netip.AddrPortFrom(vip, 53), bed.Pod(1))
	b.ask(c, "")

	if n := clean(t, bed, nodeView(b.family, empty), nodeView(b.family, withEndpoints(empty, b.ep(bed.Pod(1))))); n != 1 {
		t.Errorf("Clean deleted %d entries, want 1", n)
	}
	b.ask(c, "pod-1")
}

func serviceIPs(f model.Family) (vip, other netip.Addr) {
	if f == model.IPv6 {
		return netip.MustParseAddr("fd00:96::10"), netip.MustParseAddr("fd00:96::11")
	}
	return netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.96.0.11")
}

func withEndpoints(sp *model.ServicePort, eps ...model.Endpoint) *model.ServicePort {
	c := *sp
	c.ClusterEndpoints = eps
	return &c
}

func nodeView(f model.Family, sps ...*model.ServicePort) *model.NodeView {
	v := &model.NodeView{Family: f, Services: map[model.ServicePortName]*model.ServicePort{}}
	for _, sp := range sps {
		v.Services[sp.Name] = sp
	}
	return v
}

func udpClient(t *testing.T, ns *netnstest.NS, dst netip.AddrPort) *netnstest.UDPClient {
	t.Helper()
	c, err := ns.UDPClient(dst)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func clean(t *testing.T, bed *netnstest.Bed, prev, next *model.NodeView) int {
	t.Helper()
	table, err := Open(bed.Node().Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	n, err := Clean(table, prev, next)
	if err != nil {
		t.Fatalf("Clean: %v", err)
	}
	return n
}

// TestKernelTellsSCTPPortsApart: SCTP entries differ from each other only by
// port here, which the netlink library does not parse for SCTP. The
// kernel has no SCTP sockets to hand, so the entries are made with
// conntrack -I in an empty namespace.
func TestKernelTellsSCTPPortsApart(t *testing.T) {
	ns := netnstest.NewNS(t, "node")
	insert := func(proto, sport, dport, endpoint, endpointPort string) {
		args := []string{"-I", "-p", proto, "-t", "100",
			"-s", "10.244.0.12", "--sport", sport, "-d", "10.96.0.10", "--dport", dport,
			"--reply-src", endpoint, "--reply-port-src", endpointPort, "--reply-dst", "10.244.0.12", "--reply-port-dst", sport}
		if proto == "sctp" {
			args = append(args, "--state", "ESTABLISHED", "--orig-vtag", "1", "--reply-vtag", "2")
		}
		ns.MustRun("conntrack", args...)
	}
	insert("sctp", "40000", "53", "10.244.0.10", "5353") // to the endpoint that goes
	insert("sctp", "40001", "54", "10.244.0.10", "5354") // another port of the service, same pod
	insert("sctp", "40002", "53", "10.244.0.11", "5353") // to the endpoint that stays
	insert("udp", "40003", "53", "10.244.0.10", "5353")  // UDP, same addresses as the first

	name := model.ServicePortName{Namespace: "default", Name: "sig", Port: "a", Protocol: model.SCTP}
	sp := &model.ServicePort{Name: name, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 53}
	ep := func(s string) model.Endpoint {
		return model.Endpoint{Addr: netip.MustParseAddrPort(s), Ready: true}
	}
	prev := nodeView(model.IPv4, withEndpoints(sp, ep("10.244.0.10:5353"), ep("10.244.0.11:5353")))
	next := nodeView(model.IPv4, withEndpoints(sp, ep("10.244.0.11:5353")))

	table, err := Open(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	if n, err := Clean(table, prev, next); n != 1 || err != nil {
		t.Errorf("Clean deleted %d entries (%v), want 1", n, err)
	}
	left, err := table.List(model.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range left {
		got = append(got, fmt.Sprintf("%s %s->%s", e.Protocol, e.Orig.Dst, e.Reply.Src))
	}
	slices.Sort(got)
	want := []string{"SCTP 10.96.0.10:53->10.244.0.11:5353", "SCTP 10.96.0.10:54->10.244.0.10:5354", "UDP 10.96.0.10:53->10.244.0.10:5353"}
	if !slices.Equal(got, want) {
		t.Errorf("entries left:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
