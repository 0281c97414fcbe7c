package netnstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The classes of dial failure a datapath test tells apart.
var (
	// ErrRefused: the connection was refused or reset (TCP RST, ICMP port
	// unreachable): what REJECT and a closed port look like.
	ErrRefused = errors.New("refused")
	// ErrUnreachable: an ICMP host/network unreachable or prohibited, or no
	// route. For TCP the kernel can drop an ICMP error that races with the
	// connect call (TcpExtLockDroppedIcmps) and only report it with the SYN
	// retransmitted a second later: give such dials a Timeout above 1s.
	ErrUnreachable = errors.New("unreachable")
	// ErrTimeout: no answer within the timeout: what DROP looks like from afar.
	ErrTimeout = errors.New("timeout")
	// ErrDenied: a rule of the client's own namespace dropped the packet on
	// its way out (the socket call fails with EPERM).
	ErrDenied = errors.New("denied locally")
)

// DialTCP connects to dst from this namespace and returns the server's reply.
func (ns *NS) DialTCP(dst netip.AddrPort) (Reply, error) {
	var conn net.Conn
	err := ns.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", dst.String(), ns.Timeout)
		return err
	})
	if err != nil {
		return Reply{}, classify("tcp", dst, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ns.Timeout))
	line, err := io.ReadAll(conn)
	if err != nil {
		return Reply{}, classify("tcp", dst, err)
	}
	return ParseReply(string(line))
}

// DialUDP sends one datagram to dst from a fresh socket and returns the reply.
func (ns *NS) DialUDP(dst netip.AddrPort) (Reply, error) {
	c, err := ns.UDPClient(dst)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	return c.Ask()
}

// Dial is DialTCP or DialUDP by network name ("tcp" or "udp").
func (ns *NS) Dial(network string, dst netip.AddrPort) (Reply, error) {
	switch network {
	case "tcp":
		return ns.DialTCP(dst)
	case "udp":
		return ns.DialUDP(dst)
	}
	return Reply{}, fmt.Errorf("netnstest dials tcp or udp, not %q", network)
}

// UDPClient is a connected UDP socket that keeps its source port across
// requests, so they all belong to one conntrack flow (as a DNS resolver's do).
type UDPClient struct {
	conn    net.Conn
	dst     netip.AddrPort
	timeout time.Duration
}

// UDPClient opens a UDP socket in the namespace, connected to dst. It is
// closed when the test ends, if not before.
func (ns *NS) UDPClient(dst netip.AddrPort) (*UDPClient, error) {
	var conn net.Conn
	err := ns.Do(func() (err error) {
		conn, err = (&net.Dialer{Control: reportUnreachable}).Dial("udp", dst.String())
		return err
	})
	if err != nil {
		return nil, classify("udp", dst, err)
	}
	ns.onStop(func() { _ = conn.Close() })
	return &UDPClient{conn: conn, dst: dst, timeout: ns.Timeout}, nil
}

// reportUnreachable asks the kernel to report ICMP host and network
// unreachable on a UDP socket; by default only port unreachable is, and an
// unreachable destination would look like a drop.
func reportUnreachable(network, _ string, c syscall.RawConn) error {
	level, opt := unix.SOL_IP, unix.IP_RECVERR
	if network == "udp6" {
		level, opt = unix.SOL_IPV6, unix.IPV6_RECVERR
	}
	var sockErr error
	err := c.Control(func(fd uintptr) { sockErr = unix.SetsockoptInt(int(fd), level, opt, 1) })
	return errors.Join(err, sockErr)
}

// Local is the client's own address and port.
func (c *UDPClient) Local() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(c.conn.LocalAddr().String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Ask sends one datagram and waits for one reply.
func (c *UDPClient) Ask() (Reply, error) {
	_ = c.conn.SetDeadline(time.Now().Add(c.timeout))
	if _, err := c.conn.Write([]byte("?\n")); err != nil {
		return Reply{}, classify("udp", c.dst, err)
	}
	buf := make([]byte, 1500)
	n, err := c.conn.Read(buf)
	if err != nil {
		return Reply{}, classify("udp", c.dst, err)
	}
	return ParseReply(string(buf[:n]))
}

// Close closes the socket.
func (c *UDPClient) Close() error { return c.conn.Close() }

// classify wraps err with the class a test checks with errors.Is.
func classify(network string, dst netip.AddrPort, err error) error {
	var class error
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		class = ErrRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EACCES):
		class = ErrUnreachable
	case errors.Is(err, syscall.EPERM):
		class = ErrDenied
	case errors.As(err, &netErr) && netErr.Timeout():
		class = ErrTimeout
	default:
		return fmt.Errorf("%s to %s: %w", network, dst, err)
	}
	return fmt.Errorf("%s to %s: %w (%v)", network, dst, class, err)
}
