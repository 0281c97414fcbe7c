package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// What the IPVS mode must do that kube-proxy's IPVS mode got wrong at some
// point, and what only the IPVS mode has (real servers, kube-ipvs0). The
// features both modes share are the rest of the suite.

// inKernel runs f with the node's IPVS-mode kernel, as another program on
// the node (or svcproxy's sync) would reach it.
func (c *cluster) inKernel(f func(ipvs.Kernel) error) {
	c.t.Helper()
	err := c.Node().Do(func() error {
		k, err := ipvs.OpenKernel()
		if err != nil {
			return err
		}
		defer k.Close()
		return f(k)
	})
	if err != nil {
		c.t.Fatal(err)
	}
}

// realServer reports a real server of a virtual server ("TCP 10.96.0.70:9000").
func (c *cluster) realServer(vs ipvs.VSKey, rs netip.AddrPort) (ipvs.RealStatus, bool) {
	var found ipvs.RealStatus
	ok := false
	c.inKernel(func(k ipvs.Kernel) error {
		reals, err := k.RealServers(vs)
		if errors.Is(err, ipvs.ErrNotFound) {
			return nil
		}
		for _, r := range reals {
			if r.Addr == rs {
				found, ok = r, true
			}
		}
		return err
	})
	return found, ok
}

func tcpVS(addr string, port uint16) ipvs.VSKey {
	return ipvs.VSKey{Addr: mustAddr(addr), Protocol: model.TCP, Port: port}
}

// An established connection to an endpoint that goes away is not reset
// (k/k#57841): its real server stays at weight 0 and new connections go to
// the other endpoints, until its connections are gone (here, where IPVS
// keeps closed connections in TIME_WAIT for two minutes, until the drain
// bound the test sets).
func TestIPVSRemovedEndpointDrains(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		bound := scaled(3 * time.Second)
		c := newCluster(t, s, 3, drainAfter(bound))
		const longPort = 9000
		for _, pod := range c.Pods()[1:] {
			serveLines(t, pod, longPort)
		}
		svc := service("web", []string{"10.96.0.70"}, proxiertest.Port("long", "TCP", longPort))
		slice := func(eps ...proxiertest.Endpoint) {
			es := endpoints("web", eps...)
			proxiertest.SlicePort("long", "TCP", longPort)(es)
			c.upsertSlice(es)
		}
		c.upsertService(svc)
		slice(local(c.Pod(1)))
		cfg := proxier.DefaultRunnerConfig()
		cfg.MinSyncPeriod = 100 * time.Millisecond
		c.run(cfg)
		if _, ok := waitFor(c.Pod(0), tcp("10.96.0.70"), "pod-1", scaled(5*time.Second)); !ok {
			t.Fatal("the first sync did not carry traffic")
		}
		long := dialLines(t, c.Pod(0), at(mustAddr("10.96.0.70"), longPort))
		if r, err := long.ask(); err != nil || r.Server != "pod-1" {
			t.Fatalf("long-lived connection: %v %v", r, err)
		}

		slice(local(c.Pod(2)))
		if _, ok := waitFor(c.Pod(0), tcp("10.96.0.70"), "pod-2", scaled(5*time.Second)); !ok {
			t.Fatal("new connections did not move to the new endpoint")
		}
		vs, gone := tcpVS("10.96.0.70", longPort), at(c.Pod(1).IPv4(), longPort)
		for i := range 5 {
			if r, err := long.ask(); err != nil || r.Server != "pod-1" {
				t.Fatalf("the established connection after the endpoint left (ask %d): %v %v; want pod-1, no reset", i, r, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if rs, ok := c.realServer(vs, gone); !ok || rs.Weight != 0 {
			t.Fatalf("the draining real server: %+v present=%v; want weight 0", rs, ok)
		}
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.70"), 5, c.Pod(0).IPv4(), "pod-2")

		_ = long.conn.Close()
		deadline := time.Now().Add(bound + scaled(2*time.Second))
		for {
			if _, ok := c.realServer(vs, gone); !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the real server of the gone endpoint is still there after its connection ended")
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// A UDP flow to an endpoint that is terminating but still serving goes on
// (kube-proxy's IPVS mode moved it at once); once the endpoint is gone,
// the flow's next datagram reaches another.
func TestIPVSUDPFlowToServingTerminatingEndpointIsKept(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		c.upsertService(service("dns", []string{"10.96.0.71"}))
		c.upsertSlice(endpoints("dns", local(c.Pod(1))))
		c.sync()
		resolver := udpClient(t, c.Pod(0), udp("10.96.0.71"))
		expectAsk(t, resolver, "pod-1")

		c.upsertSlice(endpoints("dns", proxiertest.Terminating(c.Pod(1).IPv4().String(), nodeName, true), local(c.Pod(2))))
		c.sync()
		for range 3 {
			expectAsk(t, resolver, "pod-1")
		}
		fresh := udpClient(t, c.Pod(0), udp("10.96.0.71"))
		expectAsk(t, fresh, "pod-2")

		c.upsertSlice(endpoints("dns", local(c.Pod(2))))
		c.sync()
		expectAsk(t, resolver, "pod-2")
	})
}

// A host port is not reachable on a service address (k/k#72236): the
// address is local to the node, bound to kube-ipvs0, but only the
// service's own ports answer on it; the host port still answers on the
// node's own address.
func TestIPVSServiceAddressesAnswerOnlyServicePorts(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2)
		const hostPort = 2222
		c.Node().ServeTCP(hostPort)
		c.upsertService(service("web", []string{"10.96.0.72"}, proxiertest.LoadBalancer("203.0.113.72")))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		c.sync()

		expectReply(t, c.Pod(0), "tcp", tcp("10.96.0.72"), "pod-1", c.Pod(0).IPv4())
		expectReply(t, c.Pod(0), "tcp", at(c.Node().IPv4(), hostPort), "node", c.Pod(0).IPv4())
		for _, client := range []*netnstest.NS{c.Pod(0), c.Outside()} {
			for _, addr := range []string{"10.96.0.72", "203.0.113.72"} {
				expectPromptRefusal(t, client, "tcp", fmt.Sprintf("%s:%d", addr, hostPort))
				expectPromptRefusal(t, client, "udp", fmt.Sprintf("%s:%d", addr, 5353))
			}
		}
	})
}

