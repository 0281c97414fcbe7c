package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// A UDP client that keeps its source port (a resolver) fails over with
// its very next datagram once its endpoint is replaced: the sync deletes
// the conntrack entry that still pinned it to the old one, which is alive
// and would otherwise go on answering.
func TestUDPFailover(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		c.upsertService(service("dns", []string{"10.96.0.30"}, nodePorts(30100, 30101)))
		c.upsertSlice(endpoints("dns", local(c.Pod(1))))
		c.sync()

		resolver := udpClient(t, c.Pod(0), udp("10.96.0.30"))
		fromOutside := udpClient(t, c.Outside(), at(c.Node().IPv4(), 30101))
		for range 3 {
			expectAsk(t, resolver, "pod-1")
			expectAsk(t, fromOutside, "pod-1")
		}

		c.upsertSlice(endpoints("dns", local(c.Pod(2))))
		c.sync()
		expectAsk(t, resolver, "pod-2")
		expectAsk(t, fromOutside, "pod-2")
	})
}

// A UDP flow goes on as long as its endpoint serves, whatever the policies,
// topology or termination leave to new connections, as kube-proxy keeps
// it: a resolver pinned to an endpoint that turns terminating (while still
// serving), that internalTrafficPolicy Local leaves out, or that zone
// hints leave out keeps its answers; fresh flows go where new connections
// do; once the endpoint stops serving, the pinned flow fails over.
func TestUDPFlowToServingEndpointIsKept(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 4, inZone("zone-a"))
		c.upsertService(service("draining", []string{"10.96.0.35"}, nodePorts(30102, 30103)))
		c.upsertSlice(endpoints("draining", local(c.Pod(1))))
		c.upsertService(service("narrowed", []string{"10.96.0.36"}))
		c.upsertSlice(endpoints("narrowed", remote(c.Pod(1))))
		c.upsertService(service("zoned", []string{"10.96.0.37"}))
		c.upsertSlice(endpoints("zoned", remote(c.Pod(1))))
		c.sync()
		draining := udpClient(t, c.Pod(0), udp("10.96.0.35"))
		fromOutside := udpClient(t, c.Outside(), at(c.Node().IPv4(), 30103))
		narrowed := udpClient(t, c.Pod(0), udp("10.96.0.36"))
		zoned := udpClient(t, c.Pod(0), udp("10.96.0.37"))
		for _, client := range []*netnstest.UDPClient{draining, fromOutside, narrowed, zoned} {
			expectAsk(t, client, "pod-1")
		}

		c.upsertSlice(endpoints("draining", proxiertest.Terminating(c.Pod(1).IPv4().String(), nodeName, true), local(c.Pod(2))))
		c.upsertService(service("narrowed", []string{"10.96.0.36"}, proxiertest.InternalLocal()))
		c.upsertSlice(endpoints("narrowed", remote(c.Pod(1)), local(c.Pod(2))))
		c.upsertSlice(endpoints("zoned", remote(c.Pod(1)).InZone("zone-b").HintZones("zone-b"),
			local(c.Pod(2)).InZone("zone-a").HintZones("zone-a")))
		c.sync()
		for range 3 {
			for _, client := range []*netnstest.UDPClient{draining, fromOutside, narrowed, zoned} {
				expectAsk(t, client, "pod-1")
			}
		}
		for _, dst := range []string{"10.96.0.35", "10.96.0.36", "10.96.0.37"} {
			expectAsk(t, udpClient(t, c.Pod(0), udp(dst)), "pod-2")
		}
		expectAsk(t, udpClient(t, c.Outside(), at(c.Node().IPv4(), 30103)), "pod-2")

		c.upsertSlice(endpoints("draining", proxiertest.Terminating(c.Pod(1).IPv4().String(), nodeName, false), local(c.Pod(2))))
		c.sync()
		expectAsk(t, draining, "pod-2")
		expectAsk(t, fromOutside, "pod-2")
	})
}

