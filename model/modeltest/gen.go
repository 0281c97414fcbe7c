package modeltest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Chooser makes the choices of the random view generator: from a seeded
// generator in property tests, from the fuzzer's bytes in FuzzCompile.
type Chooser interface{ Intn(n int) int }

// RandChooser chooses with a seeded generator.
type RandChooser struct{ R *rand.Rand }

// Intn implements Chooser.
func (c RandChooser) Intn(n int) int { return c.R.IntN(n) }

// ByteChooser reads choices from bytes; once they run out every choice is 0.
type ByteChooser struct{ Data []byte }

// Intn implements Chooser.
func (c *ByteChooser) Intn(n int) int {
	if n <= 1 || len(c.Data) == 0 {
		return 0
	}
	v := int(c.Data[0]) | int(c.Data[min(1, len(c.Data)-1)])<<8
	c.Data = c.Data[min(2, len(c.Data)):]
	return v % n
}

// Gen builds arbitrary views: any combination of fields, including ones
// Compute never produces (other-family addresses, port 0, endpoint lists
// that disagree with the policies), because Compile must survive them.
type Gen struct {
	Ch     Chooser
	Family model.Family
	// Spread widens the address pools, for big views.
	Spread int
}

func (g Gen) addr(v4 string, v6 string, n int) netip.Addr {
	base := netip.MustParseAddr(v4)
	if (g.Family == model.IPv6) != (g.Ch.Intn(20) == 0) { // now and then the other family
		base = netip.MustParseAddr(v6)
	}
	b := base.AsSlice()
	for i, x := 0, g.Ch.Intn(n); x > 0; i, x = i+1, x>>8 {
		b[len(b)-1-i] += byte(x)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (g Gen) endpoints() []model.Endpoint {
	var eps []model.Endpoint
	for range g.Ch.Intn(5) {
		port := uint16(8080)
		if g.Ch.Intn(15) == 0 {
			port = 0
		}
		ep := model.Endpoint{Addr: netip.AddrPortFrom(g.addr("10.244.1.0", "fd00:10:244:1::", 12), port), Local: g.Ch.Intn(2) == 0, Ready: true}
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b model.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return eps
}

func (g Gen) addrs(v4, v6 string) []netip.Addr {
	var out []netip.Addr
	for range g.Ch.Intn(3) {
		out = append(out, g.addr(v4, v6, 4))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// ServicePort is an arbitrary service port.
func (g Gen) ServicePort() *model.ServicePort {
	sp := &model.ServicePort{
		Name: model.ServicePortName{
			Namespace: []string{"default", "kube-system", "we\"ird ns\n"}[g.Ch.Intn(3)],
			Name:      fmt.Sprintf("svc-%d", g.Ch.Intn(20+g.Spread)),
			Port:      []string{"", "http", "dns"}[g.Ch.Intn(3)],
			Protocol:  model.Protocol(g.Ch.Intn(4)), // 0 is invalid
		},
		Port:                uint16(1 + g.Ch.Intn(3)*80),
		ExternalPolicyLocal: g.Ch.Intn(3) == 0,
		InternalPolicyLocal: g.Ch.Intn(4) == 0,
		ClusterEndpoints:    g.endpoints(),
	}
	if g.Ch.Intn(10) != 0 {
		sp.ClusterIP = g.addr("10.96.0.0", "fd00:96::", 8+g.Spread*64)
	}
	if g.Ch.Intn(3) == 0 {
		sp.NodePort = uint16(30000 + g.Ch.Intn(5))
	}
	if g.Ch.Intn(3) == 0 {
		sp.ExternalIPs = g.addrs("192.0.2.0", "2001:db8:2::")
	}
	if g.Ch.Intn(3) == 0 {
		sp.LoadBalancerIPs = g.addrs("198.51.100.0", "2001:db8::")
		for range g.Ch.Intn(3) {
			sp.SourceRanges = append(sp.SourceRanges, netip.PrefixFrom(g.addr("203.0.113.0", "2001:db8:1::", 255), 24+g.Ch.Intn(9)))
		}
	}
	if g.Ch.Intn(4) == 0 {
		sp.AffinitySeconds = int32(1 + g.Ch.Intn(10800))
	}
	if sp.ExternalPolicyLocal {
		sp.LocalEndpoints = g.endpoints()
		sp.HealthCheckNodePort = uint16(32000 + g.Ch.Intn(3))
	}
	if sp.InternalPolicyLocal {
		sp.ExternalClusterEndpoints = g.endpoints()
	}
	return sp
}

// View is a view of n arbitrary ports (fewer when names repeat).
func (g Gen) View(n int) *model.NodeView {
	v := View(g.Family)
	for range n {
		sp := g.ServicePort()
		v.Services[sp.Name] = sp
	}
	return v
}

// Mutate returns a copy of v with a few ports changed, added or removed.
func (g Gen) Mutate(v *model.NodeView) *model.NodeView {
	out := WithPort(v, g.ServicePort())
	names := v.SortedNames()
	for range g.Ch.Intn(4) {
		if len(names) == 0 {
			break
		}
		name := names[g.Ch.Intn(len(names))]
		switch g.Ch.Intn(3) {
		case 0:
			out = WithoutPort(out, name)
		case 1:
			sp := *v.Services[name]
			sp.ClusterEndpoints = g.endpoints()
			out = WithPort(out, &sp)
		default:
			sp := g.ServicePort()
			sp.Name = name
			out = WithPort(out, sp)
		}
	}
	return out
}

// Config is an arbitrary rules configuration.
func (g Gen) Config() netfilter.Config {
	cfg := netfilter.Config{MasqueradeAll: g.Ch.Intn(4) == 0, MasqueradeBit: g.Ch.Intn(33)}
	if g.Ch.Intn(4) != 0 {
		cfg.ClusterCIDRs = PodCIDRs
	}
	if g.Ch.Intn(4) == 0 {
		cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("fd00:192::/64")}[:1+g.Ch.Intn(2)]
	}
	return cfg
}

// BigView is a cluster-sized view, for benchmarks: services ports with endpoints each,
// ClusterIPs at random in a /12 as the API server allocates them; one in
// ten is a NodePort, one in twenty a LoadBalancer.
func BigView(services, endpoints int) *model.NodeView {
	r := rand.New(rand.NewPCG(7, 7))
	v := View(model.IPv4)
	for i := range services {
		ip := netip.AddrFrom4([4]byte{10, byte(96 + r.IntN(16)), byte(r.IntN(256)), byte(r.IntN(256))})
		var opts []PortOpt
		var addrs []string
		for j := range endpoints {
			addrs = append(addrs, fmt.Sprintf("10.%d.%d.%d:8080", 128+j, i/256, i%256))
		}
		opts = append(opts, Eps(addrs...))
		if i%10 == 0 {
			opts = append(opts, NodePort(uint16(30000+i%2768)))
		}
		if i%20 == 0 {
			opts = append(opts, LoadBalancer(fmt.Sprintf("198.51.%d.%d", i/256%256, i%256)))
		}
		sp := Port("bench", fmt.Sprintf("svc-%05d", i), "http", model.TCP, ip.String(), 80, opts...)
		v.Services[sp.Name] = sp
	}
	return v
}
