package netnstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
)

// Reply is what a test server answers: who answered and the client address
// it saw, so a test checks both the backend chosen and whether the client's
// source was masqueraded.
type Reply struct {
	Server string         // namespace name of the server, e.g. "pod-2"
	Source netip.AddrPort // the client address as the server saw it
}

func (r Reply) String() string { return r.Server + " from " + r.Source.String() }

// ParseReply reads a server's answer line ("pod-2 from 10.244.0.9:40123").
func ParseReply(line string) (Reply, error) {
	server, source, ok := strings.Cut(strings.TrimSpace(line), " from ")
	if !ok {
		return Reply{}, fmt.Errorf("not a test server reply: %q", line)
	}
	ap, err := netip.ParseAddrPort(source)
	if err != nil {
		return Reply{}, fmt.Errorf("test server reply %q: %w", line, err)
	}
	return Reply{Server: server, Source: ap}, nil
}

func (ns *NS) answer(client netip.AddrPort) []byte {
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	return []byte(Reply{Server: ns.Name, Source: client}.String() + "\n")
}

// ServeTCP answers every connection to port, on every address of the
// namespace, with one reply line, then closes it. It stops when the test ends.
func (ns *NS) ServeTCP(port uint16) {
	ns.t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)) // dual-stack
		return err
	})
	if err != nil {
		ns.t.Fatalf("%s: serving TCP %d: %v", ns.Name, port, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // closed at the end of the test
			}
			if client, err := netip.ParseAddrPort(conn.RemoteAddr().String()); err == nil {
				_, _ = conn.Write(ns.answer(client))
			}
			_ = conn.Close()
		}
	})
	ns.onStop(func() {
		_ = ln.Close()
		wg.Wait()
	})
}

// ServeUDP answers every datagram to port with one reply datagram. It binds
// each address of the namespace separately, so that a reply leaves from the
// address the request came to (a wildcard socket would let the routing
// table pick, and a connected client would drop the answer).
func (ns *NS) ServeUDP(port uint16) {
	ns.t.Helper()
	addrs, err := ns.localAddrs()
	if err != nil {
		ns.t.Fatalf("%s: serving UDP %d: %v", ns.Name, port, err)
	}
	var conns []*net.UDPConn
	err = ns.Do(func() error {
		for _, a := range addrs {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { ns.answerUDP(c) })
	}
	ns.onStop(func() {
		for _, c := range conns {
			_ = c.Close()
		}
		wg.Wait()
	})
	if err != nil {
		ns.t.Fatalf("%s: serving UDP %d: %v", ns.Name, port, err)
	}
}

func (ns *NS) answerUDP(c *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		_, client, err := c.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // e.g. an ICMP error queued on the socket
		}
		_, _ = c.WriteToUDPAddrPort(ns.answer(client), client)
	}
}

// localAddrs lists the namespace's addresses a server can bind: loopback
// and every global address, each once.
func (ns *NS) localAddrs() ([]netip.Addr, error) {
	h, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	list, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	seen := map[netip.Addr]bool{}
	var addrs []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.IsLinkLocalUnicast() || seen[ip.Unmap()] {
			continue
		}
		seen[ip.Unmap()] = true
		addrs = append(addrs, ip.Unmap())
	}
	return addrs, nil
}
