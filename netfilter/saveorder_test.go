package netfilter

import "testing"

func TestSaveOrderPutsTheHeaderFirst(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`-m addrtype --src-type LOCAL -d 198.51.100.10/32 -p tcp -m tcp --dport 80 -m comment --comment "a b -d c" -j SVCPROXY-MARK-MASQ`,
			`-d 198.51.100.10/32 -p tcp -m addrtype --src-type LOCAL -m tcp --dport 80 -m comment --comment "a b -d c" -j SVCPROXY-MARK-MASQ`},
		{`-i veth+ -d 10.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.96.0.10:53`,
			`-d 10.0.0.1/32 -i veth+ -p udp -m udp --dport 53 -j DNAT --to-destination 10.96.0.10:53`},
		{`-m set --match-set NODE-IPS dst ! -s 10.244.0.0/16 -p tcp -m tcp --dport 30080 -j X`,
			`! -s 10.244.0.0/16 -p tcp -m set --match-set NODE-IPS dst -m tcp --dport 30080 -j X`},
		{`-s 10.0.0.0/8 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT`, `-s 10.0.0.0/8 -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT`},
	} {
		if got := SaveOrder(tc.in); got != tc.want {
			t.Errorf("SaveOrder(%s)\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}
