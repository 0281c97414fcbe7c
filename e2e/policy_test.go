package e2e

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// New connections spread over every endpoint. With 4 endpoints and 60
// connections, one endpoint missing out by chance has odds of about 1e-7.
func TestBalancing(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 5)
		backends := c.Pods()[1:]
		var eps []proxiertest.Endpoint
		for _, pod := range backends {
			eps = append(eps, local(pod))
		}
		c.upsertService(service("web", []string{"10.96.0.20"}))
		c.upsertSlice(endpoints("web", eps...))
		c.sync()

		for _, dst := range []struct{ network, addr string }{{"tcp", "10.96.0.20:80"}, {"udp", "10.96.0.20:53"}} {
			const n = 60
			got := answers(t, c.Pod(0), dst.network, mustAddrPort(dst.addr), n)
			for _, pod := range backends {
				if got.servers[pod.Name] == 0 {
					t.Errorf("%s to %s, %d times: %s never answered (%s)", dst.network, dst.addr, n, pod.Name, got)
				}
				if got.servers[pod.Name] == n {
					t.Errorf("%s to %s: %s answered all %d", dst.network, dst.addr, pod.Name, n)
				}
			}
			t.Logf("%s spread: %s", dst.network, got)
		}
	})
}

// ClientIP affinity: every connection of one client goes to one endpoint.
func TestSessionAffinity(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 5)
		c.upsertService(service("sticky", []string{"10.96.0.21"}, proxiertest.Affinity(0)))
		c.upsertSlice(endpoints("sticky", local(c.Pod(2)), local(c.Pod(3)), local(c.Pod(4))))
		c.sync()

		for _, client := range []*netnstest.NS{c.Pod(0), c.Pod(1)} {
			for _, dst := range []string{"tcp", "udp"} {
				addr := tcp("10.96.0.21")
				if dst == "udp" {
					addr = udp("10.96.0.21")
				}
				got := answers(t, client, dst, addr, 20)
				if len(got.servers) != 1 {
					t.Errorf("%s %s with ClientIP affinity: answered by %s; want one endpoint", client.Name, dst, got)
				}
				t.Logf("%s %s sticks to %s", client.Name, dst, got)
			}
		}
	})
}

// externalTrafficPolicy Local: outside clients reach only this node's
// endpoints and keep their source; with none here, external traffic is
// dropped (so a load balancer's retry goes to another node) while the
// ClusterIP still reaches every endpoint.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 4)
		c.upsertService(service("local", []string{"10.96.0.22"}, nodePorts(30090, 30091),
			proxiertest.LoadBalancer("203.0.113.22"), proxiertest.ExternalLocal(32000)))
		c.upsertSlice(endpoints("local", local(c.Pod(1)), remote(c.Pod(2)), remote(c.Pod(3))))
		c.sync()

		client := c.Outside().IPv4()
		node := c.Node().IPv4()
		expectServers(t, c.Outside(), "tcp", at(node, 30090), 20, client, "pod-1")
		expectServers(t, c.Outside(), "udp", at(node, 30091), 20, client, "pod-1")
		expectServers(t, c.Outside(), "tcp", tcp("203.0.113.22"), 20, client, "pod-1")
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.22"), 40, c.Pod(0).IPv4(), podNames(c.Pods()[1:]...)...)

		c.upsertSlice(endpoints("local", remote(c.Pod(2)), remote(c.Pod(3))))
		c.sync()
		c.Outside().Timeout = shortTimeout
		expectFailure(t, c.Outside(), "tcp", at(node, 30090), netnstest.ErrTimeout)
		expectFailure(t, c.Outside(), "udp", at(node, 30091), netnstest.ErrTimeout)
		expectFailure(t, c.Outside(), "tcp", tcp("203.0.113.22"), netnstest.ErrTimeout)
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.22"), 30, c.Pod(0).IPv4(), "pod-2", "pod-3")
		// A pod reaching the load-balancer IP is not external traffic: it
		// is sent to the endpoints anywhere, as if it had gone out to the
		// load balancer and come back.
		expectServers(t, c.Pod(0), "tcp", tcp("203.0.113.22"), 30, c.Pod(0).IPv4(), "pod-2", "pod-3")
	})
}

