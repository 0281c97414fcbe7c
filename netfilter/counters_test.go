package netfilter

import "testing"

func TestPacketCountReadsTheMatchingRules(t *testing.T) {
	listing := `-N SVCPROXY-FORWARD
-A SVCPROXY-FORWARD -m conntrack --ctstate INVALID -c 12 720 -j DROP
-A SVCPROXY-FORWARD -m comment --comment "svcproxy forwarding rules" -m mark --mark 0x4000/0x4000 -c 99 9000 -j ACCEPT
-A OTHER -m conntrack --ctstate INVALID -c 5 300 -j DROP
`
	n, err := packetCount(listing, "SVCPROXY-FORWARD", "--ctstate INVALID")
	if err != nil || n != 12 {
		t.Errorf("packetCount = %d, %v; want 12", n, err)
	}
	if _, err := packetCount("-A SVCPROXY-FORWARD -m conntrack --ctstate INVALID -j DROP\n", "SVCPROXY-FORWARD", "INVALID"); err == nil {
		t.Error("a rule listed without counters gave no error")
	}
}
