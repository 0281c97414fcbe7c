package iptables_test

import (
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/internal/golden"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// testCfg is the iptables configuration of most scenarios.
var testCfg = netfilter.Config{ClusterCIDRs: mt.PodCIDRs, NodeIPs: nodeIPs}

// nodeIPs are the node's primary IPs (see trace_test.go).
var nodeIPs = []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00:192::10")}

// scenario is a view to compile, with the view it changes from if the plan
// is partial. The golden test checks its rendering; the trace test checks
// what packets do under it.
type scenario struct {
	name string
	cfg  netfilter.Config
	view *model.NodeView
	prev *model.NodeView // nil: full plan
}

func (sc scenario) plan() *netfilter.Plan { return iptables.Compile(sc.cfg, sc.view, sc.prev) }

// web is the workhorse service: default/web:http, TCP 10.96.0.10:80.
func web(opts ...mt.PortOpt) *model.ServicePort {
	return mt.Port("default", "web", "http", model.TCP, "10.96.0.10", 80, opts...)
}

var twoRemote = mt.Eps("10.244.2.5:8080", "10.244.3.7:8080")

func scenarios() []scenario {
	v4 := func(ports ...*model.ServicePort) *model.NodeView { return mt.View(model.IPv4, ports...) }
	return []scenario{
		{name: "clusterip", cfg: testCfg, view: v4(web(mt.Eps("10.244.2.5:8080")))},
		{name: "multiple-endpoints", cfg: testCfg, view: v4(web(mt.Eps("10.244.2.5:8080", "10.244.3.7:8080", "10.244.4.9:8080")))},
		{name: "no-endpoints", cfg: testCfg, view: v4(
			web(mt.NodePort(30080)),
			mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53),
		)},
		{name: "nodeport", cfg: testCfg, view: v4(web(mt.NodePort(30080), twoRemote))},
		{name: "loadbalancer-source-ranges", cfg: testCfg, view: v4(web(
			mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), mt.SourceRanges("203.0.113.0/24"), twoRemote,
		))},
		// The node holding the LB IP reaches it from that address: admitted
		// by a range holding the node's IP, not by one holding loopback.
		{name: "loadbalancer-source-ranges-node", cfg: testCfg, view: v4(
			web(mt.LoadBalancer("198.51.100.10"), mt.SourceRanges("203.0.113.0/24", "192.168.1.0/24"), twoRemote),
			mt.Port("default", "loopback-only", "", model.TCP, "10.96.0.11", 80, mt.LoadBalancer("198.51.100.11"),
				mt.SourceRanges("127.0.0.0/8"), twoRemote),
		)},
		{name: "external-ips", cfg: testCfg, view: v4(web(mt.ExternalIPs("192.0.2.50"), twoRemote))},
		{name: "external-local", cfg: testCfg, view: v4(web(
			mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), mt.ExternalLocal(32000),
			mt.Eps("local 10.244.1.5:8080", "10.244.2.5:8080"),
		))},
		{name: "external-local-none-here", cfg: testCfg, view: v4(web(
			mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"), mt.ExternalLocal(32000), twoRemote,
		))},
		{name: "internal-local", cfg: testCfg, view: v4(
			web(mt.InternalLocal(), mt.Eps("local 10.244.1.5:8080", "10.244.2.5:8080")),
			mt.Port("default", "api", "", model.TCP, "10.96.0.20", 443, mt.InternalLocal(), mt.NodePort(30443), mt.Eps("10.244.2.6:6443")),
			mt.Port("default", "cache", "", model.TCP, "10.96.0.21", 6379, mt.InternalLocal(), mt.Eps("10.244.2.7:6379")),
			mt.Port("default", "empty", "", model.TCP, "10.96.0.22", 80, mt.InternalLocal()),
		)},
		{name: "affinity", cfg: testCfg, view: v4(web(mt.Affinity(10800), twoRemote))},
		{name: "hairpin", cfg: testCfg, view: v4(
			web(mt.Eps("local 10.244.1.5:8080")),
			mt.Port("default", "db", "", model.TCP, "10.96.0.30", 5432, mt.Eps("local 10.244.1.5:5432", "local 10.244.1.6:5432")),
		)},
		{name: "masquerade-all", cfg: netfilter.Config{ClusterCIDRs: mt.PodCIDRs, MasqueradeAll: true}, view: v4(web(twoRemote))},
		{name: "no-cluster-cidr", cfg: netfilter.Config{}, view: v4(
			web(twoRemote),
			mt.Port("default", "edge", "", model.TCP, "10.96.0.40", 443, mt.LoadBalancer("198.51.100.40"), mt.ExternalLocal(32001),
				mt.Eps("local 10.244.1.5:8443", "10.244.2.5:8443")),
		)},
		// --detect-local-mode: NodeCIDR tells pods by the node's own range
		// (the remote pod's range is another node's), BridgeInterface and
		// InterfaceNamePrefix by the interface a packet comes in on.
		{name: "detect-local-node-cidr", cfg: netfilter.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, NodeIPs: nodeIPs}, view: v4(detectLocalPorts()...)},
		{name: "detect-local-bridge", cfg: netfilter.Config{ClusterCIDRs: mt.PodCIDRs, PodInterface: "cbr0", NodeIPs: nodeIPs}, view: v4(detectLocalPorts()...)},
		{name: "detect-local-prefix", cfg: netfilter.Config{PodInterface: "veth+", NodeIPs: nodeIPs}, view: v4(detectLocalPorts()...)},
		{name: "nodeport-addresses", cfg: netfilter.Config{
			ClusterCIDRs:      mt.PodCIDRs,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("fd00::/8")},
		}, view: v4(
			web(mt.NodePort(30080), twoRemote),
			mt.Port("default", "idle", "", model.TCP, "10.96.0.50", 80, mt.NodePort(30090)),
		)},
		// No prefix of the family: node ports answer on every local
		// address of it, as in kube-proxy.
		{name: "nodeport-addresses-other-family", cfg: netfilter.Config{
			ClusterCIDRs:      mt.PodCIDRs,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("fd00::/8")},
		}, view: v4(web(mt.NodePort(30080), twoRemote))},
		// --iptables-localhost-nodeports (kube-proxy's default): IPv4 node
		// ports answer on 127.0.0.0/8 as well, behind the martian filter;
		// unless --nodeport-addresses leaves loopback out.
		{name: "localhost-nodeports", cfg: withLocalhost(testCfg), view: v4(
			web(mt.NodePort(30080), twoRemote),
			mt.Port("default", "idle", "", model.TCP, "10.96.0.50", 80, mt.NodePort(30090)),
		)},
		{name: "localhost-nodeports-not-in-nodeport-addresses", cfg: withLocalhost(netfilter.Config{
			ClusterCIDRs: mt.PodCIDRs, NodeIPs: nodeIPs, NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
		}), view: v4(web(mt.NodePort(30080), twoRemote))},
		{name: "localhost-nodeports-ipv6", cfg: withLocalhost(testCfg), view: mt.View(model.IPv6,
			mt.Port("default", "web", "http", model.TCP, "fd00:96::10", 80, mt.NodePort(30080), mt.Eps("[fd00:10:244:2::5]:8080")),
		)},
		{name: "udp", cfg: testCfg, view: v4(mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53, mt.Eps("10.244.2.8:53", "10.244.3.8:53")))},
		{name: "sctp", cfg: testCfg, view: v4(mt.Port("default", "signal", "", model.SCTP, "10.96.0.60", 3868, mt.NodePort(30868), mt.Eps("10.244.2.9:3868")))},
		{name: "ipv6", cfg: testCfg, view: mt.View(model.IPv6,
			mt.Port("default", "web", "http", model.TCP, "fd00:96::10", 80, mt.NodePort(30080),
				mt.LoadBalancer("2001:db8::10"), mt.SourceRanges("2001:db8:1::/48"),
				mt.Eps("[fd00:10:244:2::5]:8080", "local [fd00:10:244:1::5]:8080")),
			mt.Port("kube-system", "dns", "dns", model.UDP, "fd00:96::53", 53),
		)},
		partialScenario(),
	}
}

