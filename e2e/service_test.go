package e2e

import (
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// A pod keeps its own source address on the way to a ClusterIP (it is
// inside --cluster-cidr); the node, whose address is not, is masqueraded to
// its address on the pods' side.
func TestClusterIP(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2)
		c.upsertService(service("web", []string{"10.96.0.10"}))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		c.sync()

		for _, network := range []string{"tcp", "udp"} {
			dst := tcp("10.96.0.10")
			if network == "udp" {
				dst = udp("10.96.0.10")
			}
			expectReply(t, c.Pod(0), network, dst, "pod-1", c.Pod(0).IPv4())
			expectReply(t, c.Node(), network, dst, "pod-1", c.PodGateway(c.Pod(1).IPv4()))
		}
	})
}

// NodePort, load-balancer ingress IPs and external IPs from a client off
// the node: external traffic under the Cluster policy is masqueraded.
func TestExternalAddresses(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2)
		c.upsertService(service("web", []string{"10.96.0.11"}, nodePorts(30080, 30053),
			proxiertest.LoadBalancer("203.0.113.11"), proxiertest.ExternalIPs("198.51.100.11")))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		c.sync()

		masq := c.PodGateway(c.Pod(1).IPv4())
		node := c.Node().IPv4()
		expectReply(t, c.Outside(), "tcp", at(node, 30080), "pod-1", masq)
		expectReply(t, c.Outside(), "udp", at(node, 30053), "pod-1", masq)
		// The outside routes every address to the node, so the VIPs
		// arrive there as a load balancer or a router would send them.
		expectReply(t, c.Outside(), "tcp", tcp("203.0.113.11"), "pod-1", masq)
		expectReply(t, c.Outside(), "udp", udp("203.0.113.11"), "pod-1", masq)
		expectReply(t, c.Outside(), "tcp", tcp("198.51.100.11"), "pod-1", masq)
		expectReply(t, c.Outside(), "udp", udp("198.51.100.11"), "pod-1", masq)
		// Pods and the node itself may use them too.
		expectReply(t, c.Pod(0), "tcp", tcp("203.0.113.11"), "pod-1", masq)
		expectReply(t, c.Pod(0), "tcp", at(node, 30080), "pod-1", masq)
		expectReply(t, c.Node(), "tcp", at(node, 30080), "pod-1", masq)
		expectReply(t, c.Node(), "udp", at(node, 30053), "pod-1", masq)
	})
}

// A service without endpoints answers at once: TCP with a reset, UDP with
// ICMP port unreachable, so clients fail fast instead of waiting.
func TestNoEndpointsRejectPromptly(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 1)
		c.upsertService(service("empty", []string{"10.96.0.12"}, nodePorts(30081, 30054)))
		c.sync()

		// A drop would show as a timeout after this long; a reject comes
		// back in well under it.
		c.Pod(0).Timeout = 2 * time.Second
		c.Outside().Timeout = 2 * time.Second
		node := c.Node().IPv4()
		for _, d := range []struct {
			client  *netnstest.NS
			network string
			dst     string
		}{
			{c.Pod(0), "tcp", "10.96.0.12:80"},
			{c.Pod(0), "udp", "10.96.0.12:53"},
			{c.Node(), "tcp", "10.96.0.12:80"},
			{c.Outside(), "tcp", node.String() + ":30081"},
			{c.Outside(), "udp", node.String() + ":30054"},
		} {
			expectPromptRefusal(t, d.client, d.network, d.dst)
		}
	})
}

// Node ports on localhost: in iptables mode, as kube-proxy's default, the
// node reaches 127.0.0.1:<nodePort> (masqueraded on the way to the pod);
// with --iptables-localhost-nodeports=false, and in the IPVS mode (as in
// kube-proxy's), it is refused at once, never DNATed into a hang. The
// other addresses' node ports are served either way.
func TestLocalhostNodePorts(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		for _, optOut := range []bool{false, true} {
			var opts []option
			if optOut {
				opts = append(opts, noLocalhostNodePorts())
			}
			c := newCluster(t, s, 3, opts...)
			c.upsertService(service("web", []string{"10.96.0.13"}, nodePorts(30082, 30055)))
			c.upsertSlice(endpoints("web", local(c.Pod(1)), remote(c.Pod(2))))
			c.sync()

			loopback := at(mustAddr("127.0.0.1"), 30082)
			if optOut || s.ipvs() {
				expectPromptRefusal(t, c.Node(), "tcp", loopback.String())
			} else {
				expectServers(t, c.Node(), "tcp", loopback, 20, c.PodGateway(loopback.Addr()), "pod-1", "pod-2")
				expectServers(t, c.Node(), "udp", at(mustAddr("127.0.0.1"), 30055), 20, c.PodGateway(loopback.Addr()), "pod-1", "pod-2")
				// iptables_localhost_nodeports_accepted_packets_total counts
				// each new connection (the first packet of each flow).
				if n := c.packetCounts().LocalhostNodePortsAccepted; n < 40 {
					t.Errorf("localhost node ports accepted %d connections, want at least the 40 made", n)
				}
			}
			before := c.packetCounts().LocalhostNodePortsAccepted
			// Neither a node port on the node's address nor another port
			// on loopback counts.
			expectServers(t, c.Outside(), "tcp", at(c.Node().IPv4(), 30082), 20, c.PodGateway(loopback.Addr()), "pod-1", "pod-2")
			expectPromptRefusal(t, c.Node(), "tcp", "127.0.0.1:30099")
			// Never on ::1, as in kube-proxy.
			expectPromptRefusal(t, c.Node(), "tcp", "[::1]:30082")
			if after := c.packetCounts().LocalhostNodePortsAccepted; after != before {
				t.Errorf("localhost node-port count moved from %d to %d without a connection to one", before, after)
			}
		}
	})
}