// A client reusing the source port of a connection IPVS still remembers
// (TIME_WAIT) is not held up for a second (k/k#81775): every one of a run
// of connections from one source port is answered at once.
func TestIPVSReusedSourcePortDoesNotStall(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2)
		c.upsertService(service("web", []string{"10.96.0.73"}))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		c.sync()
		dst := tcp("10.96.0.73")
		var slowest time.Duration
		for i := range 20 {
			took, err := dialFromPort(c.Pod(0), 40123, dst)
			if err != nil {
				t.Fatalf("connection %d from port 40123: %v", i, err)
			}
			slowest = max(slowest, took)
		}
		if slowest > 500*time.Millisecond {
			t.Errorf("a connection reusing its source port took %v; want no stall", slowest)
		}
		t.Logf("20 connections from one source port, the slowest %v", slowest.Round(time.Millisecond))
	})
}

// dialFromPort connects from a fixed source port, reads the whole answer
// (the server closes first: IPVS keeps the connection in TIME_WAIT, the
// client's side is free again once the server acknowledges its close) and
// says how long the connection took.
func dialFromPort(client *netnstest.NS, port int, dst netip.AddrPort) (time.Duration, error) {
	var err error
	for range 50 {
		var took time.Duration
		if took, err = dialOnceFromPort(client, port, dst); !errors.Is(err, unix.EADDRNOTAVAIL) {
			return took, err
		}
		time.Sleep(20 * time.Millisecond) // the last close is not acknowledged yet
	}
	return 0, err
}