func udpClient(t *testing.T, ns *netnstest.NS, dst netip.AddrPort) *netnstest.UDPClient {
	t.Helper()
	client, err := ns.UDPClient(dst)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func expectAsk(t *testing.T, client *netnstest.UDPClient, server string) {
	t.Helper()
	got, err := client.Ask()
	if err != nil || got.Server != server {
		t.Errorf("UDP from %s: %v, %v; want an answer from %s", client.Local(), got, err, server)
	}
}

// A restarted svcproxy's first full sync rewrites the rules over the old
// ones atomically: an established connection survives, new connections
// made all along never fail, and no conntrack entry is flushed.
func TestRestartKeepsTraffic(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		const longPort = 9000
		for _, pod := range c.Pods()[1:] {
			serveLines(t, pod, longPort)
		}
		c.upsertService(service("web", []string{"10.96.0.31"}, proxiertest.Port("long", "TCP", longPort)))
		slice := endpoints("web", local(c.Pod(1)), local(c.Pod(2)))
		proxiertest.SlicePort("long", "TCP", longPort)(slice)
		c.upsertSlice(slice)
		c.upsertService(service("gone", []string{"10.96.0.32"}))
		c.upsertSlice(endpoints("gone", local(c.Pod(1))))
		c.sync()

		long := dialLines(t, c.Pod(0), at(mustAddr("10.96.0.31"), longPort))
		longBefore, err := long.ask()
		if err != nil {
			t.Fatalf("long-lived connection: %v", err)
		}
		resolver := udpClient(t, c.Pod(0), udp("10.96.0.31"))
		udpBefore, err := resolver.Ask()
		if err != nil {
			t.Fatalf("UDP: %v", err)
		}
		// The restarted svcproxy must remove the rules of a service
		// deleted while it was down, although it never knew it.
		c.deleteWhileDown("gone")

		restartUnderProbe(t, c, tcp("10.96.0.31"))
		expectFlowKept(t, c.flows, resolver, udpBefore)
		if after, err := long.ask(); err != nil || after != longBefore {
			t.Errorf("long-lived connection after the restart: %v, %v; want %v", after, err, longBefore)
		}
		if after, err := resolver.Ask(); err != nil || after != udpBefore {
			t.Errorf("UDP flow after the restart: %v, %v; want %v", after, err, udpBefore)
		}
		c.Pod(0).Timeout = shortTimeout
		expectFailure(t, c.Pod(0), "tcp", tcp("10.96.0.32"), errUnserved)
	})
}

// restartUnderProbe restarts svcproxy while pod-0 makes new connections to
// dst, and wants every one of them answered and the first sync full.
func restartUnderProbe(t *testing.T, c *cluster, dst netip.AddrPort) {
	t.Helper()
	switchUnderProbe(t, c, dst, c.setup.mode)
}

// switchUnderProbe is restartUnderProbe with the new process in mode.
func switchUnderProbe(t *testing.T, c *cluster, dst netip.AddrPort, mode string) {
	t.Helper()
	probe := startProbe(c.Pod(0), dst)
	time.Sleep(200 * time.Millisecond)
	c.setup.mode = mode
	c.restart()
	time.Sleep(200 * time.Millisecond)
	made, failures := probe.stop()

	for _, f := range c.proc.reportsSince(time.Time{})[0].Families {
		if !f.Result.Full {
			t.Errorf("the restarted svcproxy's first %v sync was not full", f.Family)
		}
	}
	if len(failures) > 0 || made < 5 {
		t.Errorf("new connections across the restart: %d made, %d failed: %v", made, len(failures), failures)
		return
	}
	t.Logf("%d new connections across the restart, none failed", made)
}

// expectFlowKept wants the UDP client's conntrack entry still in the table,
// DNATed to the endpoint that answered it.
func expectFlowKept(t *testing.T, flows *conntrack.Kernel, client *netnstest.UDPClient, answered netnstest.Reply) {
	t.Helper()
	entries, err := flows.List(model.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Protocol == model.UDP && e.Orig.Src == client.Local() {
			if e.Reply.Src.Addr() != podAddrOf(answered.Server) {
				t.Errorf("UDP flow of %s now leads to %s; it led to %s", client.Local(), e.Reply.Src, answered.Server)
			}
			return
		}
	}
	t.Errorf("the conntrack entry of UDP client %s is gone after the restart", client.Local())
}

// podAddrOf is the IPv4 address of the pod a server reply names ("pod-2").
func podAddrOf(server string) netip.Addr {
	var i int
	if _, err := fmt.Sscanf(server, "pod-%d", &i); err != nil {
		return netip.Addr{}
	}
	return netnstest.PodIP4(i)
}

// probe makes a new TCP connection every ~20ms until stopped (at most
// ~10 s), recording every failure.
type probe struct {
	done     chan struct{}
	wg       sync.WaitGroup
	made     int
	failures []string
}

