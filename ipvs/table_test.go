package ipvs

import (
	"net/netip"
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
	got, err := parseTable([]byte(listing))
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
	if _, err := parseTable([]byte(listing[:len(listing)-1] + "\n  -> 0AF4:xx      Masq 1 0 0\n")); err == nil {
		t.Error("a garbled real server line must be an error, not a silent omission")
	}
}