// --detect-local-mode, from svcproxy's own flags to real traffic, with no
// cluster CIDR: under NodeCIDR the Node's podCIDRs tell pods, under the
// interface modes the interface they come in on (pod0 stands for a bridge
// here; every pod comes in on a "pod" interface). A pod reaching an
// externalTrafficPolicy Local LB IP on a node without a local endpoint is
// sent to the endpoints elsewhere, keeping its source, and to a ClusterIP
// it keeps its source too; the outside client is still dropped.
func TestDetectLocalModes(t *testing.T) {
	for _, args := range [][]string{
		{"--detect-local-mode=NodeCIDR"},
		{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=pod0"},
		{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=pod"},
	} {
		t.Run(strings.TrimPrefix(args[0], "--detect-local-mode="), func(t *testing.T) {
			forEachSetup(t, func(t *testing.T, s setup) {
				c := newCluster(t, s, 3, detectLocal(t, args...))
				lb := tcp("203.0.113.26")
				c.upsertService(service("local", []string{"10.96.0.26"}, proxiertest.LoadBalancer(lb.Addr().String()),
					proxiertest.ExternalLocal(32026)))
				c.upsertSlice(endpoints("local", remote(c.Pod(1)), remote(c.Pod(2))))
				c.sync()

				expectServers(t, c.Pod(0), "tcp", lb, 30, c.Pod(0).IPv4(), "pod-1", "pod-2")
				expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.26"), 30, c.Pod(0).IPv4(), "pod-1", "pod-2")
				c.Outside().Timeout = shortTimeout
				expectFailure(t, c.Outside(), "tcp", lb, netnstest.ErrTimeout)
			})
		})
	}
}

// internalTrafficPolicy Local: ClusterIP traffic stays on this node.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 4)
		c.upsertService(service("node-local", []string{"10.96.0.23"}, proxiertest.InternalLocal()))
		c.upsertSlice(endpoints("node-local", remote(c.Pod(1)), local(c.Pod(2)), remote(c.Pod(3))))
		c.sync()

		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.23"), 20, c.Pod(0).IPv4(), "pod-2")
		expectServers(t, c.Pod(0), "udp", udp("10.96.0.23"), 20, c.Pod(0).IPv4(), "pod-2")
	})
}

// loadBalancerSourceRanges admit the listed sources to the load-balancer
// IP and drop the rest; the service's ClusterIP stays open to all.
func TestLoadBalancerSourceRanges(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		outside, allowedPod := c.Outside().IPv4().String()+"/32", c.Pod(0).IPv4().String()+"/32"
		svc := func(ranges ...string) {
			c.upsertService(service("guarded", []string{"10.96.0.24"},
				proxiertest.LoadBalancer("203.0.113.24"), proxiertest.SourceRanges(ranges...)))
		}
		svc(outside, allowedPod)
		c.upsertSlice(endpoints("guarded", local(c.Pod(2))))
		c.sync()

		lb := tcp("203.0.113.24")
		expectReply(t, c.Outside(), "tcp", lb, "pod-2", c.PodGateway(lb.Addr()))
		expectServers(t, c.Pod(0), "tcp", lb, 3, c.PodGateway(lb.Addr()), "pod-2")
		c.Pod(1).Timeout = shortTimeout
		expectFailure(t, c.Pod(1), "tcp", lb, netnstest.ErrTimeout)
		expectFailure(t, c.Pod(1), "udp", udp("203.0.113.24"), netnstest.ErrTimeout)
		expectReply(t, c.Pod(1), "tcp", tcp("10.96.0.24"), "pod-2", c.Pod(1).IPv4())

		// Narrowing the ranges shuts out the outside client.
		svc(allowedPod)
		c.sync()
		c.Outside().Timeout = shortTimeout
		expectFailure(t, c.Outside(), "tcp", lb, netnstest.ErrTimeout)
		expectServers(t, c.Pod(0), "tcp", lb, 3, c.PodGateway(lb.Addr()), "pod-2")
	})
}

