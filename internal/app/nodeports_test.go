package app

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// --nodeport-addresses=primary is the Node's primary IP of each family,
// as kube-proxy takes it: the first of the family, and none for a family
// whose first is loopback; a family without one serves every address.
func TestNodePortAddressesPrimary(t *testing.T) {
	d := &daemon{cfg: Config{MasqueradeBit: 14, NodePortPrimary: true}, log: zap.NewNop()}
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	cases := []struct {
		name        string
		node        []netip.Addr
		want        string // the prefixes
		everyV4, v6 bool   // a family answering on every address
	}{
		{name: "dual-stack", node: addrs("192.168.1.10", "fd00::10", "10.0.0.1", "fd00::11"), want: "[192.168.1.10/32 fd00::10/128]"},
		{name: "IPv6 first", node: addrs("fd00::10", "192.168.1.10"), want: "[fd00::10/128 192.168.1.10/32]"},
		{name: "single-stack: the other family everywhere", node: addrs("192.168.1.10", "192.168.1.11"), want: "[192.168.1.10/32]", v6: true},
		{name: "loopback first: that family everywhere", node: addrs("127.0.0.1", "192.168.1.10", "fd00::10"), want: "[fd00::10/128]", everyV4: true},
		{name: "no address: everywhere", want: "[]", everyV4: true, v6: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := d.iptablesConfig(model.NodeInfo{Name: "n", Addresses: c.node})
			if got := fmt.Sprint(cfg.NodePortAddresses); got != c.want {
				t.Errorf("node port addresses %s, want %s", got, c.want)
			}
			for fam, every := range map[model.Family]bool{model.IPv4: c.everyV4, model.IPv6: c.v6} {
				if got := len(netfilter.NewRules(cfg, fam).NodePortPrefixes) == 0; got != every {
					t.Errorf("%s node ports on every address: %v, want %v", fam, got, every)
				}
			}
		})
	}
}

// The health check node ports listen where the node ports answer: with
// only IPv4 CIDRs, on the matching IPv4 addresses and every IPv6 one.
func TestHealthCheckHostsFollowNodePortAddresses(t *testing.T) {
	all := healthCheckHosts(netfilter.Config{}, []model.Family{model.IPv4, model.IPv6}, zap.NewNop())
	if !slices.Equal(all, []string{""}) {
		t.Errorf("no --nodeport-addresses: hosts %q, want every address", all)
	}
	hosts := healthCheckHosts(netfilter.Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		[]model.Family{model.IPv4, model.IPv6}, zap.NewNop())
	if !slices.Equal(hosts, []string{"127.0.0.1", "::"}) {
		t.Errorf("--nodeport-addresses=127.0.0.0/8: hosts %q, want [127.0.0.1 ::]", hosts)
	}
}
