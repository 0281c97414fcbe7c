package ipvs

import (
	"bufio"
	"fmt"
	"io"
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
//
// It reads the listing a line at a time, never the whole of it: at 10,000
// services it has 100,000 lines (5.5 MB), and reading the file whole and
// then cutting it up held two copies of it, the integrity check's largest
// allocation and the daemon's peak heap.
func parseTable(r io.Reader) (map[VSKey]Listed, error) {
	out := map[VSKey]Listed{}
	var cur *Listed // the virtual server whose real servers follow; nil: skip them
	// reals gathers cur's real servers; they are copied out at the exact
	// length, so that no listed virtual server keeps a half-empty array.
	var reals []RealStatus
	done := func() {
		if cur != nil {
			cur.Status = slices.Clone(reals)
			out[cur.VSKey] = cur.sorted()
		}
		cur, reals = nil, reals[:0]
	}
	in := bufio.NewReaderSize(r, 64<<10)
	var buf [8]string
	for line := 0; ; line++ {
		b, readErr := in.ReadSlice('\n')
		if readErr != nil && readErr != io.EOF {
			return nil, readErr
		}
		text := string(b)
		f := fields(strings.TrimRight(text, "\n"), buf[:0])
		switch {
		case line < 3 || len(f) == 0:
		case f[0] == "->":
			if cur == nil {
				continue
			}
			rs, err := parseListedReal(f)
			if err != nil {
				return nil, fmt.Errorf("line %d %q: %w", line+1, strings.TrimSpace(text), err)
			}
			reals = append(reals, rs)
		default:
			vs, ok, err := parseListedServer(f)
			if err != nil {
				return nil, fmt.Errorf("line %d %q: %w", line+1, strings.TrimSpace(text), err)
			}
			done()
			if ok {
				cur = &Listed{VirtualServer: vs}
			}
		}
		if readErr == io.EOF {
			break
		}
	}
	done()
	return out, nil
}

// fields splits s at runs of spaces into buf's room (the listing's lines
// have at most eight fields; a longer line keeps its first ones).
func fields(s string, buf []string) []string {
	space := func(c byte) bool { return c == ' ' || c == '\t' }
	for i := 0; i < len(s) && len(buf) < cap(buf); {
		if space(s[i]) {
			i++
			continue
		}
		j := i + 1
		for j < len(s) && !space(s[j]) {
			j++
		}
		buf, i = append(buf, s[i:j]), j
	}
	return buf
}

// sorted puts the real servers in address order, as RealServers lists
// them: the kernel lists them newest first, so real servers added in
// address order come reversed, and are checked, not sorted, once turned.
func (l *Listed) sorted() Listed {
	byAddr := func(a, b RealStatus) int { return a.Addr.Compare(b.Addr) }
	slices.Reverse(l.Status)
	if !slices.IsSortedFunc(l.Status, byAddr) {
		slices.SortFunc(l.Status, byAddr)
	}
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
	// The scheduler is copied: f is cut from the line, which is not kept.
	vs := VirtualServer{VSKey: VSKey{Addr: addr.Addr(), Protocol: proto, Port: addr.Port()}, Scheduler: strings.Clone(f[2])}
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
	} else if len(host) != 8 {
		err = fmt.Errorf("%d hexadecimal digits, want 8", len(host))
	} else {
		var v uint64
		if v, err = strconv.ParseUint(host, 16, 32); err == nil {
			addr = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		}
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}
