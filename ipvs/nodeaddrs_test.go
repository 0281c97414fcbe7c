package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/model"
)

// The node's addresses are the same whichever way they are read: one dump
// of every address while kube-ipvs0 holds few, a dump per other link when
// it holds many more than there are links, one dump again when the links
// are many (a node of many pods).
func TestNodeAddrsReadEitherWay(t *testing.T) {
	k := NewFakeKernel()
	k.AddHostAddr("lo", netip.MustParseAddr("127.0.0.1"))
	k.AddHostAddr("eth0", netip.MustParseAddr("192.168.1.10"))
	k.AddHostAddr("eth0", netip.MustParseAddr("fe80::1"))
	k.AddHostAddr("eth0", netip.MustParseAddr("fd00::10"))
	k.AddHostAddr("eth1", netip.MustParseAddr("192.168.1.10")) // the same address on two links: listed once
	if err := k.EnsureDummy(DummyName); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if err := k.AddAddr(DummyName, netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})); err != nil {
			t.Fatal(err)
		}
	}
	want := map[model.Family][]netip.Addr{
		model.IPv4: {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.1.10")},
		model.IPv6: {netip.IPv6Loopback(), netip.MustParseAddr("fd00::10")},
	}
	cases := []struct {
		name         string
		servicePorts int
		pods         int
		reads        string
	}{
		{"few services", 10, 0, "HostAddrs"},
		{"many services, few links", 1000, 0, "LinkNames LinkAddrs LinkAddrs LinkAddrs"},
		{"many services, many links", 1000, 40, "LinkNames HostAddrs"},
	}
	for _, c := range cases {
		for i := range c.pods {
			k.AddHostAddr(fmt.Sprintf("veth%d", i), netip.MustParseAddr("fe80::2"))
		}
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			k.Calls = nil
			got, err := nodeAddrs(k, family, c.servicePorts)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want[family]) {
				t.Errorf("%s, %s: node addresses %v, want %v", c.name, family, got, want[family])
			}
			var reads []string
			for _, call := range k.Calls {
				reads = append(reads, strings.Fields(call)[0])
			}
			if strings.Join(reads, " ") != c.reads {
				t.Errorf("%s, %s: read by %q, want %q", c.name, family, reads, c.reads)
			}
		}
	}
}