func startProbe(client *netnstest.NS, dst netip.AddrPort) *probe {
	p := &probe{done: make(chan struct{})}
	p.wg.Go(func() {
		for range 500 {
			if _, err := client.DialTCP(dst); err != nil {
				p.failures = append(p.failures, err.Error())
			}
			p.made++
			select {
			case <-p.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	return p
}

func (p *probe) stop() (made int, failures []string) {
	close(p.done)
	p.wg.Wait()
	return p.made, p.failures
}

// The real Runner notices when another program removes svcproxy's rules
// and puts them back with a full sync, within its check period.
func TestDriftIsRepaired(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		c.upsertService(service("web", []string{"10.96.0.33"}))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		cfg := proxier.DefaultRunnerConfig()
		cfg.MinSyncPeriod, cfg.CheckPeriod = 100*time.Millisecond, 500*time.Millisecond
		c.run(cfg)
		c.Pod(0).Timeout = 200 * time.Millisecond
		if took, ok := waitFor(c.Pod(0), tcp("10.96.0.33"), "pod-1", scaled(5*time.Second)); !ok {
			t.Fatalf("the runner's first sync did not carry traffic within %v", took)
		}
		waitFirstSync(t, c)

		for _, drift := range []struct {
			what string
			args []string
		}{
			{"nat table flushed", []string{"-t", "nat", "-F"}},
			{"PREROUTING jump deleted", []string{"-t", "nat", "-D", "PREROUTING",
				"-m", "comment", "--comment", "svcproxy service portals", "-j", netfilter.ChainPrefix + "SERVICES"}},
		} {
			// In the IPVS mode pods reach ClusterIPs without the nat table,
			// so traffic can be back before the repair; its integrity
			// check reads the IPVS table too, and the runner spaces checks
			// out to fifty times what one takes: in the VM (scaled by 5)
			// repairs came 1-15.5 s after the damage.
			repair := time.Second
			if s.ipvs() {
				repair = 8 * time.Second
			}
			expectRepaired(t, c, drift.what, tcp("10.96.0.33"), "pod-1", 2*time.Second, repair,
				func() { c.iptables(model.IPv4, drift.args...) })
		}

		// The runner also picks up ordinary changes.
		c.upsertSlice(endpoints("web", local(c.Pod(2))))
		if took, ok := waitFor(c.Pod(0), tcp("10.96.0.33"), "pod-2", scaled(5*time.Second)); !ok || took > scaled(2*time.Second) {
			t.Errorf("an endpoint change reached the kernel after %v", took)
		}
	})
}

// waitFor dials dst every 20ms until server answers, at most for limit,
// and returns how long that took.
func waitFor(client *netnstest.NS, dst netip.AddrPort, server string, limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < limit {
		if r, err := client.DialTCP(dst); err == nil && r.Server == server {
			return time.Since(start), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start), false
}

// waitFirstSync waits for the runner's first sync to end: traffic can flow
// before it has (the IPVS mode restores its iptables rules last), and a
// restore still running would repair damage done meanwhile.
func waitFirstSync(t *testing.T, c *cluster) {
	t.Helper()
	if fullSyncSince(c.proc, time.Time{}, scaled(5*time.Second)) == nil {
		t.Fatal("the runner's first sync did not end")
	}
}

// expectRepaired does damage and wants traffic from pod-0 to dst answered
// by server again within back, and a full sync that repaired it within
// repair (both scaled).
func expectRepaired(t *testing.T, c *cluster, what string, dst netip.AddrPort, server string, back, repair time.Duration, damage func()) {
	t.Helper()
	start := time.Now()
	damage()
	took, ok := waitFor(c.Pod(0), dst, server, scaled(back+time.Second))
	if !ok || took > scaled(back) {
		t.Errorf("%s: traffic not back within %v (%v)", what, scaled(back), took)
	}
	done := fullSyncSince(c.proc, start, scaled(repair))
	if done == nil {
		var seen []string
		for _, r := range c.proc.reportsSince(start) {
			seen = append(seen, fmt.Sprintf("%v full=%v err=%v", r.Start.Sub(start).Round(time.Millisecond), r.Full, r.Err()))
		}
		t.Errorf("%s: no full sync repaired it within %v; syncs since: %v", what, scaled(repair), seen)
		return
	}
	t.Logf("%s: repaired by a full sync done %v later; the probe's next answer came %v later",
		what, done.Start.Add(done.Duration).Sub(start).Round(time.Millisecond), took.Round(time.Millisecond))
}

// fullSyncSince waits up to limit for the report of a successful full sync
// started after t (traffic can flow again before the sync that restored it
// has returned) and returns it, or nil.
func fullSyncSince(p *process, t time.Time, limit time.Duration) *proxier.SyncReport {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, r := range p.reportsSince(t) {
			if r.Full && r.Err() == nil {
				return r
			}
		}
	}
	return nil
}

// Objects svcproxy cannot program are skipped, or their bad entries
// dropped, while valid services synced alongside carry traffic.
func TestBadInputIsSkipped(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		c.upsertService(service("good", []string{"10.96.0.34"}))
		c.upsertSlice(endpoints("good", local(c.Pod(1)),
			proxiertest.Ready("10.244.0.999", nodeName), proxiertest.Ready("fd00:244::12", nodeName)))
		c.upsertService(service("bad-external-ip", []string{"10.96.0.35"}, proxiertest.ExternalIPs("300.1.2.3")))
		c.upsertSlice(endpoints("bad-external-ip", local(c.Pod(2))))
		c.upsertService(service("bad-port", []string{"10.96.0.36"}, proxiertest.Port("big", "TCP", 70000)))
		c.upsertSlice(endpoints("bad-port", local(c.Pod(2))))
		c.upsertService(service("bad-protocol", []string{"10.96.0.37"}, proxiertest.Port("ping", "ICMP", 7)))
		c.upsertSlice(endpoints("bad-protocol", local(c.Pod(2))))
		c.sync()

		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.34"), 10, c.Pod(0).IPv4(), "pod-1")
		expectServers(t, c.Pod(0), "udp", udp("10.96.0.34"), 10, c.Pod(0).IPv4(), "pod-1")
		c.Pod(0).Timeout = shortTimeout
		for _, skipped := range []string{"10.96.0.35", "10.96.0.36", "10.96.0.37"} {
			expectFailure(t, c.Pod(0), "tcp", tcp(skipped), errUnserved)
		}

		// An update that makes a working service invalid takes its rules
		// away rather than leave the old ones; fixing it brings them back.
		c.upsertService(service("good", []string{"10.96.0.34"}, proxiertest.ExternalIPs("not-an-ip")))
		c.sync()
		expectFailure(t, c.Pod(0), "tcp", tcp("10.96.0.34"), errUnserved)
		c.upsertService(service("good", []string{"10.96.0.34"}))
		c.sync()
		c.Pod(0).Timeout = defaultTimeout()
		expectReply(t, c.Pod(0), "tcp", tcp("10.96.0.34"), "pod-1", c.Pod(0).IPv4())
	})
}