func dialOnceFromPort(client *netnstest.NS, port int, dst netip.AddrPort) (time.Duration, error) {
	var took time.Duration
	err := client.Do(func() error {
		d := net.Dialer{
			Timeout:   3 * time.Second,
			LocalAddr: &net.TCPAddr{IP: client.IPv4().AsSlice(), Port: port},
			Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
				return errors.Join(err, serr)
			},
		}
		start := time.Now()
		conn, err := d.Dial("tcp", dst.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
			return err
		}
		took = time.Since(start)
		_, err = io.Copy(io.Discard, conn) // until the server's close
		return err
	})
	return took, err
}

// What another program deletes of the IPVS state (a virtual server, a real
// server, a service address, a set entry) is back by a full sync, within
// what the spacing of the integrity checks allows (see below).
func TestIPVSDriftIsRepaired(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2)
		c.upsertService(service("web", []string{"10.96.0.74"}))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		cfg := proxier.DefaultRunnerConfig()
		cfg.MinSyncPeriod, cfg.CheckPeriod = 100*time.Millisecond, 500*time.Millisecond
		c.run(cfg)
		c.Pod(0).Timeout = 300 * time.Millisecond
		if _, ok := waitFor(c.Pod(0), tcp("10.96.0.74"), "pod-1", scaled(5*time.Second)); !ok {
			t.Fatal("the first sync did not carry traffic")
		}
		waitFirstSync(t, c)
		vs := tcpVS("10.96.0.74", svcTCP)
		for _, drift := range []struct {
			what string
			do   func(ipvs.Kernel) error
		}{
			{"virtual server deleted", func(k ipvs.Kernel) error { return k.DeleteVirtualServer(vs) }},
			{"real server deleted", func(k ipvs.Kernel) error { return k.DeleteRealServer(vs, at(c.Pod(1).IPv4(), podTCP)) }},
			{"service address unbound", func(k ipvs.Kernel) error { return k.DelAddr(ipvs.DummyName, mustAddr("10.96.0.74")) }},
			{"admission entry removed", func(k ipvs.Kernel) error {
				return k.DelEntry(ipvs.Set{Name: "SVCPROXY-CLUSTER-IP", Type: ipvs.HashIPPort, Family: model.IPv4},
					ipvs.Entry{Addr: mustAddr("10.96.0.74"), Protocol: model.TCP, Port: svcTCP})
			}},
		} {
			// The integrity check reads the IPVS table and the iptables
			// hooks (with iptables-legacy, a save of each table); the
			// runner spaces checks out to fifty times what one takes. In
			// the VM (scaled by 5) repairs came 1-5.5 s after the damage
			// with iptables-nft, 13-18.5 s with iptables-legacy, whose two
			// programs per check cost about 0.3 s there.
			expectRepaired(t, c, drift.what, tcp("10.96.0.74"), "pod-1", 5*time.Second, 8*time.Second,
				func() { c.inKernel(drift.do) })
		}
	})
}

// The IPVS mode's state is svcproxy's own: another program's virtual
// server, on an address of the node, survives syncs and the cleanup.
func TestIPVSLeavesOthersVirtualServersAlone(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2)
		theirs := ipvs.VirtualServer{VSKey: ipvs.VSKey{Addr: c.Node().IPv4(), Protocol: model.TCP, Port: 8443}, Scheduler: "wrr"}
		c.inKernel(func(k ipvs.Kernel) error { return k.AddVirtualServer(theirs) })
		c.upsertService(service("web", []string{"10.96.0.75"}, nodePorts(30175, 30176)))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		c.sync()
		c.restart()
		c.deleteService("web")
		c.sync()
		for _, family := range []model.Family{model.IPv4} {
			b := c.backend(family)
			if err := c.Node().Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
				t.Fatal(err)
			}
		}
		var found bool
		c.inKernel(func(k ipvs.Kernel) error {
			all, err := k.VirtualServers(model.IPv4)
			for _, vs := range all {
				found = found || vs.VSKey == theirs.VSKey
			}
			return err
		})
		if !found {
			t.Fatal("another program's virtual server on a node address is gone")
		}
		c.inKernel(func(k ipvs.Kernel) error { return k.DeleteVirtualServer(theirs.VSKey) })
	})
}