func expectPromptRefusal(t *testing.T, client *netnstest.NS, network, dst string) {
	t.Helper()
	start := time.Now()
	expectFailure(t, client, network, mustAddrPort(dst), netnstest.ErrRefused)
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("%s %s to %s: failed after %v; want a refusal at once", client.Name, network, dst, took)
	}
}

// IPv6 services, single and dual stack: ClusterIP, NodePort and the reject
// of a service without endpoints, all in IPv6.
func TestIPv6(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		c.upsertService(service("web6", []string{"fd00:96::13"}, nodePorts(30082, 30055)))
		c.upsertSlice(endpoints("web6", local6(c.Pod(1))))
		c.upsertService(service("dual", []string{"10.96.0.14", "fd00:96::14"}, nodePorts(30083, 30056)))
		c.upsertSlice(endpoints("dual", local(c.Pod(2))))
		c.upsertSlice(endpoints("dual", local6(c.Pod(2))))
		c.upsertService(service("empty6", []string{"fd00:96::15"}))
		c.upsertService(service("empty-dual", []string{"10.96.0.16", "fd00:96::16"}))
		c.sync()

		pod0, masq := c.Pod(0).IPv6(), c.PodGateway(c.Pod(1).IPv6())
		node := c.Node().IPv6()
		for _, network := range []string{"tcp", "udp"} {
			port, nodePort, dualNodePort := uint16(svcTCP), uint16(30082), uint16(30083)
			if network == "udp" {
				port, nodePort, dualNodePort = svcUDP, 30055, 30056
			}
			expectReply(t, c.Pod(0), network, at(mustAddr("fd00:96::13"), port), "pod-1", pod0)
			expectReply(t, c.Outside(), network, at(node, nodePort), "pod-1", masq)

			expectReply(t, c.Pod(0), network, at(mustAddr("fd00:96::14"), port), "pod-2", pod0)
			expectReply(t, c.Pod(0), network, at(mustAddr("10.96.0.14"), port), "pod-2", c.Pod(0).IPv4())
			expectReply(t, c.Outside(), network, at(node, dualNodePort), "pod-2", masq)
			expectReply(t, c.Outside(), network, at(c.Node().IPv4(), dualNodePort), "pod-2", c.PodGateway(c.Pod(2).IPv4()))
		}
		c.Pod(0).Timeout = 2 * time.Second
		for _, dst := range []string{"[fd00:96::15]", "[fd00:96::16]", "10.96.0.16"} {
			expectPromptRefusal(t, c.Pod(0), "tcp", dst+":80")
			expectPromptRefusal(t, c.Pod(0), "udp", dst+":53")
		}
	})
}

// The policies that write family-specific rules (affinity masks, hairpin
// and source-range matches, the Local policy's source checks) in IPv6.
func TestIPv6Policies(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 4)
		c.upsertService(service("sticky6", []string{"fd00:96::20"}, proxiertest.Affinity(0)))
		c.upsertSlice(endpoints("sticky6", local6(c.Pod(1)), local6(c.Pod(2)), local6(c.Pod(3))))
		c.upsertService(service("self6", []string{"fd00:96::21"}))
		c.upsertSlice(endpoints("self6", local6(c.Pod(0))))
		c.upsertService(service("local6", []string{"fd00:96::22"}, nodePorts(30110, 30111),
			proxiertest.LoadBalancer("2001:db8::22"), proxiertest.SourceRanges(c.Outside().IPv6().String()+"/128"),
			proxiertest.ExternalLocal(32001)))
		c.upsertSlice(endpoints("local6", local6(c.Pod(1)), remote6(c.Pod(2))))
		c.sync()

		if got := answers(t, c.Pod(0), "tcp", at(mustAddr("fd00:96::20"), svcTCP), 20); len(got.servers) != 1 {
			t.Errorf("IPv6 ClientIP affinity: answered by %s; want one endpoint", got)
		}
		expectReply(t, c.Pod(0), "tcp", at(mustAddr("fd00:96::21"), svcTCP), "pod-0", c.PodGateway(c.Pod(0).IPv6()))
		expectReply(t, c.Node(), "tcp", at(mustAddr("fd00:96::21"), svcTCP), "pod-0", c.PodGateway(c.Pod(0).IPv6()))

		outside := c.Outside().IPv6()
		expectServers(t, c.Outside(), "tcp", at(c.Node().IPv6(), 30110), 10, outside, "pod-1")
		expectServers(t, c.Outside(), "udp", at(c.Node().IPv6(), 30111), 10, outside, "pod-1")
		expectServers(t, c.Outside(), "tcp", at(mustAddr("2001:db8::22"), svcTCP), 10, outside, "pod-1")
		c.Pod(3).Timeout = shortTimeout
		expectFailure(t, c.Pod(3), "tcp", at(mustAddr("2001:db8::22"), svcTCP), netnstest.ErrTimeout)
	})
}
