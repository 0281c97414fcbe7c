package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The bed's addressing. Pods hang off the node like a CNI's routed veths:
// each pod owns a /32 (/128) and reaches the node through a gateway address
// that every pod-facing veth of the node carries. The outside client sits on
// the node's "LAN" and routes everything to the node, so service VIPs,
// load-balancer and external IPs need no extra routes. (Functions, not
// variables: the package keeps no mutable state.)
func podGateway4() netip.Addr { return netip.AddrFrom4([4]byte{10, 244, 0, 1}) }
func podGateway6() netip.Addr { return netip.MustParseAddr("fd00:244::1") }
func nodeIP4() netip.Addr     { return netip.AddrFrom4([4]byte{192, 168, 50, 1}) }
func nodeIP6() netip.Addr     { return netip.MustParseAddr("fd00:50::1") }
func outsideIP4() netip.Addr  { return netip.AddrFrom4([4]byte{192, 168, 50, 2}) }
func outsideIP6() netip.Addr  { return netip.MustParseAddr("fd00:50::2") }

const (
	lanBits4 = 24
	lanBits6 = 64
)

// MaxPods bounds the pods of one bed (their addresses are 10.244.0.10 up).
const MaxPods = 80

// PodIP4 is the IPv4 address of pod i: 10.244.0.(10+i).
func PodIP4(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + i)}) }

// PodIP6 is the IPv6 address of pod i, written like its IPv4 one: fd00:244::(10+i).
func PodIP6(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:244::%d", 10+i))
}

// Bed is a node namespace with pods behind veths and an outside client.
//
//	outside (192.168.50.2, fd00:50::2) ──eth0── node (192.168.50.1, fd00:50::1)
//	node ──pod<i>── pod-<i> eth0 (10.244.0.(10+i), fd00:244::(10+i))
type Bed struct {
	node    *NS
	outside *NS
	pods    []*NS
}

// NewBed builds a node with the given number of pods and an outside client,
// all removed when the test ends. It skips the test without root and fails
// it if the kernel cannot build the bed.
func NewBed(t TB, pods int) *Bed {
	t.Helper()
	RequireRoot(t)
	if pods < 0 || pods > MaxPods {
		t.Fatalf("a bed has 0 to %d pods, not %d", MaxPods, pods)
	}
	b := &Bed{node: NewNS(t, "node"), outside: NewNS(t, "outside")}
	b.node.v4, b.node.v6 = nodeIP4(), nodeIP6()
	b.outside.v4, b.outside.v6 = outsideIP4(), outsideIP6()
	for i := range pods {
		pod := NewNS(t, fmt.Sprintf("pod-%d", i))
		pod.v4, pod.v6 = PodIP4(i), PodIP6(i)
		b.pods = append(b.pods, pod)
	}
	if err := b.wire(); err != nil {
		t.Fatalf("building test bed: %v", err)
	}
	return b
}

// Node is the namespace svcproxy programs.
func (b *Bed) Node() *NS { return b.node }

// Outside is a client off the node, for NodePort, load-balancer and external IP traffic.
func (b *Bed) Outside() *NS { return b.outside }

// Pod returns pod i (0-based), named "pod-<i>".
func (b *Bed) Pod(i int) *NS { return b.pods[i] }

// Pods returns every pod, in order.
func (b *Bed) Pods() []*NS { return b.pods }

// PodGateway is the node's address as pods see it (10.244.0.1 or
// fd00:244::1), in the family of like: the source a pod sees when the node
// masquerades traffic towards it.
func (b *Bed) PodGateway(like netip.Addr) netip.Addr {
	if like.Is4() {
		return podGateway4()
	}
	return podGateway6()
}

func (b *Bed) wire() error {
	for _, ns := range append([]*NS{b.node, b.outside}, b.pods...) {
		if err := quickStart(ns); err != nil {
			return err
		}
	}
	if err := b.node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if err := b.node.Sysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
		return err
	}
	if err := b.wireOutside(); err != nil {
		return err
	}
	for i, pod := range b.pods {
		if err := b.wirePod(i, pod); err != nil {
			return err
		}
	}
	return b.waitLinksUp()
}

// waitLinksUp waits until every veth is operationally up and no IPv6
// address is still tentative. Until the kernel's link watcher gets to a new
// link (it runs at most once a second, later on a busy machine) the link
// drops what it is given, and IPv6 addresses come into use only after that,
// from a work queue: a test's first packet would be lost.
func (b *Bed) waitLinksUp() error {
	type link struct {
		ns  *NS
		dev string
	}
	links := []link{{b.node, "eth0"}, {b.outside, "eth0"}}
	for i, pod := range b.pods {
		links = append(links, link{b.node, fmt.Sprintf("pod%d", i)}, link{pod, "eth0"})
	}
	deadline := time.Now().Add(linkUpTimeout)
	for _, l := range links {
		if err := waitOperUp(l.ns, l.dev, deadline); err != nil {
			return err
		}
	}
	for _, ns := range append([]*NS{b.node, b.outside}, b.pods...) {
		if err := waitAddrsUsable(ns, deadline); err != nil {
			return err
		}
	}
	return nil
}

