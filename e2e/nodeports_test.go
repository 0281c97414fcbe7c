package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// nodePortAddresses is --nodeport-addresses.
func nodePortAddresses(prefixes ...string) option {
	return func(s *settings) {
		for _, p := range prefixes {
			s.cfg.NodePortAddresses = append(s.cfg.NodePortAddresses, netip.MustParsePrefix(p))
		}
	}
}

// Second addresses of the node on its LAN, beside its primary ones.
var (
	nodeSecond4 = netip.MustParseAddr("192.168.50.3")
	nodeSecond6 = netip.MustParseAddr("fd00:50::3")
)

// addSecondAddresses gives the node a second address of each family, as
// a node with more than one interface or address has.
func addSecondAddresses(t *testing.T, c *cluster) {
	t.Helper()
	for _, p := range []netip.Prefix{netip.PrefixFrom(nodeSecond4, 24), netip.PrefixFrom(nodeSecond6, 64)} {
		if err := c.Node().AddAddr("eth0", p); err != nil {
			t.Fatal(err)
		}
	}
}

// --nodeport-addresses with only an IPv4 CIDR: IPv4 node ports answer on
// the addresses within it only, and IPv6 node ports on every IPv6
// address of the node, as kube-proxy serves a family none of the CIDRs
// is of.
func TestNodePortAddressesOfOneFamily(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 2, nodePortAddresses("192.168.50.1/32"))
		addSecondAddresses(t, c)
		c.upsertService(service("dual", []string{"10.96.0.40", "fd00:96::40"}, nodePorts(30120, 30121)))
		c.upsertSlice(endpoints("dual", local(c.Pod(1))))
		c.upsertSlice(endpoints("dual", local6(c.Pod(1))))
		c.sync()

		for _, network := range []string{"tcp", "udp"} {
			port := uint16(30120)
			if network == "udp" {
				port = 30121
			}
			expectReply(t, c.Outside(), network, at(c.Node().IPv4(), port), "pod-1", c.PodGateway(c.Pod(1).IPv4()))
			expectReply(t, c.Outside(), network, at(c.Node().IPv6(), port), "pod-1", c.PodGateway(c.Pod(1).IPv6()))
			expectReply(t, c.Outside(), network, at(nodeSecond6, port), "pod-1", c.PodGateway(c.Pod(1).IPv6()))
		}
		expectFailure(t, c.Outside(), "tcp", at(nodeSecond4, 30120), netnstest.ErrRefused)
	})
}

// The health check node port of an externalTrafficPolicy Local service
// listens where kube-proxy's does: with only an IPv4 CIDR in
// --nodeport-addresses, on the IPv4 addresses within it and on every IPv6
// address; with none, on every address.
func TestHealthCheckNodePortListensOnNodePortAddresses(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		for _, limited := range []bool{true, false} {
			t.Run(fmt.Sprintf("limited=%v", limited), func(t *testing.T) {
				var opts []option
				if limited {
					opts = append(opts, nodePortAddresses("192.168.50.1/32"))
				}
				c := newCluster(t, s, 2, opts...)
				addSecondAddresses(t, c)
				healthChecks(t, c)
				c.upsertService(service("edge", []string{"10.96.0.41", "fd00:96::41"}, nodePorts(30122, 30123),
					proxiertest.LoadBalancer("203.0.113.41"), proxiertest.ExternalLocal(32041)))
				c.upsertSlice(endpoints("edge", local(c.Pod(1))))
				c.upsertSlice(endpoints("edge", local6(c.Pod(1))))
				c.sync()

				for _, a := range []netip.Addr{c.Node().IPv4(), c.Node().IPv6(), nodeSecond6} {
					expectHealthCheck(t, c.Outside(), at(a, 32041), http.StatusOK)
				}
				if limited {
					if err := healthCheckGet(c.Outside(), at(nodeSecond4, 32041), nil); !errors.Is(err, syscall.ECONNREFUSED) {
						t.Errorf("health check on %s, outside --nodeport-addresses: %v; want the connection refused", nodeSecond4, err)
					}
				} else {
					expectHealthCheck(t, c.Outside(), at(nodeSecond4, 32041), http.StatusOK)
				}
			})
		}
	})
}

// healthChecks runs the health check node port servers of the cluster's
// svcproxy, listening where the daemon's would, in the node namespace
// (each sync opens them there).
func healthChecks(t *testing.T, c *cluster) {
	t.Helper()
	var local []netip.Addr
	err := c.Node().Do(func() error {
		addrs, err := net.InterfaceAddrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					local = append(local, ip.Unmap())
				}
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	hosts := netfilter.NodePortHosts(c.settings.cfg, []model.Family{model.IPv4, model.IPv6}, local)
	checks := proxier.NewHealthCheckServers(hosts, func() bool { return true }, zaptest.NewLogger(t))
	t.Cleanup(checks.Close)
	c.proc.syncer.Observe(checks.Observe)
}

func expectHealthCheck(t *testing.T, client *netnstest.NS, dst netip.AddrPort, code int) {
	t.Helper()
	var got int
	if err := healthCheckGet(client, dst, &got); err != nil || got != code {
		t.Errorf("health check on %s: %d, %v; want %d", dst, got, err, code)
	}
}

// healthCheckGet asks a health check port from a namespace, as a cloud
// load balancer does, and reads the status code.
func healthCheckGet(client *netnstest.NS, dst netip.AddrPort, code *int) error {
	return client.Do(func() error {
		conn, err := net.DialTimeout("tcp", dst.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", dst); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if code != nil {
			*code = resp.StatusCode
		}
		return nil
	})
}
