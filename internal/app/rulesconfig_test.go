package app

import (
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/model"
)

// The rules learn the node's primary IP of each family from its Node, as
// kube-proxy's node IPs: loadBalancerSourceRanges that hold it admit the
// node reaching an LB IP it holds.
func TestRulesConfigTakesTheNodesPrimaryIPs(t *testing.T) {
	d := &daemon{cfg: Config{MasqueradeBit: 14}, log: zap.NewNop()}
	node := model.NodeInfo{Addresses: []netip.Addr{
		netip.MustParseAddr("fd00::5"), netip.MustParseAddr("192.168.1.10"),
		netip.MustParseAddr("fd00::6"), netip.MustParseAddr("10.0.0.1"),
	}}
	got := d.iptablesConfig(node).NodeIPs
	want := []netip.Addr{netip.MustParseAddr("fd00::5"), netip.MustParseAddr("192.168.1.10")}
	if !slices.Equal(got, want) {
		t.Errorf("node IPs %v, want %v", got, want)
	}
	if got := d.iptablesConfig(model.NodeInfo{}).NodeIPs; len(got) != 0 {
		t.Errorf("node IPs of an unknown node %v, want none (the rules take loopback)", got)
	}
}

// Each detect-local mode reaches the rules as kube-proxy's detectors:
// NodeCIDR by the Node's podCIDRs, the interface modes by the interface.
func TestRulesConfigTellsPodsByTheDetectLocalMode(t *testing.T) {
	cluster := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	node := model.NodeInfo{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:244:3::/64")}}
	for _, tc := range []struct {
		mode, iface string
		ranges      []netip.Prefix
	}{
		{"ClusterCIDR", "", cluster},
		{"NodeCIDR", "", node.PodCIDRs},
		{"BridgeInterface", "cbr0", nil},
		{"InterfaceNamePrefix", "veth+", nil},
	} {
		d := &daemon{cfg: Config{MasqueradeBit: 14, ClusterCIDRs: cluster, DetectLocalMode: tc.mode, PodInterface: tc.iface}, log: zap.NewNop()}
		got := d.iptablesConfig(node)
		if !slices.Equal(got.ClusterCIDRs, tc.ranges) || got.PodInterface != tc.iface {
			t.Errorf("%s: ranges %v, interface %q; want %v, %q", tc.mode, got.ClusterCIDRs, got.PodInterface, tc.ranges, tc.iface)
		}
	}
}