// The node reaching a load-balancer IP it holds (a VIP-like load balancer
// adds it to the node; the IPVS mode binds it to kube-ipvs0 anyway) sends
// from that very address. As in kube-proxy, it is let in when the source
// ranges hold the node's IP, and not because they hold loopback.
func TestLoadBalancerSourceRangesAdmitTheNode(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 3)
		lb := tcp("203.0.113.25")
		if !s.ipvs() {
			if err := c.Node().AddAddr("lo", netip.PrefixFrom(lb.Addr(), 32)); err != nil {
				t.Fatal(err)
			}
		}
		svc := func(ranges ...string) {
			c.upsertService(service("guarded", []string{"10.96.0.25"},
				proxiertest.LoadBalancer(lb.Addr().String()), proxiertest.SourceRanges(ranges...)))
		}
		svc(c.Node().IPv4().String() + "/32")
		c.upsertSlice(endpoints("guarded", local(c.Pod(2))))
		c.sync()
		expectReply(t, c.Node(), "tcp", lb, "pod-2", c.PodGateway(lb.Addr()))

		// Ranges without the node's IP keep the node out too (in the IPVS
		// mode, where IPVS balances the node's connection before the
		// filter table sees it, by its virtual address).
		svc("127.0.0.0/8")
		c.sync()
		c.Node().Timeout = shortTimeout
		expectFailure(t, c.Node(), "tcp", lb, netnstest.ErrTimeout)
	})
}

// The terminating fallback: when every endpoint is terminating, the
// serving ones keep the service up; once a ready one exists, only it is used.
func TestTerminatingFallback(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 4)
		draining := []proxiertest.Endpoint{
			proxiertest.Terminating(c.Pod(1).IPv4().String(), nodeName, true),
			proxiertest.Terminating(c.Pod(2).IPv4().String(), nodeName, true),
			proxiertest.Terminating(c.Pod(3).IPv4().String(), nodeName, false),
		}
		c.upsertService(service("rolling", []string{"10.96.0.25"}))
		c.upsertSlice(endpoints("rolling", draining...))
		c.sync()
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.25"), 30, c.Pod(0).IPv4(), "pod-1", "pod-2")

		// The replacement comes up where the non-serving one was.
		c.upsertSlice(endpoints("rolling", draining[0], draining[1], local(c.Pod(3))))
		c.sync()
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.25"), 20, c.Pod(0).IPv4(), "pod-3")
	})
}

// A slice that leaves serving unset means serving, as kube-proxy reads it:
// an endpoint written as only not ready and terminating still carries the
// service through the terminating fallback.
func TestTerminatingFallbackServingUnset(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2)
		unset := proxiertest.Endpoint{Addr: c.Pod(1).IPv4().String(), Node: nodeName,
			Ready: proxiertest.Bool(false), Terminating: proxiertest.Bool(true)}
		c.upsertService(service("unset", []string{"10.96.0.29"}))
		c.upsertSlice(endpoints("unset", unset))
		c.sync()
		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.29"), 10, c.Pod(0).IPv4(), "pod-1")
	})
}

// Zone hints keep traffic in the node's zone.
func TestTopologyZoneHints(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 4, inZone("zone-a"))
		c.upsertService(service("zonal", []string{"10.96.0.26"}))
		c.upsertSlice(endpoints("zonal",
			remote(c.Pod(1)).InZone("zone-a").HintZones("zone-a"),
			remote(c.Pod(2)).InZone("zone-b").HintZones("zone-b"),
			local(c.Pod(3)).InZone("zone-a").HintZones("zone-a")))
		c.sync()

		expectServers(t, c.Pod(0), "tcp", tcp("10.96.0.26"), 30, c.Pod(0).IPv4(), "pod-1", "pod-3")
	})
}

// A pod balanced back to itself still gets its answer: the node
// masquerades it, so the reply comes back through the node to be un-DNATed.
func TestHairpin(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 1)
		c.upsertService(service("self", []string{"10.96.0.27"}))
		c.upsertSlice(endpoints("self", local(c.Pod(0))))
		c.sync()

		masq := c.PodGateway(c.Pod(0).IPv4())
		expectReply(t, c.Pod(0), "tcp", tcp("10.96.0.27"), "pod-0", masq)
		expectReply(t, c.Pod(0), "udp", udp("10.96.0.27"), "pod-0", masq)
	})
}

// --masquerade-all masquerades pods too.
func TestMasqueradeAll(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2, masqueradeAll())
		c.upsertService(service("web", []string{"10.96.0.28"}))
		c.upsertSlice(endpoints("web", local(c.Pod(1))))
		c.sync()

		masq := c.PodGateway(c.Pod(1).IPv4())
		expectReply(t, c.Pod(0), "tcp", tcp("10.96.0.28"), "pod-1", masq)
		expectReply(t, c.Pod(0), "udp", udp("10.96.0.28"), "pod-1", masq)
	})
}
