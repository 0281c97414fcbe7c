package ipvs_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/golden"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// testCfg is the configuration of most scenarios: kube-proxy's defaults
// on a recent kernel, with the test world's pod range.
var testCfg = ipvs.Config{Rules: netfilter.Config{ClusterCIDRs: mt.PodCIDRs, NodeIPs: []netip.Addr{
	netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00:192::10"),
}}, ConnReuseFixed: true}

// nodeAddrs are the test node's addresses, as its links hold them.
func nodeAddrs() []netip.Addr {
	return []netip.Addr{
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("10.0.0.10"),
		netip.IPv6Loopback(), netip.MustParseAddr("fd00:192::10"), netip.MustParseAddr("fe80::1"),
	}
}

// scenario is a view to compile, with the view it changes from if the
// plan is partial.
type scenario struct {
	name string
	cfg  ipvs.Config
	view *model.NodeView
	prev *model.NodeView // nil: full plan
}

func (sc scenario) plan() *ipvs.Plan { return ipvs.Compile(sc.cfg, sc.view, sc.prev, nodeAddrs()) }

// web is the workhorse service: default/web:http, TCP 10.96.0.10:80.
func web(opts ...mt.PortOpt) *model.ServicePort {
	return mt.Port("default", "web", "http", model.TCP, "10.96.0.10", 80, opts...)
}

var twoRemote = mt.Eps("10.244.2.5:8080", "10.244.3.7:8080")

func v4(ports ...*model.ServicePort) *model.NodeView { return mt.View(model.IPv4, ports...) }

func withRules(f func(*ipvs.Config)) ipvs.Config {
	cfg := testCfg
	f(&cfg)
	return cfg
}

