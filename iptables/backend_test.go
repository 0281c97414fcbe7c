package iptables

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

func webName() model.ServicePortName {
	return model.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: model.TCP}
}

func dnsName() model.ServicePortName {
	return model.ServicePortName{Namespace: "default", Name: "dns", Port: "dns", Protocol: model.UDP}
}

// backendView: web (TCP 80, NodePort 30080) served by the given pods on
// 8080, and dns (UDP 53) with no endpoints.
func backendView(family model.Family, endpoints ...netip.Addr) *model.NodeView {
	vip, dnsVIP := netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.96.0.10")
	if family == model.IPv6 {
		vip, dnsVIP = netip.MustParseAddr("fd00:96::1"), netip.MustParseAddr("fd00:96::10")
	}
	web := &model.ServicePort{Name: webName(), ClusterIP: vip, Port: 80, NodePort: 30080}
	for _, a := range endpoints {
		web.ClusterEndpoints = append(web.ClusterEndpoints, model.Endpoint{Addr: netip.AddrPortFrom(a, 8080), Ready: true, Serving: true})
	}
	dns := &model.ServicePort{Name: dnsName(), ClusterIP: dnsVIP, Port: 53}
	return &model.NodeView{Family: family, Services: map[model.ServicePortName]*model.ServicePort{web.Name: web, dns.Name: dns}}
}

// fakeBackend is an IPv4 backend on a fake kernel.
func fakeBackend(t *testing.T) (*Backend, *netfilter.FakeKernel) {
	t.Helper()
	k := netfilter.NewFakeKernel()
	a, err := netfilter.NewApplier(netfilter.ApplierConfig{Family: model.IPv4, Flavor: netfilter.FlavorNFT, Jumps: netfilter.JumpRules(), TopChains: TopChains(), Run: k, Rules: k})
	if err != nil {
		t.Fatal(err)
	}
	return NewBackend(netfilter.Config{}, a), k
}

func TestBackendSyncsThroughTheApplier(t *testing.T) {
	ctx := context.Background()
	b, k := fakeBackend(t)
	two := backendView(model.IPv4, netip.MustParseAddr("10.244.0.11"), netip.MustParseAddr("10.244.0.12"))

	full, err := b.Sync(ctx, two, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !full.Full || full.Written == 0 || full.Rules == 0 || full.Bytes == 0 {
		t.Errorf("full sync result %+v", full)
	}
	if ok, err := b.Intact(ctx, two); !ok || err != nil {
		t.Errorf("Intact after a full sync: %v, %v", ok, err)
	}
	if nat := k.Save(netfilter.TableNAT); !strings.Contains(nat, "10.244.0.12:8080") {
		t.Errorf("nat table lacks the endpoint 10.244.0.12:8080:\n%s", nat)
	}

	k.Calls = nil
	one := backendView(model.IPv4, netip.MustParseAddr("10.244.0.11"))
	partial, err := b.Sync(ctx, one, two)
	if err != nil {
		t.Fatal(err)
	}
	if partial.Full || partial.Written+partial.Deleted == 0 || partial.Written >= full.Written {
		t.Errorf("partial sync result %+v after full %+v", partial, full)
	}
	if len(k.Calls) != 1 || !strings.HasPrefix(k.Calls[0], "iptables-nft-restore") {
		t.Errorf("partial sync ran %q, want one restore", k.Calls)
	}
	if nat := k.Save(netfilter.TableNAT); strings.Contains(nat, "10.244.0.12") {
		t.Errorf("nat table still has the removed endpoint:\n%s", nat)
	}

	if _, err := b.Sync(ctx, backendView(model.IPv6), nil); err == nil {
		t.Error("an IPv4 backend synced an IPv6 view")
	}
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, table := range []netfilter.Table{netfilter.TableNAT, netfilter.TableFilter} {
		if got := k.Save(table); strings.Contains(got, netfilter.ChainPrefix) {
			t.Errorf("%s after Cleanup:\n%s", table, got)
		}
	}
}

// TestKernelBackendCarriesServiceTraffic syncs compiled views into a node
// namespace and sends real traffic through them, in both flavors.
func TestKernelBackendCarriesServiceTraffic(t *testing.T) {
	for _, flavor := range netfilter.Flavors() {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			t.Run(string(flavor)+"/"+family.String(), func(t *testing.T) {
				testBackendTraffic(t, flavor, family)
			})
		}
	}
}

