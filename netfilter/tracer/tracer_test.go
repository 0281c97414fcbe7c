package tracer

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/model"
)

func restored(t *testing.T, text string) *Ruleset {
	t.Helper()
	rs := New(model.IPv4)
	if err := rs.Restore([]byte(text)); err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestRestoreRefusesWhatIptablesRefuses(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"unknown match option", "*nat\n:X - [0:0]\n-A X -m tcp -p tcp --sport 1 -j ACCEPT\nCOMMIT\n", `unsupported option "--sport"`},
		{"unknown module", "*nat\n:X - [0:0]\n-A X -m set --match-set s dst -j ACCEPT\nCOMMIT\n", `unsupported option "--match-set"`},
		{"unknown target", "*nat\n:X - [0:0]\n-A X -j SNAT --to-source 1.2.3.4\nCOMMIT\n", `unsupported target option "--to-source"`},
		{"port match without protocol", "*nat\n:X - [0:0]\n-A X -m tcp --dport 80 -j ACCEPT\nCOMMIT\n", "needs -p tcp"},
		{"DNAT to a port without protocol", "*nat\n:X - [0:0]\n-A X -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n", "needs -p"},
		{"DROP in nat", "*nat\n:X - [0:0]\n-A X -j DROP\nCOMMIT\n", "outside the filter table"},
		{"tcp-reset for udp", "*filter\n:X - [0:0]\n-A X -p udp -j REJECT --reject-with tcp-reset\nCOMMIT\n", "tcp-reset needs -p tcp"},
		{"other family", "*nat\n:X - [0:0]\n-A X -d fd00::1/128 -j ACCEPT\nCOMMIT\n", "is not IPv4"},
		{"host bits", "*nat\n:X - [0:0]\n-A X -s 10.0.0.1/8 -j ACCEPT\nCOMMIT\n", "host bits"},
		{"long chain name", "*nat\n:SVCPROXY-123456789012345678901 - [0:0]\nCOMMIT\n", "longer than 28"},
		{"jump to a missing chain", "*nat\n:X - [0:0]\n-A X -j Y\nCOMMIT\n", `jumps to missing chain "Y"`},
		{"delete a referenced chain", "*nat\n:X - [0:0]\n:Y - [0:0]\n-A X -j Y\n-X Y\nCOMMIT\n", "still referenced"},
		{"stray quote", "*nat\n:X - [0:0]\n-A X -m comment --comment a\"b -j ACCEPT\nCOMMIT\n", "stray quote"},
		{"no commit", "*nat\n:X - [0:0]\n", "no COMMIT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := New(model.IPv4).Restore([]byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestRestoreIsAtomicPerTable(t *testing.T) {
	rs := restored(t, "*nat\n:X - [0:0]\n-A X -j RETURN\nCOMMIT\n")
	if err := rs.Restore([]byte("*nat\n:X - [0:0]\n-A X -j MISSING\nCOMMIT\n")); err == nil {
		t.Fatal("restore with a dangling jump succeeded")
	}
	if got := rs.Rules("nat", "X"); len(got) != 1 || got[0] != "-j RETURN" {
		t.Fatalf("failed restore changed the table: %q", got)
	}
}

func TestRestoreFlushesDeclaredChainsAndDeletes(t *testing.T) {
	rs := restored(t, "*nat\n:X - [0:0]\n:Y - [0:0]\n-A X -j Y\n-A Y -j RETURN\nCOMMIT\n")
	if err := rs.Restore([]byte("*nat\n:X - [0:0]\n:Y - [0:0]\n-A X -j RETURN\n-X Y\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rs.Chains("nat"), " "); got != "INPUT OUTPUT POSTROUTING PREROUTING X" {
		t.Fatalf("chains after delete: %s", got)
	}
}

// The ruleset of the trace tests: a service with two endpoints behind a
// masquerade mark, a REJECT in filter.
const serviceRules = `*filter
:F - [0:0]
-A F -d 10.96.0.99/32 -p udp -m udp --dport 53 -m comment --comment "no endpoints" -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:S - [0:0]
:SVC - [0:0]
:MASQ - [0:0]
:POST - [0:0]
-A S -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SVC
-A SVC ! -s 10.244.0.0/16 -j MASQ
-A SVC -p tcp -m recent --name A --update --seconds 60 --reap --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.1:8080
-A SVC -p tcp -m statistic --mode random --probability 0.5000000000 -m recent --name A --set --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.1:8080
-A SVC -p tcp -j DNAT --to-destination 10.244.2.2:8080
-A MASQ -j MARK --or-mark 0x4000
-A POST -m mark ! --mark 0x4000/0x4000 -j RETURN
-A POST -j MARK --xor-mark 0x4000
-A POST -j MASQUERADE --random-fully
COMMIT
`

func serviceRuleset(t *testing.T) *Ruleset {
	t.Helper()
	rs := restored(t, serviceRules)
	for _, j := range []struct{ table, chain, jump string }{
		{"nat", "PREROUTING", "S"}, {"nat", "OUTPUT", "S"}, {"nat", "POSTROUTING", "POST"},
		{"filter", "FORWARD", "F"}, {"filter", "OUTPUT", "F"},
	} {
		if err := rs.Insert(j.table, j.chain, []string{"-j", j.jump}); err != nil {
			t.Fatal(err)
		}
	}
	return rs
}

func TestTraceForksOnStatisticAndSkipsRecentChecks(t *testing.T) {
	out, err := serviceRuleset(t).Trace(Packet{
		Src: netip.MustParseAddr("10.244.3.3"), Dst: netip.MustParseAddr("10.96.0.10"), Proto: "tcp", DPort: 80,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Dst.String() != "10.244.1.1:8080" || out[1].Dst.String() != "10.244.2.2:8080" {
		t.Fatalf("outcomes %v, want one per endpoint", out)
	}
	for _, o := range out {
		if o.Verdict != "ACCEPT" || !o.DNAT || o.Masquerade {
			t.Errorf("pod traffic: %v", o)
		}
	}
}

func TestTraceMarksMasqueradeForOffClusterSources(t *testing.T) {
	out, err := serviceRuleset(t).Trace(Packet{
		Src: netip.MustParseAddr("192.168.1.10"), Dst: netip.MustParseAddr("10.96.0.10"), Proto: "tcp", DPort: 80, SrcLocal: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out {
		if !o.Masquerade {
			t.Errorf("node traffic not masqueraded: %v", o)
		}
	}
}

func TestTraceRejectsInFilter(t *testing.T) {
	out, err := serviceRuleset(t).Trace(Packet{
		Src: netip.MustParseAddr("10.244.3.3"), Dst: netip.MustParseAddr("10.96.0.99"), Proto: "udp", DPort: 53,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Verdict != "REJECT" || out[0].RejectWith != "icmp-port-unreachable" || out[0].DNAT {
		t.Fatalf("got %v, want one REJECT", out)
	}
}

func TestTraceFailsOnJumpLoops(t *testing.T) {
	rs := restored(t, "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j A\nCOMMIT\n")
	if err := rs.Insert("nat", "PREROUTING", []string{"-j", "A"}); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Trace(Packet{Src: netip.MustParseAddr("1.1.1.1"), Dst: netip.MustParseAddr("2.2.2.2"), Proto: "tcp", DPort: 1}); err == nil {
		t.Fatal("a jump loop traced without error")
	}
}

func TestInInterfaceMatchesNameOrPrefix(t *testing.T) {
	rs := restored(t, "*nat\n:PREROUTING - [0:0]\n:OUTPUT - [0:0]\n:POSTROUTING - [0:0]\n"+
		"-A PREROUTING -i cbr0 -p tcp -j DNAT --to-destination 10.0.0.1:80\n"+
		"-A PREROUTING ! -i veth+ -p tcp -j DNAT --to-destination 10.0.0.2:80\n"+
		"-A OUTPUT ! -i veth+ -p tcp -j DNAT --to-destination 10.0.0.3:80\n"+
		"COMMIT\n")
	for _, tc := range []struct {
		iface string
		local bool
		want  string
	}{
		{"cbr0", false, "10.0.0.1:80"},
		{"cbr01", false, "10.0.0.2:80"},
		{"veth12ab", false, "192.0.2.1:80"},
		{"veth", false, "192.0.2.1:80"},
		{"eth0", false, "10.0.0.2:80"},
		{"", true, "10.0.0.3:80"}, // the node's own packets come in on no interface
	} {
		out, err := rs.Trace(Packet{Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.MustParseAddr("192.0.2.1"),
			Proto: "tcp", DPort: 80, InIface: tc.iface, SrcLocal: tc.local})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].Dst.String() != tc.want {
			t.Errorf("in on %q: got %v, want %s", tc.iface, out, tc.want)
		}
	}
}