func scenarios() []scenario {
	return []scenario{
		{name: "clusterip", cfg: testCfg, view: v4(web(twoRemote))},
		{name: "no-endpoints", cfg: testCfg, view: v4(
			web(mt.NodePort(30080)),
			mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53),
		)},
		{name: "nodeport", cfg: testCfg, view: v4(web(mt.NodePort(30080), twoRemote))},
		{name: "nodeport-addresses", cfg: withRules(func(c *ipvs.Config) {
			c.Rules.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}
		}), view: v4(web(mt.NodePort(30080), twoRemote))},
		// No prefix of the family: node ports answer on every node address
		// of it, as in kube-proxy.
		{name: "nodeport-addresses-other-family", cfg: withRules(func(c *ipvs.Config) {
			c.Rules.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("fd00::/8")}
		}), view: v4(web(mt.NodePort(30080), twoRemote))},
		// --iptables-localhost-nodeports is the iptables mode's: as in
		// kube-proxy's IPVS mode, no node port answers on loopback.
		{name: "localhost-nodeports", cfg: withRules(func(c *ipvs.Config) { c.Rules.LocalhostNodePorts = true }),
			view: v4(web(mt.NodePort(30080), twoRemote))},
		{name: "loadbalancer-source-ranges", cfg: testCfg, view: v4(web(
			mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), mt.SourceRanges("203.0.113.0/24", "127.0.0.0/8"), twoRemote,
		))},
		// The node reaches an LB IP (bound to kube-ipvs0) from that address:
		// admitted by a range holding the node's IP, not by one holding
		// loopback (above).
		{name: "loadbalancer-source-ranges-node", cfg: testCfg, view: v4(web(
			mt.LoadBalancer("198.51.100.10"), mt.SourceRanges("203.0.113.0/24", "192.168.1.0/24"), twoRemote,
		))},
		{name: "external-ips", cfg: testCfg, view: v4(
			web(mt.ExternalIPs("192.0.2.50", "192.168.1.10"), twoRemote),
			// Two services claiming one address and port: the first by name wins.
			mt.Port("default", "zz-late", "", model.TCP, "10.96.0.11", 80, mt.ExternalIPs("192.0.2.50"), mt.Eps("10.244.9.9:80")),
		)},
		{name: "external-local", cfg: testCfg, view: v4(web(
			mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), mt.SourceRanges("203.0.113.0/24"), mt.ExternalLocal(32000),
			mt.Eps("local 10.244.1.5:8080", "10.244.2.5:8080"),
		))},
		{name: "external-local-none-here", cfg: testCfg, view: v4(web(
			mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), mt.ExternalLocal(32000), twoRemote,
		))},
		// --detect-local-mode=InterfaceNamePrefix: pods are told by the
		// interface they come in on, for the masquerade and Local policy.
		{name: "detect-local-prefix", cfg: withRules(func(c *ipvs.Config) {
			c.Rules.ClusterCIDRs, c.Rules.PodInterface = nil, "veth+"
		}), view: v4(web(
			mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), mt.ExternalLocal(32000), twoRemote,
		))},
		{name: "internal-local", cfg: testCfg, view: v4(
			web(mt.InternalLocal(), mt.Eps("local 10.244.1.5:8080", "10.244.2.5:8080")),
			mt.Port("default", "api", "", model.TCP, "10.96.0.20", 443, mt.InternalLocal(), mt.NodePort(30443), mt.Eps("10.244.2.6:6443")),
			mt.Port("default", "empty", "", model.TCP, "10.96.0.22", 80, mt.InternalLocal()),
		)},
		{name: "affinity", cfg: testCfg, view: v4(web(mt.Affinity(10800), twoRemote))},
		{name: "hairpin", cfg: testCfg, view: v4(web(mt.Eps("local 10.244.1.5:8080", "10.244.2.5:8080")))},
		{name: "terminating", cfg: testCfg, view: v4(
			web(twoRemote, mt.Terminating("10.244.4.4:8080")),
			mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53,
				mt.Terminating("10.244.2.8:53", "10.244.3.8:53")),
		)},
		{name: "udp-sctp", cfg: testCfg, view: v4(
			mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53, mt.Eps("10.244.2.8:53")),
			mt.Port("default", "signal", "", model.SCTP, "10.96.0.60", 3868, mt.NodePort(30868), mt.Eps("10.244.2.9:3868")),
		)},
		{name: "ipv6", cfg: testCfg, view: mt.View(model.IPv6,
			mt.Port("default", "web", "http", model.TCP, "fd00:96::10", 80, mt.NodePort(30080),
				mt.LoadBalancer("2001:db8::10"), mt.SourceRanges("2001:db8:1::/48"),
				mt.Eps("[fd00:10:244:2::5]:8080", "local [fd00:10:244:1::5]:8080")),
			mt.Port("kube-system", "dns", "dns", model.UDP, "fd00:96::53", 53),
		)},
		{name: "settings", cfg: ipvs.Config{
			Rules:     netfilter.Config{ClusterCIDRs: mt.PodCIDRs, MasqueradeAll: true, MasqueradeBit: 12},
			Scheduler: "lc", StrictARP: true, Timeouts: ipvs.Timeouts{TCP: time.Hour},
		}, view: v4(web(twoRemote))},
		partialScenario(),
	}
}

// partialScenario changes one endpoint of one of three services.
func partialScenario() scenario {
	db := mt.Port("default", "db", "", model.TCP, "10.96.0.30", 5432, mt.Eps("10.244.2.7:5432"))
	dns := mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53, mt.Eps("10.244.2.8:53"))
	prev := v4(web(mt.NodePort(30080), twoRemote), db, dns)
	next := mt.WithPort(prev, web(mt.NodePort(30080), mt.Eps("10.244.2.5:8080", "10.244.3.8:8080")))
	return scenario{name: "partial-endpoint-change", cfg: testCfg, view: next, prev: prev}
}

// dump renders a plan: what it wants, what it removes, the rules.
func dump(p *ipvs.Plan) []byte {
	var b strings.Builder
	b.WriteString("# want\n" + p.Want.Dump())
	if !p.Remove.Empty() {
		b.WriteString("# remove\n" + p.Remove.Dump())
	}
	b.WriteString("# iptables\n" + p.Rules.String())
	return []byte(b.String())
}

func TestGolden(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			golden.Check(t, sc.name, dump(sc.plan()))
		})
	}
}