func testBackendTraffic(t *testing.T, flavor netfilter.Flavor, family model.Family) {
	bed := netnstest.NewBed(t, 3)
	client := bed.Pod(0)
	client.Timeout = 500 * time.Millisecond
	bed.Outside().Timeout = 500 * time.Millisecond
	for _, pod := range bed.Pods()[1:] {
		pod.ServeTCP(8080)
	}
	addr := func(ns *netnstest.NS) netip.Addr {
		if family == model.IPv6 {
			return ns.IPv6()
		}
		return ns.IPv4()
	}
	b, err := New(netfilter.Config{}, family, flavor)
	if err != nil {
		t.Fatal(err)
	}
	sync := func(view, prev *model.NodeView) {
		t.Helper()
		if err := bed.Node().Do(func() error { _, err := b.Sync(context.Background(), view, prev); return err }); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
	t.Cleanup(func() { _ = bed.Node().Do(func() error { return b.Cleanup(context.Background()) }) })

	intact := func() bool {
		t.Helper()
		var ok bool
		if err := bed.Node().Do(func() (err error) { ok, err = b.Intact(context.Background(), nil); return err }); err != nil {
			t.Fatalf("Intact: %v", err)
		}
		return ok
	}

	two := backendView(family, addr(bed.Pod(1)), addr(bed.Pod(2)))
	sync(two, nil)
	// The jump rules as the kernel gives them back must still match what
	// they were inserted as, or every check would ask for a full sync.
	if !intact() {
		t.Fatal("not Intact right after a full sync")
	}
	// The counting rules' counters read from the real tables.
	if err := bed.Node().Do(func() error { _, err := b.PacketCounts(context.Background()); return err }); err != nil {
		t.Errorf("PacketCounts: %v", err)
	}
	web := two.Services[webName()]
	clusterIP := netip.AddrPortFrom(web.ClusterIP, web.Port)
	nodePort := netip.AddrPortFrom(addr(bed.Node()), web.NodePort)

	if got := answering(t, client, clusterIP); !slices.Equal(got, []string{"pod-1", "pod-2"}) {
		t.Errorf("ClusterIP %s answered by %v, want pod-1 and pod-2", clusterIP, got)
	}
	if got := answering(t, bed.Outside(), nodePort); !slices.Equal(got, []string{"pod-1", "pod-2"}) {
		t.Errorf("NodePort %s answered by %v, want pod-1 and pod-2", nodePort, got)
	}
	dns := two.Services[dnsName()]
	if r, err := client.DialUDP(netip.AddrPortFrom(dns.ClusterIP, dns.Port)); !errors.Is(err, netnstest.ErrRefused) {
		t.Errorf("UDP service without endpoints: %v, %v; want refused", r, err)
	}

	one := backendView(family, addr(bed.Pod(2)))
	sync(one, two)
	if got := answering(t, client, clusterIP); !slices.Equal(got, []string{"pod-2"}) {
		t.Errorf("after pod-1 left, ClusterIP answered by %v, want pod-2 only", got)
	}

	bed.Node().MustRun(flavor.Binary(family, ""), "-t", "nat", "-F")
	if intact() {
		t.Error("Intact after iptables -t nat -F")
	}
	sync(one, nil)
	if !intact() {
		t.Error("not Intact after the full sync that followed the flush")
	}
	if got := answering(t, client, clusterIP); !slices.Equal(got, []string{"pod-2"}) {
		t.Errorf("after the repair, ClusterIP answered by %v, want pod-2", got)
	}
}

// answering dials dst a bounded number of times and returns which servers
// answered, sorted.
func answering(t *testing.T, client *netnstest.NS, dst netip.AddrPort) []string {
	t.Helper()
	seen := map[string]bool{}
	for range 40 {
		r, err := client.DialTCP(dst)
		if err != nil {
			t.Errorf("%s to %s: %v", client.Name, dst, err)
			return nil
		}
		seen[r.Server] = true
		if len(seen) == 2 {
			break
		}
	}
	var servers []string
	for s := range seen {
		servers = append(servers, s)
	}
	slices.Sort(servers)
	return servers
}

// The rule counts behind kube-proxy's sync_proxy_rules_iptables_total and
// _last: the totals are what svcproxy's chains hold in the kernel, after a
// full sync and after a partial one; the written counts what a sync wrote.
func TestBackendCountsRulesByTable(t *testing.T) {
	ctx := context.Background()
	b, k := fakeBackend(t)
	inKernel := func(table netfilter.Table) int {
		n := 0
		for _, line := range strings.Split(k.Save(table), "\n") {
			if strings.HasPrefix(line, "-A "+netfilter.ChainPrefix) {
				n++
			}
		}
		return n
	}
	check := func(what string, res model.SyncResult) {
		t.Helper()
		got := res.Tables
		if got == nil {
			t.Fatalf("%s: no rule counts", what)
		}
		if got.FilterTotal != inKernel(netfilter.TableFilter) || got.NATTotal != inKernel(netfilter.TableNAT) {
			t.Errorf("%s: totals filter %d nat %d, the kernel holds %d and %d", what,
				got.FilterTotal, got.NATTotal, inKernel(netfilter.TableFilter), inKernel(netfilter.TableNAT))
		}
		if got.FilterWritten+got.NATWritten != res.Rules {
			t.Errorf("%s: written filter %d + nat %d, the sync wrote %d", what, got.FilterWritten, got.NATWritten, res.Rules)
		}
	}
	ips := []netip.Addr{netip.MustParseAddr("10.244.0.11"), netip.MustParseAddr("10.244.0.12")}
	full, err := b.Sync(ctx, backendView(model.IPv4, ips...), nil)
	if err != nil {
		t.Fatal(err)
	}
	check("full sync", full)
	if full.Tables.NATWritten != full.Tables.NATTotal || full.Tables.FilterWritten != full.Tables.FilterTotal {
		t.Errorf("a full sync writes every rule: %+v", *full.Tables)
	}
	partial, err := b.Sync(ctx, backendView(model.IPv4, ips[0]), backendView(model.IPv4, ips...))
	if err != nil {
		t.Fatal(err)
	}
	check("partial sync", partial)
	if partial.Tables.NATWritten == 0 || partial.Tables.NATWritten >= partial.Tables.NATTotal {
		t.Errorf("a one-endpoint change writes some nat rules, not all: %+v", *partial.Tables)
	}
}

// kube-proxy's packet counters live in nfacct objects that rule rewrites
// leave alone; svcproxy reads its rules' own counters and carries them
// over the syncs that restart them.
func TestBackendCountsPacketsAcrossRewrites(t *testing.T) {
	ctx := context.Background()
	k := netfilter.NewFakeKernel()
	a, err := netfilter.NewApplier(netfilter.ApplierConfig{Family: model.IPv4, Flavor: netfilter.FlavorNFT, Jumps: netfilter.JumpRules(), TopChains: TopChains(), Run: k, Rules: k})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBackend(netfilter.Config{LocalhostNodePorts: true}, a)
	if _, err := b.PacketCounts(ctx); err == nil {
		t.Error("no error reading chains that do not exist yet")
	}
	ips := []netip.Addr{netip.MustParseAddr("10.244.0.11"), netip.MustParseAddr("10.244.0.12")}
	two, one := backendView(model.IPv4, ips...), backendView(model.IPv4, ips[0])
	if _, err := b.Sync(ctx, two, nil); err != nil {
		t.Fatal(err)
	}
	expect := func(what string, want model.PacketCounts) {
		t.Helper()
		if got, err := b.PacketCounts(ctx); got != want || err != nil {
			t.Errorf("%s: %+v, %v; want %+v", what, got, err, want)
		}
	}
	// Traffic: packets dropped as INVALID; connections to loopback, some
	// taken by a node port (entered, not missed), some not (both).
	traffic := func(invalid, accepted, other uint64) {
		k.CountPackets(netfilter.TableFilter, netfilter.ChainForward, "--ctstate INVALID", invalid)
		k.CountPackets(netfilter.TableNAT, netfilter.ChainServices, netfilter.CommentLocalhostNodePorts, accepted+other)
		k.CountPackets(netfilter.TableNAT, netfilter.ChainServices, netfilter.CommentLocalhostNotNodePort, other)
	}
	traffic(5, 3, 4)
	expect("after traffic", model.PacketCounts{InvalidDropped: 5, LocalhostNodePortsAccepted: 3})
	if _, err := b.Sync(ctx, one, two); err != nil { // partial: the chains stay
		t.Fatal(err)
	}
	traffic(2, 1, 1)
	expect("after a partial sync and more traffic", model.PacketCounts{InvalidDropped: 7, LocalhostNodePortsAccepted: 4})
	traffic(2, 2, 0)
	if _, err := b.Sync(ctx, two, nil); err != nil { // full: the chains are rewritten, their counters restart
		t.Fatal(err)
	}
	if out, _ := k.Run(ctx, "iptables", []string{"-w", "5", "-t", "nat", "-S", netfilter.ChainServices, "-v"}, nil); !strings.Contains(string(out), "-c 0 0") ||
		strings.Contains(string(out), "-c 2 0") {
		t.Fatalf("the fake kernel did not restart the counters:\n%s", out)
	}
	expect("right after a full sync", model.PacketCounts{InvalidDropped: 9, LocalhostNodePortsAccepted: 6})
	traffic(3, 1, 5)
	expect("after the full sync", model.PacketCounts{InvalidDropped: 12, LocalhostNodePortsAccepted: 7})
}

// Where node ports do not answer on loopback the localhost counter reads
// 0 and costs no listing of the nat table.
func TestBackendCountsNoLocalhostWithoutLocalhostNodePorts(t *testing.T) {
	ctx := context.Background()
	b, k := fakeBackend(t)
	if _, err := b.Sync(ctx, backendView(model.IPv4, netip.MustParseAddr("10.244.0.11")), nil); err != nil {
		t.Fatal(err)
	}
	k.Calls = nil
	if got, err := b.PacketCounts(ctx); err != nil || got.LocalhostNodePortsAccepted != 0 {
		t.Errorf("%+v, %v", got, err)
	}
	for _, c := range k.Calls {
		if strings.Contains(c, "-t nat") {
			t.Errorf("listed the nat table: %s", c)
		}
	}
}
