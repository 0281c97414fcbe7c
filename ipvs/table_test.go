package ipvs

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/model"
)

// The kernel's listing, as 6.1 writes it (real servers newest first), read
// back whole, real servers in address order.
func TestParseTable(t *testing.T) {
	listing := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A60000A:0050 rr persistent 10800 FFFFFFFF
  -> 0AF4000C:1F90      Masq    0      0          1         
  -> 0AF4000B:1F90      Masq    1      2          3         
FWM  00000001 rr 
  -> 0AF4000D:1F90      Masq    1      0          0         
UDP  [fd00:0096:0000:0000:0000:0000:0000:0035]:0035 lc 
  -> [fd00:0244:0000:0000:0000:0000:0000:0011]:14E9      Masq    1      0          0         
SCTP  0A600020:0D1C sh ops 
`
	got, err := parseTable(strings.NewReader(listing))
	if err != nil {
		t.Fatal(err)
	}
	web := VSKey{netip.MustParseAddr("10.96.0.10"), model.TCP, 80}
	dns := VSKey{netip.MustParseAddr("fd00:96::35"), model.UDP, 53}
	sctp := VSKey{netip.MustParseAddr("10.96.0.32"), model.SCTP, 3356}
	if len(got) != 3 {
		t.Fatalf("%d virtual servers, want 3 (the firewall mark left out): %+v", len(got), got)
	}
	w := got[web]
	if w.Scheduler != "rr" || w.Persistence != 10800 || len(w.Status) != 2 ||
		w.Status[0] != (RealStatus{RealServer{netip.MustParseAddrPort("10.244.0.11:8080"), 1}, 2, 3}) ||
		w.Status[1] != (RealStatus{RealServer{netip.MustParseAddrPort("10.244.0.12:8080"), 0}, 0, 1}) {
		t.Errorf("web: %+v", w)
	}
	if d := got[dns]; d.Scheduler != "lc" || len(d.Status) != 1 || d.Status[0].Addr != netip.MustParseAddrPort("[fd00:244::11]:5353") {
		t.Errorf("dns: %+v", d)
	}
	if s := got[sctp]; s.Scheduler != "sh" || s.Persistence != 0 || len(s.Status) != 0 {
		t.Errorf("sctp: %+v", s)
	}
	if _, err := parseTable(strings.NewReader(listing[:len(listing)-1] + "\n  -> 0AF4:xx      Masq 1 0 0\n")); err == nil {
		t.Error("a garbled real server line must be an error, not a silent omission")
	}
}

// BenchmarkParseTable10k reads a listing the size of 10,000 services'
// (12,000 virtual servers of 8 real servers each, newest first, as the
// kernel lists them): what every full sync and integrity check parses.
func BenchmarkParseTable10k(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n")
	for i := range 12000 {
		fmt.Fprintf(&sb, "TCP  0A60%04X:0050 rr \n", i)
		for j := 7; j >= 0; j-- {
			fmt.Fprintf(&sb, "  -> 0AF4%02X%02X:1F90      Masq    1      0          0         \n", i%200, j)
		}
	}
	listing := []byte(sb.String())
	b.SetBytes(int64(len(listing)))
	b.ReportAllocs()
	for b.Loop() {
		got, err := parseTable(bytes.NewReader(listing))
		if err != nil || len(got) != 12000 {
			b.Fatal(len(got), err)
		}
	}
}

// The integrity check's comparison of real servers, by search and by map
// (past a few dozen endpoints), gives one answer: the wanted ones with
// their weights, and anything else only at weight 0 (draining).
func TestRealsHold(t *testing.T) {
	rs := func(i, w int) RealServer {
		return RealServer{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), 8080), w}
	}
	status := func(list ...RealServer) []RealStatus {
		var out []RealStatus
		for _, r := range list {
			out = append(out, RealStatus{RealServer: r})
		}
		return out
	}
	for _, n := range []int{1, 3, 40} {
		var want []RealServer
		for i := range n {
			want = append(want, rs(i, 1))
		}
		changed := slices.Clone(want)
		changed[n-1].Weight = 2
		cases := []struct {
			name string
			cur  []RealStatus
			hold bool
		}{
			{"same", status(want...), true},
			{"plus one draining", status(append(slices.Clone(want), rs(n, 0))...), true},
			{"plus one serving", status(append(slices.Clone(want), rs(n, 1))...), false},
			{"one missing", status(want[1:]...), false},
			{"a weight changed", status(changed...), false},
			{"none", nil, false},
		}
		for _, c := range cases {
			if got := realsHold(want, c.cur); got != c.hold {
				t.Errorf("%d wanted, %s: holds %v, want %v", n, c.name, got, c.hold)
			}
			if got := realsHoldLong(want, c.cur); got != c.hold {
				t.Errorf("%d wanted, %s, by map: holds %v, want %v", n, c.name, got, c.hold)
			}
		}
	}
}