// A node that ran the iptables mode is taken over by the IPVS mode with
// no failed new connection and no dropped established one: IPVS is
// programmed before the iptables rules are swapped, the iptables mode's
// chains go in the same restore, and conntrack keeps the old connections
// DNATed where they were.
func TestIPVSTakesOverFromIPTablesMode(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, setup{mode: "iptables", flavor: s.flavor}, 3)
		long := longLivedService(t, c, "10.96.0.76")
		before, err := long.ask()
		if err != nil {
			t.Fatal(err)
		}
		switchUnderProbe(t, c, tcp("10.96.0.76"), "ipvs")
		if after, err := long.ask(); err != nil || after != before {
			t.Errorf("the established connection after the take-over: %v %v; want %v", after, err, before)
		}
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			saved, err := c.save(family)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(saved, "SVCPROXY-SVC-") || strings.Contains(saved, "SVCPROXY-DST-") {
				t.Errorf("%v: the iptables mode's chains survived the take-over:\n%s", family, saved)
			}
		}
		if _, ok := c.ipvsState(model.IPv4).VirtualServers[tcpVS("10.96.0.76", 9000)]; !ok {
			t.Error("no virtual server after the take-over")
		}
	})
}

// A node that ran the IPVS mode is taken over by the iptables mode with no
// failed new connection and no dropped established one: the iptables
// rules send new connections past IPVS at once, and the IPVS state is
// retired as its connections end.
func TestIPTablesModeTakesOverFromIPVS(t *testing.T) {
	onlyIPVS(t)
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		long := longLivedService(t, c, "10.96.0.77")
		before, err := long.ask()
		if err != nil {
			t.Fatal(err)
		}
		switchUnderProbe(t, c, tcp("10.96.0.77"), "iptables")
		ipvsBackend := func() *ipvs.Backend {
			b, err := ipvs.New(c.ipvsConfig(), model.IPv4, c.flavor)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}()
		var inUse int
		err = c.Node().Do(func() (err error) {
			inUse, err = ipvsBackend.RetireIPVSState(context.Background())
			return err
		})
		// The long connection's virtual server is in use, and the one the
		// probe's connections went through (IPVS keeps them in TIME_WAIT).
		if err != nil || inUse < 1 {
			t.Fatalf("retiring the IPVS state: %d virtual servers in use, %v; want the long connection's at least", inUse, err)
		}
		for i := range 3 {
			if after, err := long.ask(); err != nil || after != before {
				t.Fatalf("the established connection after the take-over (ask %d): %v %v; want %v", i, after, err, before)
			}
		}
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.77"), 30, c.Pod(0).IPv4(), "pod-1", "pod-2")
		_ = long.conn.Close()
		if err := c.Node().Do(func() error { return ipvsBackend.RemoveIPVSState(context.Background()) }); err != nil {
			t.Fatal(err)
		}
		if left := c.ipvsState(model.IPv4); !left.Empty() {
			t.Errorf("IPVS state left after its retirement:\n%s", left.Dump())
		}
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.77"), 30, c.Pod(0).IPv4(), "pod-1", "pod-2")
	})
}

// longLivedService is a service at clusterIP with a port "http" and a
// port 9000 of long-lived connections, on pods 1 and 2, synced, and a
// long-lived connection to it from pod-0.
func longLivedService(t *testing.T, c *cluster, clusterIP string) *lineConn {
	t.Helper()
	const longPort = 9000
	for _, pod := range c.Pods()[1:3] {
		serveLines(t, pod, longPort)
	}
	c.upsertService(service("web", []string{clusterIP}, proxiertest.Port("long", "TCP", longPort)))
	es := endpoints("web", local(c.Pod(1)), local(c.Pod(2)))
	proxiertest.SlicePort("long", "TCP", longPort)(es)
	c.upsertSlice(es)
	c.sync()
	return dialLines(t, c.Pod(0), at(mustAddr(clusterIP), longPort))
}
