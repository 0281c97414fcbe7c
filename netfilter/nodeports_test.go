package netfilter

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/svcproxy/svcproxy/model"
)

func TestNodePortHosts(t *testing.T) {
	local := []netip.Addr{
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("10.0.0.10"),
		netip.MustParseAddr("::1"), netip.MustParseAddr("fd00::10"), netip.MustParseAddr("2001:db8::10"),
		netip.MustParseAddr("::ffff:192.168.1.11"),
	}
	prefixes := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	both := []model.Family{model.IPv4, model.IPv6}
	cases := []struct {
		name     string
		cidrs    []netip.Prefix
		families []model.Family
		want     []string
	}{
		{name: "no CIDRs: every address of both families", families: both, want: []string{""}},
		{name: "no CIDRs, one family", families: []model.Family{model.IPv4}, want: []string{""}},
		{name: "a CIDR of each family", cidrs: prefixes("192.168.1.0/24", "fd00::/8"), families: both,
			want: []string{"192.168.1.10", "192.168.1.11", "fd00::10"}},
		{name: "IPv4 CIDRs only: every IPv6 address", cidrs: prefixes("192.168.1.10/32", "10.0.0.0/8"), families: both,
			want: []string{"10.0.0.10", "192.168.1.10", "::"}},
		{name: "IPv6 CIDR only: every IPv4 address", cidrs: prefixes("2001:db8::/32"), families: both,
			want: []string{"0.0.0.0", "2001:db8::10"}},
		{name: "CIDR of a family not run", cidrs: prefixes("2001:db8::/32"), families: []model.Family{model.IPv4}, want: []string{""}},
		{name: "loopback in a CIDR, as kube-proxy", cidrs: prefixes("127.0.0.0/8"), families: []model.Family{model.IPv4},
			want: []string{"127.0.0.1"}},
		{name: "no local address in the CIDR: nowhere", cidrs: prefixes("172.16.0.0/12"), families: []model.Family{model.IPv4}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := NodePortHosts(Config{NodePortAddresses: c.cidrs}, c.families, local)
			if !slices.Equal(got, c.want) {
				t.Errorf("NodePortHosts(%v, %v) = %q, want %q", c.cidrs, c.families, got, c.want)
			}
		})
	}
}