// Partial syncs rewrite only what changed, and everything else keeps
// carrying traffic; a deleted service's address stops answering.
func TestPartialSyncsCarryTraffic(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 5)
		ips := map[string]string{"a": "10.96.0.40", "b": "10.96.0.41", "c": "10.96.0.42", "d": "10.96.0.43"}
		for i, name := range []string{"a", "b", "c"} {
			c.upsertService(service(name, []string{ips[name]}))
			c.upsertSlice(endpoints(name, local(c.Pod(i+1))))
		}
		c.sync()
		serves := func(name string, pod int) {
			t.Helper()
			expectServers(t, c.Pod(0), "tcp", tcp(ips[name]), 5, c.Pod(0).IPv4(), fmt.Sprintf("pod-%d", pod))
			expectServers(t, c.Pod(0), "udp", udp(ips[name]), 5, c.Pod(0).IPv4(), fmt.Sprintf("pod-%d", pod))
		}

		c.upsertSlice(endpoints("b", local(c.Pod(4))))
		expectPartial(t, c.sync())
		serves("a", 1)
		serves("b", 4)
		serves("c", 3)

		c.upsertService(service("d", []string{ips["d"]}))
		c.upsertSlice(endpoints("d", local(c.Pod(2))))
		expectPartial(t, c.sync())
		serves("d", 2)

		c.deleteSlice("c-v4")
		expectPartial(t, c.sync())
		expectFailure(t, c.Pod(0), "tcp", tcp(ips["c"]), netnstest.ErrRefused)
		expectFailure(t, c.Pod(0), "udp", udp(ips["c"]), netnstest.ErrRefused)

		c.deleteService("c")
		expectPartial(t, c.sync())
		// Nothing answers for an address no service has: the node routes
		// it on like any other, and here it goes nowhere.
		c.Pod(0).Timeout = shortTimeout
		expectFailure(t, c.Pod(0), "tcp", tcp(ips["c"]), errUnserved)
		c.Pod(0).Timeout = defaultTimeout()
		if saved, err := c.save(model.IPv4); err != nil || strings.Contains(saved, ips["c"]) {
			t.Errorf("rules still name the deleted service's %s (%v):\n%s", ips["c"], err, saved)
		}
		serves("a", 1)
		serves("b", 4)
		serves("d", 2)
	})
}

func expectPartial(t *testing.T, r *proxier.SyncReport) {
	t.Helper()
	for _, f := range r.Families {
		if f.Result.Full {
			t.Errorf("%v sync was full; want partial", f.Family)
		}
	}
}