// detectLocalPorts tell pods from the rest: a ClusterIP masquerades the
// rest; an externalTrafficPolicy Local LB IP with no endpoint here sends
// pods to the endpoints elsewhere and drops the rest.
func detectLocalPorts() []*model.ServicePort {
	return []*model.ServicePort{
		web(twoRemote),
		mt.Port("default", "edge", "", model.TCP, "10.96.0.40", 443, mt.LoadBalancer("198.51.100.40"), mt.ExternalLocal(32001),
			mt.Eps("10.244.2.5:8443", "10.244.3.5:8443")),
	}
}

func withLocalhost(cfg netfilter.Config) netfilter.Config {
	cfg.LocalhostNodePorts = true
	return cfg
}

// partialScenario changes one endpoint of one of three services.
func partialScenario() scenario {
	db := mt.Port("default", "db", "", model.TCP, "10.96.0.30", 5432, mt.Eps("10.244.2.7:5432"))
	dns := mt.Port("kube-system", "dns", "dns", model.UDP, "10.96.0.53", 53, mt.Eps("10.244.2.8:53"))
	prev := mt.View(model.IPv4, web(mt.NodePort(30080), twoRemote), db, dns)
	next := mt.WithPort(prev, web(mt.NodePort(30080), mt.Eps("10.244.2.5:8080", "10.244.3.8:8080")))
	return scenario{name: "partial-endpoint-change", cfg: testCfg, view: next, prev: prev}
}

func TestGolden(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			golden.Check(t, sc.name, []byte(sc.plan().String()))
		})
	}
}
