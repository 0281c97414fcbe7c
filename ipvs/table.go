package ipvs

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// parseTable reads the kernel's listing of its IPVS table (/proc/net/ip_vs):
//
//	IP Virtual Server version 1.2.1 (size=4096)
//	Prot LocalAddress:Port Scheduler Flags
//	  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
//	TCP  0A60000A:0050 rr persistent 10800 FFFFFFFF
//	  -> 0AF4000B:1F90      Masq    1      0          0
//	UDP  [fd00:0096:0000:0000:0000:0000:0000:0035]:0035 rr
//
// IPv4 addresses and every port in hexadecimal, IPv6 addresses written out
// whole; a persistence timeout in jiffies (the kernel's HZ per second),
// which Table replaces by the seconds netlink reports. Firewall-mark services (FWM) are left out, as are their real
// servers, and so is anything a VSKey cannot name.
func parseTable(b []byte) (map[VSKey]Listed, error) {
	out := map[VSKey]Listed{}
	var cur *Listed // the virtual server whose real servers follow; nil: skip them
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for line := 0; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		switch {
		case line < 3 || len(f) == 0:
		case f[0] == "->":
			if cur == nil {
				continue
			}
			rs, err := parseListedReal(f)
			if err != nil {
				return nil, fmt.Errorf("line %d %q: %w", line+1, sc.Text(), err)
			}
			cur.Status = append(cur.Status, rs)
		default:
			vs, ok, err := parseListedServer(f)
			if err != nil {
				return nil, fmt.Errorf("line %d %q: %w", line+1, sc.Text(), err)
			}
			if cur != nil {
				out[cur.VSKey] = cur.sorted()
			}
			cur = nil
			if ok {
				cur = &Listed{VirtualServer: vs}
			}
		}
	}
	if cur != nil {
		out[cur.VSKey] = cur.sorted()
	}
	return out, sc.Err()
}

// sorted puts the real servers in address order, as RealServers lists
// them: the kernel lists them newest first.
func (l *Listed) sorted() Listed {
	slices.SortFunc(l.Status, func(a, b RealStatus) int { return a.Addr.Compare(b.Addr) })
	return *l
}

// parseListedServer reads "TCP  0A60000A:0050 rr [ops] [persistent N mask]";
// ok is false for what a VSKey cannot name (a firewall mark).
func parseListedServer(f []string) (VirtualServer, bool, error) {
	proto, err := model.ParseProtocol(f[0])
	if err != nil || len(f) < 3 {
		return VirtualServer{}, false, nil
	}
	addr, err := parseListedAddrPort(f[1])
	if err != nil {
		return VirtualServer{}, false, err
	}
	vs := VirtualServer{VSKey: VSKey{Addr: addr.Addr(), Protocol: proto, Port: addr.Port()}, Scheduler: f[2]}
	for i := 3; i+1 < len(f); i++ {
		if f[i] == "persistent" {
			t, err := strconv.ParseUint(f[i+1], 10, 32)
			if err != nil {
				return VirtualServer{}, false, fmt.Errorf("persistence %q: %w", f[i+1], err)
			}
			vs.Persistence = uint32(t)
		}
	}
	return vs, true, nil
}

// parseListedReal reads "-> 0AF4000B:1F90 Masq 1 0 0".
func parseListedReal(f []string) (RealStatus, error) {
	if len(f) < 6 {
		return RealStatus{}, fmt.Errorf("want 6 fields, got %d", len(f))
	}
	addr, err := parseListedAddrPort(f[1])
	if err != nil {
		return RealStatus{}, err
	}
	var n [3]int
	for i := range n {
		if n[i], err = strconv.Atoi(f[3+i]); err != nil {
			return RealStatus{}, fmt.Errorf("field %q: %w", f[3+i], err)
		}
	}
	return RealStatus{RealServer: RealServer{Addr: addr, Weight: n[0]}, ActiveConns: n[1], InactiveConns: n[2]}, nil
}

// parseListedAddrPort reads "0A60000A:0050" or "[fd00:...:0035]:0035".
func parseListedAddrPort(s string) (netip.AddrPort, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q: no port", s)
	}
	port, err := strconv.ParseUint(s[i+1:], 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
	}
	host := s[:i]
	var addr netip.Addr
	if strings.HasPrefix(host, "[") {
		addr, err = netip.ParseAddr(strings.Trim(host, "[]"))
	} else {
		var b []byte
		if b, err = hex.DecodeString(host); err == nil && len(b) == 4 {
			addr = netip.AddrFrom4([4]byte(b))
		} else if err == nil {
			err = fmt.Errorf("%d bytes", len(b))
		}
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}