func waitAddrsUsable(ns *NS, deadline time.Time) error {
	h, err := ns.Netlink()
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns.Name, err)
	}
	defer h.Close()
	for {
		addrs, err := h.AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("listing addresses in %s: %w", ns.Name, err)
		}
		i := slices.IndexFunc(addrs, func(a netlink.Addr) bool { return a.Flags&unix.IFA_F_TENTATIVE != 0 })
		if i < 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("address %s in %s still tentative after %v", addrs[i].IPNet, ns.Name, linkUpTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const linkUpTimeout = 10 * time.Second

func waitOperUp(ns *NS, dev string, deadline time.Time) error {
	h, err := ns.Netlink()
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns.Name, err)
	}
	defer h.Close()
	for {
		link, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("finding %s in %s: %w", dev, ns.Name, err)
		}
		if link.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s still %s after %v", dev, ns.Name, link.Attrs().OperState, linkUpTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// quickStart turns off what would make tests slow or flaky: duplicate
// address detection (fresh IPv6 addresses unusable for a second or two) and
// the rate limit on ICMP destination unreachable (the second reject in a row
// to one client would vanish and look like a drop). Errors from
// "unreachable" routes keep a kernel-wide limit no namespace can lift: about
// five in a burst per client, then one a second.
func quickStart(ns *NS) error {
	for key, value := range map[string]string{
		"net.ipv6.conf.all.accept_dad":     "0",
		"net.ipv6.conf.default.accept_dad": "0",
		// The defaults less destination unreachable (ICMP type 3, ICMPv6 type 1).
		"net.ipv4.icmp_ratemask": "6160",
		"net.ipv6.icmp.ratemask": "0,3-127",
	} {
		if err := ns.Sysctl(key, value); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bed) wireOutside() error {
	if err := veth(b.node, "eth0", b.outside, "eth0"); err != nil {
		return err
	}
	if err := configure(b.node, "eth0",
		[]netip.Prefix{netip.PrefixFrom(nodeIP4(), lanBits4), netip.PrefixFrom(nodeIP6(), lanBits6)},
		[]route{{dst: netip.MustParsePrefix("0.0.0.0/0"), via: outsideIP4()}, {dst: netip.MustParsePrefix("::/0"), via: outsideIP6()}},
	); err != nil {
		return err
	}
	// The outside does not forward, so a packet the node sends it for an
	// unknown address dies there instead of bouncing back.
	return configure(b.outside, "eth0",
		[]netip.Prefix{netip.PrefixFrom(outsideIP4(), lanBits4), netip.PrefixFrom(outsideIP6(), lanBits6)},
		[]route{{dst: netip.MustParsePrefix("0.0.0.0/0"), via: nodeIP4()}, {dst: netip.MustParsePrefix("::/0"), via: nodeIP6()}},
	)
}

func (b *Bed) wirePod(i int, pod *NS) error {
	nodeSide := fmt.Sprintf("pod%d", i)
	if err := veth(b.node, nodeSide, pod, "eth0"); err != nil {
		return err
	}
	if err := configure(b.node, nodeSide,
		[]netip.Prefix{netip.PrefixFrom(podGateway4(), 32), netip.PrefixFrom(podGateway6(), 128)},
		[]route{{dst: netip.PrefixFrom(pod.v4, 32)}, {dst: netip.PrefixFrom(pod.v6, 128)}},
	); err != nil {
		return err
	}
	return configure(pod, "eth0",
		[]netip.Prefix{netip.PrefixFrom(pod.v4, 32), netip.PrefixFrom(pod.v6, 128)},
		[]route{
			{dst: netip.PrefixFrom(podGateway4(), 32)},
			{dst: netip.PrefixFrom(podGateway6(), 128)},
			{dst: netip.MustParsePrefix("0.0.0.0/0"), via: podGateway4()},
			{dst: netip.MustParsePrefix("::/0"), via: podGateway6()},
		},
	)
}

// veth joins two namespaces with a veth pair named aName in a and bName in b.
func veth(a *NS, aName string, b *NS, bName string) error {
	h, err := a.Netlink()
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", a.Name, err)
	}
	defer h.Close()
	pair := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.handle),
	}
	if err := h.LinkAdd(pair); err != nil {
		return fmt.Errorf("veth %s/%s - %s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	return nil
}

// route is a route through dev: on-link when via is invalid.
type route struct {
	dst netip.Prefix
	via netip.Addr
}

// configure brings dev up with the given addresses, then adds the routes.
func configure(ns *NS, dev string, addrs []netip.Prefix, routes []route) error {
	h, err := ns.Netlink()
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns.Name, err)
	}
	defer h.Close()
	link, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, ns.Name, err)
	}
	for _, p := range addrs {
		addr := &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("adding %s to %s in %s: %w", p, dev, ns.Name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up in %s: %w", dev, ns.Name, err)
	}
	for _, r := range routes {
		nr := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(r.dst), Scope: netlink.SCOPE_LINK}
		if r.via.IsValid() {
			nr.Gw, nr.Scope = net.IP(r.via.AsSlice()), netlink.SCOPE_UNIVERSE
		}
		if err := h.RouteAdd(nr); err != nil {
			return fmt.Errorf("route %s via %v dev %s in %s: %w", r.dst, r.via, dev, ns.Name, err)
		}
	}
	return nil
}

// AddAddr adds an address to a device of the namespace, e.g. a second node IP.
func (ns *NS) AddAddr(dev string, p netip.Prefix) error {
	return configure(ns, dev, []netip.Prefix{p}, nil)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
