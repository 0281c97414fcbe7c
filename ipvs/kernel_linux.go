package ipvs

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/model"
)

// The real kernel: IPVS over generic netlink (github.com/moby/ipvs), links,
// addresses and ipsets over route and netfilter netlink
// (github.com/vishvananda/netlink), sysctls as files under /proc/sys.
//
// Errors, as the applier sees them:
//
//   - Add* of something that exists is an error: AddVirtualServer and
//     AddRealServer wrap the kernel's EEXIST (errors.Is(err, syscall.EEXIST)
//     and errors.Is(err, fs.ErrExist) hold). AddVirtualServer with a
//     scheduler the kernel cannot load fails with ENOENT (not ErrNotFound).
//   - Update* of something missing wraps ErrNotFound (and the kernel's ESRCH
//     for a missing virtual server, ENOENT for a missing real server).
//   - Delete* of something missing is no error: DeleteVirtualServer and
//     DeleteRealServer are idempotent (the kernel's ESRCH and ENOENT are
//     success), like DelAddr, DeleteLink, DelEntry and DestroySet.
//   - RealServers of a missing virtual server wraps ErrNotFound.
//   - SetEntries of a missing set wraps ErrNotFound (the kernel's ENOENT), and
//     so does AddEntry to a missing set.
//   - Every IPVS method of a kernel without IPVS fails with an error naming
//     it (never a panic, never a silent success).

// The kernel's IPVS constants (include/uapi/linux/ip_vs.h).
const (
	ipvsSvcPersistent = 0x1 // IP_VS_SVC_F_PERSISTENT
	ipvsConnMasq      = 0x0 // IP_VS_CONN_F_MASQ
	ipvsNetmask4      = 0xffffffff
	ipvsNetmask6      = 128
)

// kernel is a Kernel in the network namespace of the thread that opened
// it. Its netlink sockets stay in that namespace; /proc/sys, which follows
// the namespace of the thread that opens a file, is reached from a thread in
// that namespace (see inNS).
type kernel struct {
	nl *netlink.Handle
	// nf is a netfilter socket of its own, for the ipset requests netlink
	// cannot spell (see bitmapPortCmd); route a routing one, for the
	// address dumps read without netlink's parse (see addrDump).
	nf, route *nl.SocketHandle
	// strictDumps: route's address dumps can ask for one link's.
	strictDumps bool
	// ipvs is nil when the kernel had no IPVS when the Kernel was opened;
	// noIPVS then says why.
	ipvs   *libipvs.Handle
	noIPVS error
	// ns is the opening thread's network namespace, for /proc/sys; dev and
	// ino identify it.
	ns       netns.NsHandle
	dev, ino uint64
	// links are the links found by name: a Kernel lives for one sync, in
	// which binding ten thousand addresses must not cost as many lookups.
	links map[string]netlink.Link
}

// OpenKernel opens the kernel in the calling thread's network namespace: a
// caller that has setns'd its locked OS thread into a namespace gets that
// namespace, wherever the Kernel is used later. A kernel without IPVS is no
// error here (links, sets and sysctls work); its IPVS methods fail. The
// caller closes the Kernel. A Kernel is for one goroutine at a time:
// moby/ipvs drops the answers to another request on its socket.
//
// Opening costs, besides the sockets, one generic netlink request (is
// IPVS there?).
func OpenKernel() (Kernel, error) {
	// Every socket and the namespace handle from one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	k := &kernel{ns: -1}
	ok := false
	defer func() {
		if !ok {
			k.Close()
		}
	}()
	var err error
	if k.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("opening the network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(k.ns), &st); err != nil {
		return nil, fmt.Errorf("opening the network namespace: %w", err)
	}
	k.dev, k.ino = st.Dev, st.Ino
	// Both families explicitly: without them netlink also opens an XFRM
	// socket, which fails where that module is not loaded.
	if k.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_NETFILTER); err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	nf, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	k.nf = &nl.SocketHandle{Socket: nf}
	route, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	k.route = &nl.SocketHandle{Socket: route}
	// With strict checking (Linux 4.20 on) the kernel honours an address
	// dump's link index and sends that link's addresses alone; without it
	// the dump is filtered here.
	k.strictDumps = unix.SetsockoptInt(route.GetFd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1) == nil
	// moby/ipvs resolves IPVS's generic netlink family once per process and
	// never again; resolved while IPVS is missing, its requests would go to
	// family 0, which the kernel acknowledges without doing anything (and
	// GetConfig panics on the empty answer). So it is only ever started on a
	// kernel that has IPVS. (Unloading and reloading ip_vs while svcproxy
	// runs changes the family's number: restart svcproxy after that.)
	if err := ipvsFamily(); err != nil {
		k.noIPVS = fmt.Errorf("the kernel has no IPVS (module ip_vs): %w", err)
	} else if k.ipvs, err = libipvs.New(""); err != nil {
		return nil, fmt.Errorf("opening IPVS: %w", err)
	}
	ok = true
	return k, nil
}

// ipvsFamily asks generic netlink for IPVS's family: nil when the kernel
// has IPVS.
func ipvsFamily() error {
	_, err := netlink.GenlFamilyGet("IPVS")
	return err
}

func (k *kernel) Close() {
	if k.ipvs != nil {
		k.ipvs.Close()
		k.ipvs = nil
	}
	if k.nl != nil {
		k.nl.Close()
		k.nl = nil
	}
	for _, h := range []**nl.SocketHandle{&k.nf, &k.route} {
		if *h != nil {
			(*h).Close()
			*h = nil
		}
	}
	if k.ns >= 0 {
		_ = k.ns.Close()
		k.ns = -1
	}
}

// --- IPVS ---

func (k *kernel) handle() (*libipvs.Handle, error) {
	if k.ipvs == nil {
		if k.noIPVS != nil {
			return nil, k.noIPVS
		}
		return nil, errors.New("the kernel is closed")
	}
	return k.ipvs, nil
}

func addressFamily(f model.Family) uint16 {
	if f == model.IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func ipProto(p model.Protocol) (uint16, error) {
	switch p {
	case model.TCP:
		return unix.IPPROTO_TCP, nil
	case model.UDP:
		return unix.IPPROTO_UDP, nil
	case model.SCTP:
		return unix.IPPROTO_SCTP, nil
	}
	return 0, fmt.Errorf("unsupported protocol %s", p)
}

func modelProto(p uint16) (model.Protocol, bool) {
	switch p {
	case unix.IPPROTO_TCP:
		return model.TCP, true
	case unix.IPPROTO_UDP:
		return model.UDP, true
	case unix.IPPROTO_SCTP:
		return model.SCTP, true
	}
	return 0, false
}

// service is the key of a virtual server as moby/ipvs spells it.
func service(key VSKey) (*libipvs.Service, error) {
	if !key.Addr.IsValid() {
		return nil, fmt.Errorf("virtual server %s: invalid address", key)
	}
	proto, err := ipProto(key.Protocol)
	if err != nil {
		return nil, fmt.Errorf("virtual server %s: %w", key, err)
	}
	s := &libipvs.Service{
		Address:       net.IP(key.Addr.AsSlice()),
		Protocol:      proto,
		Port:          key.Port,
		AddressFamily: addressFamily(key.Family()),
		Netmask:       ipvsNetmask4,
	}
	if key.Family() == model.IPv6 {
		s.Netmask = ipvsNetmask6
	}
	return s, nil
}

// fullService is a virtual server with its settings, for adds and updates.
func fullService(vs VirtualServer) (*libipvs.Service, error) {
	s, err := service(vs.VSKey)
	if err != nil {
		return nil, err
	}
	s.SchedName = vs.Scheduler
	if vs.Persistence > 0 {
		s.Flags = ipvsSvcPersistent
		s.Timeout = vs.Persistence
	}
	return s, nil
}

// addrFromIP converts an address netlink handed out; af (AF_INET,
// AF_INET6, or 0 when unknown) says what it is, so that an IPv4 address
// given as 16 bytes comes out as IPv4.
func addrFromIP(ip net.IP, af uint16) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	if af == unix.AF_INET {
		a = a.Unmap()
		if !a.Is4() {
			return netip.Addr{}, false
		}
	}
	return a, true
}

func (k *kernel) VirtualServers(family model.Family) ([]VirtualServer, error) {
	h, err := k.handle()
	if err != nil {
		return nil, err
	}
	svcs, err := h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("listing virtual servers: %w", err)
	}
	af := addressFamily(family)
	var out []VirtualServer
	for _, s := range svcs {
		if s.FWMark != 0 || s.AddressFamily != af {
			continue
		}
		proto, ok := modelProto(s.Protocol)
		addr, aok := addrFromIP(s.Address, s.AddressFamily)
		if !ok || !aok {
			continue // nothing a VSKey can name (and nothing svcproxy made)
		}
		vs := VirtualServer{
			VSKey:     VSKey{Addr: addr, Protocol: proto, Port: s.Port},
			Scheduler: s.SchedName,
		}
		if s.Flags&ipvsSvcPersistent != 0 {
			vs.Persistence = s.Timeout
		}
		out = append(out, vs)
	}
	slices.SortFunc(out, func(a, b VirtualServer) int { return a.VSKey.Compare(b.VSKey) })
	return out, nil
}

// RealServers is one request (a dump of the virtual server's destinations)
// when the virtual server has real servers. The kernel answers that dump
// with nothing, not an error, for a missing virtual server, so an empty
// answer costs a second request (the virtual server itself) to tell "none"
// from ErrNotFound.
func (k *kernel) RealServers(key VSKey) ([]RealStatus, error) {
	h, err := k.handle()
	if err != nil {
		return nil, err
	}
	s, err := service(key)
	if err != nil {
		return nil, err
	}
	dests, err := h.GetDestinations(s)
	if err != nil {
		if isErrno(err, unix.ESRCH) {
			return nil, fmt.Errorf("real servers of %s: %w", key, notFound(err))
		}
		return nil, fmt.Errorf("real servers of %s: %w", key, err)
	}
	if len(dests) == 0 {
		if _, err := h.GetService(s); err != nil {
			if isErrno(err, unix.ESRCH, unix.ENOENT) {
				return nil, fmt.Errorf("real servers of %s: %w", key, notFound(err))
			}
			return nil, fmt.Errorf("real servers of %s: %w", key, err)
		}
		return nil, nil
	}
	out := make([]RealStatus, 0, len(dests))
	for _, d := range dests {
		addr, ok := addrFromIP(d.Address, d.AddressFamily)
		if !ok {
			continue
		}
		out = append(out, RealStatus{
			RealServer:    RealServer{Addr: netip.AddrPortFrom(addr, d.Port), Weight: d.Weight},
			ActiveConns:   d.ActiveConnections,
			InactiveConns: d.InactiveConnections,
		})
	}
	slices.SortFunc(out, func(a, b RealStatus) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// AddVirtualServer fails, wrapping EEXIST, when the virtual server exists.
func (k *kernel) AddVirtualServer(vs VirtualServer) error {
	h, err := k.handle()
	if err != nil {
		return err
	}
	s, err := fullService(vs)
	if err != nil {
		return err
	}
	if err := h.NewService(s); err != nil {
		if isErrno(err, unix.ENOENT) {
			return fmt.Errorf("adding virtual server %s: scheduler %q not available: %w", vs.VSKey, vs.Scheduler, err)
		}
		return fmt.Errorf("adding virtual server %s: %w", vs.VSKey, err)
	}
	return nil
}

// UpdateVirtualServer sets the scheduler and persistence of an existing
// virtual server; a missing one is ErrNotFound.
func (k *kernel) UpdateVirtualServer(vs VirtualServer) error {
	h, err := k.handle()
	if err != nil {
		return err
	}
	s, err := fullService(vs)
	if err != nil {
		return err
	}
	if err := h.UpdateService(s); err != nil {
		switch {
		case isErrno(err, unix.ESRCH):
			return fmt.Errorf("updating virtual server %s: %w", vs.VSKey, notFound(err))
		case isErrno(err, unix.ENOENT):
			return fmt.Errorf("updating virtual server %s: scheduler %q not available: %w", vs.VSKey, vs.Scheduler, err)
		}
		return fmt.Errorf("updating virtual server %s: %w", vs.VSKey, err)
	}
	return nil
}

// DeleteVirtualServer is idempotent: a missing virtual server is no error.
func (k *kernel) DeleteVirtualServer(key VSKey) error {
	h, err := k.handle()
	if err != nil {
		return err
	}
	s, err := service(key)
	if err != nil {
		return err
	}
	if err := h.DelService(s); err != nil && !isErrno(err, unix.ESRCH) {
		return fmt.Errorf("deleting virtual server %s: %w", key, err)
	}
	return nil
}

func destination(rs RealServer) (*libipvs.Destination, error) {
	if !rs.Addr.IsValid() {
		return nil, fmt.Errorf("real server %s: invalid address", rs.Addr)
	}
	// The kernel takes any int, but moby/ipvs reads weights back as 16
	// bits: a larger one would never read back as written.
	if rs.Weight < 0 || rs.Weight > math.MaxUint16 {
		return nil, fmt.Errorf("real server %s: weight %d out of range 0-%d", rs.Addr, rs.Weight, math.MaxUint16)
	}
	return &libipvs.Destination{
		Address:         net.IP(rs.Addr.Addr().AsSlice()),
		Port:            rs.Addr.Port(),
		Weight:          rs.Weight,
		ConnectionFlags: ipvsConnMasq,
		AddressFamily:   addressFamily(model.FamilyOf(rs.Addr.Addr())),
	}, nil
}

// AddRealServer adds a masqueraded real server; one that exists fails,
// wrapping EEXIST; a missing virtual server wraps ErrNotFound (ESRCH).
func (k *kernel) AddRealServer(key VSKey, rs RealServer) error {
	return k.destCmd("adding", key, rs, (*libipvs.Handle).NewDestination, unix.ESRCH)
}

// UpdateRealServer sets a real server's weight; a missing real server or
// virtual server wraps ErrNotFound (ENOENT, ESRCH).
func (k *kernel) UpdateRealServer(key VSKey, rs RealServer) error {
	return k.destCmd("updating", key, rs, (*libipvs.Handle).UpdateDestination, unix.ESRCH, unix.ENOENT)
}

// DeleteRealServer is idempotent: a missing real server, or a missing
// virtual server, is no error.
func (k *kernel) DeleteRealServer(key VSKey, addr netip.AddrPort) error {
	h, err := k.handle()
	if err != nil {
		return err
	}
	s, err := service(key)
	if err != nil {
		return err
	}
	d, err := destination(RealServer{Addr: addr})
	if err != nil {
		return err
	}
	if err := h.DelDestination(s, d); err != nil && !isErrno(err, unix.ESRCH, unix.ENOENT) {
		return fmt.Errorf("deleting real server %s of %s: %w", addr, key, err)
	}
	return nil
}

func (k *kernel) destCmd(verb string, key VSKey, rs RealServer, cmd func(*libipvs.Handle, *libipvs.Service, *libipvs.Destination) error, missing ...unix.Errno) error {
	h, err := k.handle()
	if err != nil {
		return err
	}
	s, err := service(key)
	if err != nil {
		return err
	}
	d, err := destination(rs)
	if err != nil {
		return err
	}
	if err := cmd(h, s, d); err != nil {
		if isErrno(err, missing...) {
			err = notFound(err)
		}
		return fmt.Errorf("%s real server %s of %s: %w", verb, rs.Addr, key, err)
	}
	return nil
}

// SetTimeouts is one request; the kernel itself leaves a timeout given as 0
// unchanged, so nothing needs reading first. A timeout is rounded up to
// whole seconds. All three zero sends nothing.
func (k *kernel) SetTimeouts(t Timeouts) error {
	h, err := k.handle()
	if err != nil {
		return err
	}
	if t.TCP < 0 || t.TCPFin < 0 || t.UDP < 0 {
		return fmt.Errorf("negative IPVS timeout in %+v", t)
	}
	if t == (Timeouts{}) {
		return nil
	}
	c := &libipvs.Config{TimeoutTCP: ceilSecond(t.TCP), TimeoutTCPFin: ceilSecond(t.TCPFin), TimeoutUDP: ceilSecond(t.UDP)}
	if err := h.SetConfig(c); err != nil {
		return fmt.Errorf("setting IPVS timeouts: %w", err)
	}
	return nil
}

func ceilSecond(d time.Duration) time.Duration {
	if r := d % time.Second; r != 0 {
		d += time.Second - r
	}
	return d
}

// isErrno reports whether err is one of the errnos.
func isErrno(err error, errnos ...unix.Errno) bool {
	var e syscall.Errno
	return errors.As(err, &e) && slices.Contains(errnos, e)
}

// notFound wraps a kernel's error so that errors.Is finds both ErrNotFound
// and the errno.
func notFound(err error) error { return fmt.Errorf("%w (%w)", ErrNotFound, err) }

// --- Links ---

// EnsureDummy is one request: creating the link, where EEXIST is success
// (whatever the existing link's kind). The link is created down. A kernel
// that does not know the "dummy" kind answers EOPNOTSUPP: ErrNoDummy.
func (k *kernel) EnsureDummy(name string) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	err := k.nl.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		return nil
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("creating %s: %w (%w)", name, ErrNoDummy, err)
	}
	return fmt.Errorf("creating dummy interface %s: %w", name, err)
}

// link finds a link by name (one request, the first time in this
// Kernel); nil, nil when it does not exist.
func (k *kernel) link(name string) (netlink.Link, error) {
	if l, ok := k.links[name]; ok {
		return l, nil
	}
	l, err := k.nl.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) || isErrno(err, unix.ENODEV) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding link %s: %w", name, err)
	}
	if k.links == nil {
		k.links = map[string]netlink.Link{}
	}
	k.links[name] = l
	return l, nil
}

func nlFamily(f model.Family) int {
	if f == model.IPv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// addrDump dumps the addresses of one family and returns, sorted and
// without duplicates or IPv6 link-local addresses, those of the links
// keep admits. It reads each message's link index before anything else,
// and parses only the addresses it keeps: netlink's own AddrList builds a
// whole Addr for every address of the namespace, and kube-ipvs0 holds one
// per service, which HostAddrs skips. At 10,000 services that parse was
// half of a one-endpoint sync's CPU. A dump the kernel interrupted
// because addresses changed meanwhile is retried.
//
// A positive only asks for that link's addresses; keep still filters.
func (k *kernel) addrDump(family model.Family, only int, keep func(linkIndex int) bool) ([]netip.Addr, error) {
	var err error
	for range 3 {
		var out []netip.Addr
		req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
		msg := nl.NewIfAddrmsg(nlFamily(family))
		if only > 0 && k.strictDumps {
			msg.Index = uint32(only)
		}
		req.AddData(msg)
		req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: k.route}
		var parseErr error
		err = req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWADDR, func(m []byte) bool {
			if len(m) < unix.SizeofIfAddrmsg {
				return true
			}
			msg := nl.DeserializeIfAddrmsg(m)
			if int(msg.Family) != nlFamily(family) || !keep(int(msg.Index)) {
				return true
			}
			a, ok, perr := ifaddr(m[unix.SizeofIfAddrmsg:])
			if perr != nil {
				parseErr = perr
				return false
			}
			if ok && model.FamilyOf(a) == family && !(family == model.IPv6 && a.IsLinkLocalUnicast()) {
				out = append(out, a)
			}
			return true
		})
		if err == nil && parseErr != nil {
			err = parseErr
		}
		if err == nil {
			slices.SortFunc(out, netip.Addr.Compare)
			return slices.Compact(out), nil
		}
		if only > 0 && isErrno(err, unix.ENODEV) {
			return nil, nil // the link went (a pod's, say) since it was found
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("listing %s addresses: %w", family, err)
}

// ifaddr reads an address message's attributes: the local address (IPv4
// sends it as IFA_LOCAL, and IFA_ADDRESS is then the peer's), or else
// IFA_ADDRESS (IPv6 sends only that).
func ifaddr(attrs []byte) (netip.Addr, bool, error) {
	list, err := nl.ParseRouteAttr(attrs)
	if err != nil {
		return netip.Addr{}, false, err
	}
	var local, address []byte
	for _, a := range list {
		switch a.Attr.Type {
		case unix.IFA_LOCAL:
			local = a.Value
		case unix.IFA_ADDRESS:
			address = a.Value
		}
	}
	if local == nil {
		local = address
	}
	a, ok := netip.AddrFromSlice(local)
	return a, ok, nil
}

// LinkAddrs is the address dump, after the link by name (the first time
// in this Kernel). IPv6 link-local addresses are left out, as in
// HostAddrs: svcproxy never binds one and should not delete one the kernel
// made.
func (k *kernel) LinkAddrs(name string, family model.Family) ([]netip.Addr, error) {
	l, err := k.link(name)
	if err != nil || l == nil {
		return nil, err
	}
	index := l.Attrs().Index
	addrs, err := k.addrDump(family, index, func(i int) bool { return i == index })
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return addrs, nil
}

func hostPrefix(a netip.Addr) *netlink.Addr {
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
	if a.Is6() {
		// Usable at once: no duplicate address detection.
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

// AddAddr is one request, after the link by name (the first time); an address
// already bound (EEXIST) is no error. A missing link is an error.
func (k *kernel) AddAddr(name string, a netip.Addr) error {
	if !a.IsValid() || a.Is4In6() {
		return fmt.Errorf("binding %s to %s: not an IPv4 or IPv6 host address", a, name)
	}
	a = a.WithZone("")
	l, err := k.link(name)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("binding %s to %s: no such link", a, name)
	}
	if err := k.nl.AddrAdd(l, hostPrefix(a)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("binding %s to %s: %w", a, name, err)
	}
	return nil
}

// DelAddr is one request, after the link by name (the first time); an address not
// bound (EADDRNOTAVAIL) or a missing link is no error. It unbinds the /32
// or /128 AddAddr binds: the kernel matches the prefix length too.
func (k *kernel) DelAddr(name string, a netip.Addr) error {
	if !a.IsValid() {
		return nil
	}
	a = a.WithZone("")
	l, err := k.link(name)
	if err != nil || l == nil {
		return err
	}
	if err := k.nl.AddrDel(l, hostPrefix(a)); err != nil && !isErrno(err, unix.EADDRNOTAVAIL, unix.ENODEV) {
		return fmt.Errorf("unbinding %s from %s: %w", a, name, err)
	}
	return nil
}

// HostAddrs is the address dump, plus a request finding exclude by name
// when one is given (IPv6 addresses carry no link name). Loopback
// addresses are kept; IPv6 link-local ones are left out. The list is sorted
// and has each address once.
func (k *kernel) HostAddrs(family model.Family, exclude string) ([]netip.Addr, error) {
	skip := 0
	if exclude != "" {
		l, err := k.link(exclude)
		if err != nil {
			return nil, err
		}
		if l != nil {
			skip = l.Attrs().Index
		}
	}
	return k.addrDump(family, 0, func(i int) bool { return skip == 0 || i != skip })
}

// LinkNames is one dump of the links, which it also remembers for the
// requests after it that name one.
func (k *kernel) LinkNames() ([]string, error) {
	links, err := k.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	if k.links == nil {
		k.links = map[string]netlink.Link{}
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		k.links[l.Attrs().Name] = l
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names, nil
}

// DeleteLink is two requests (the link by name, its deletion); a missing
// link is no error.
func (k *kernel) DeleteLink(name string) error {
	l, err := k.link(name)
	if err != nil || l == nil {
		return err
	}
	delete(k.links, name)
	if err := k.nl.LinkDel(l); err != nil && !isErrno(err, unix.ENODEV) {
		return fmt.Errorf("deleting link %s: %w", name, err)
	}
	return nil
}

// --- Sets ---

// ipset errors (include/uapi/linux/netfilter/ipset/ip_set.h) and the
// range of svcproxy's bitmap:port sets.
const (
	ipsetErrBusy  = nl.IPSET_ERR_BUSY  // 4100: destroying a set still referenced
	ipsetErrExist = nl.IPSET_ERR_EXIST // 4103: the entry is already added (add) / not added (del)

	bitmapPortFrom, bitmapPortTo = 0, 65535
)

// ipsetErrno reports whether err is the ipset error code (netlink hands
// the kernel's codes from 4096 up as nl.IPSetError, lower ones as
// syscall.Errno).
func ipsetErrno(err error, code int) bool {
	var ie nl.IPSetError
	if errors.As(err, &ie) {
		return int(ie) == code
	}
	var e syscall.Errno
	return errors.As(err, &e) && int(e) == code
}

// ipsetCall runs one of netlink's ipset functions. Those assert that every
// error the netlink layer returns is a syscall.Errno and panic on any other
// (an interrupted dump, a reply from a wrong sender): that panic is made an
// error here rather than the end of the proxy.
func ipsetCall(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("netlink ipset request failed: %v", r)
		}
	}()
	return f()
}

func setFamily(family uint8) (model.Family, bool) {
	switch family {
	case unix.AF_INET:
		return model.IPv4, true
	case unix.AF_INET6:
		return model.IPv6, true
	}
	return 0, false
}

// ListSets is one request: a dump of every set with its members. The
// kernel gives bitmap:port sets (and other family-less types such as
// list:set) no family: they are reported under both families, with Family
// set to the family asked for; svcproxy's set names carry their family,
// so the caller tells them apart by name.
func (k *kernel) ListSets(family model.Family) ([]Listing, error) {
	var all []netlink.IPSetResult
	err := ipsetCall(func() (err error) {
		all, err = k.nl.IpsetListAll()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing ipsets: %w", err)
	}
	// A big set comes in several messages; only the first names its type
	// and family.
	byName := map[string]*Listing{}
	var order []string
	for _, r := range all {
		l := byName[r.SetName]
		if l == nil {
			if r.TypeName == "" {
				continue
			}
			f, ok := setFamily(r.Family)
			if ok && f != family {
				byName[r.SetName] = &Listing{} // another family's: skipped
				continue
			}
			l = &Listing{Set: Set{Name: r.SetName, Type: SetType(r.TypeName), Family: family}}
			byName[r.SetName] = l
			order = append(order, r.SetName)
		}
		if l.Name == "" {
			continue
		}
		for _, e := range r.Entries {
			if entry, ok := parseEntry(l.Type, addressFamily(family), e); ok {
				l.Entries = append(l.Entries, entry)
			}
		}
	}
	out := make([]Listing, 0, len(order))
	for _, name := range order {
		l := *byName[name]
		slices.SortFunc(l.Entries, Entry.Compare)
		l.Entries = slices.Compact(l.Entries)
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Listing) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// CreateSet is one request, sent without NLM_F_EXCL (ipset's -exist): the
// kernel then accepts a set of the same name, type and options as success,
// and refuses one of another type or other options (such as one made with
// counters or comments) with EEXIST. Whether it compares the family of an
// existing hash set depends on the kernel: Debian's 6.1 refuses a set of
// the same name and type in the other family (EEXIST), this machine's 6.18
// accepts it as existing. svcproxy's set names carry their family.
func (k *kernel) CreateSet(s Set) error {
	opts := netlink.IpsetCreateOptions{Replace: true}
	switch s.Type {
	case HashIP, HashIPPort, HashIPPortNet:
		opts.Family = uint8(addressFamily(s.Family))
	case BitmapPort:
		opts.PortFrom, opts.PortTo = bitmapPortFrom, bitmapPortTo
	default:
		return fmt.Errorf("creating set %s: unsupported type %s", s.Name, s.Type)
	}
	err := ipsetCall(func() error { return k.nl.IpsetCreate(s.Name, string(s.Type), opts) })
	if err != nil {
		if isErrno(err, unix.EEXIST) {
			return fmt.Errorf("creating set %s (%s %s): a set of that name exists with another type or options: %w", s.Name, s.Type, s.Family, err)
		}
		return fmt.Errorf("creating set %s (%s %s): %w", s.Name, s.Type, s.Family, err)
	}
	return nil
}

// SetEntries is one request (a listing of the set); a missing set wraps
// ErrNotFound. Members are parsed by the kernel's type of the set; members
// no Entry can spell (another protocol than TCP, UDP or SCTP) are left out.
func (k *kernel) SetEntries(s Set) ([]Entry, error) {
	var r *netlink.IPSetResult
	err := ipsetCall(func() (err error) {
		r, err = k.nl.IpsetList(s.Name)
		return err
	})
	if err != nil {
		if isErrno(err, unix.ENOENT) {
			return nil, fmt.Errorf("listing set %s: %w", s.Name, notFound(err))
		}
		return nil, fmt.Errorf("listing set %s: %w", s.Name, err)
	}
	typ := s.Type
	if r.TypeName != "" {
		typ = SetType(r.TypeName)
	}
	af := uint16(r.Family)
	out := make([]Entry, 0, len(r.Entries))
	for _, e := range r.Entries {
		if entry, ok := parseEntry(typ, af, e); ok {
			out = append(out, entry)
		}
	}
	slices.SortFunc(out, Entry.Compare)
	return slices.Compact(out), nil
}

func parseEntry(typ SetType, af uint16, e netlink.IPSetEntry) (Entry, bool) {
	var out Entry
	if typ != BitmapPort {
		a, ok := addrFromIP(e.IP, af)
		if !ok {
			return Entry{}, false
		}
		out.Addr = a
	}
	switch typ {
	case HashIP:
		return out, true
	case HashIPPort, HashIPPortNet:
		if e.Port == nil || e.Protocol == nil {
			return Entry{}, false
		}
		p, ok := modelProto(uint16(*e.Protocol))
		if !ok {
			return Entry{}, false
		}
		out.Protocol, out.Port = p, *e.Port
		if typ == HashIPPort {
			return out, true
		}
		a2, ok := addrFromIP(e.IP2, af)
		if !ok || int(e.CIDR2) > a2.BitLen() {
			return Entry{}, false
		}
		out.Net = netip.PrefixFrom(a2, int(e.CIDR2)).Masked()
		return out, true
	case BitmapPort:
		if e.Port == nil {
			return Entry{}, false
		}
		out.Port = *e.Port
		return out, true
	}
	return Entry{}, false
}

// ipsetEntry spells an Entry for netlink by the set's type.
func ipsetEntry(s Set, e Entry) (*netlink.IPSetEntry, error) {
	var out netlink.IPSetEntry
	needAddr := func() error {
		if !e.Addr.IsValid() {
			return fmt.Errorf("set %s (%s): entry %s has no address", s.Name, s.Type, e)
		}
		out.IP = net.IP(e.Addr.AsSlice())
		return nil
	}
	needPort := func() error {
		p, err := ipProto(e.Protocol)
		if err != nil {
			return fmt.Errorf("set %s (%s): entry %s: %w", s.Name, s.Type, e, err)
		}
		proto, port := uint8(p), e.Port
		out.Protocol, out.Port = &proto, &port
		return nil
	}
	switch s.Type {
	case HashIP:
		if err := needAddr(); err != nil {
			return nil, err
		}
	case HashIPPort:
		if err := errors.Join(needAddr(), needPort()); err != nil {
			return nil, err
		}
	case HashIPPortNet:
		if err := errors.Join(needAddr(), needPort()); err != nil {
			return nil, err
		}
		if !e.Net.IsValid() {
			return nil, fmt.Errorf("set %s (%s): entry %s has no net", s.Name, s.Type, e)
		}
		n := e.Net.Masked()
		out.IP2, out.CIDR2 = net.IP(n.Addr().AsSlice()), uint8(n.Bits())
	case BitmapPort:
		port := e.Port
		out.Port = &port
	default:
		return nil, fmt.Errorf("set %s: unsupported type %s", s.Name, s.Type)
	}
	return &out, nil
}

// AddEntry is one request; an entry already there (IPSET_ERR_EXIST) is no
// error, a missing set wraps ErrNotFound.
func (k *kernel) AddEntry(s Set, e Entry) error {
	entry, err := ipsetEntry(s, e)
	if err != nil {
		return err
	}
	if s.Type == BitmapPort {
		err = k.bitmapPortCmd(nl.IPSET_CMD_ADD, s.Name, e.Port)
	} else {
		err = ipsetCall(func() error { return k.nl.IpsetAdd(s.Name, entry) })
	}
	switch {
	case err == nil, ipsetErrno(err, ipsetErrExist):
		return nil
	case isErrno(err, unix.ENOENT):
		return fmt.Errorf("adding %s to set %s: %w", e, s.Name, notFound(err))
	}
	return fmt.Errorf("adding %s to set %s: %w", e, s.Name, err)
}

// DelEntry is one request; an entry not there (IPSET_ERR_EXIST, the same
// code as for an add of one that is) or a missing set (ENOENT) is no error.
func (k *kernel) DelEntry(s Set, e Entry) error {
	entry, err := ipsetEntry(s, e)
	if err != nil {
		return err
	}
	if s.Type == BitmapPort {
		err = k.bitmapPortCmd(nl.IPSET_CMD_DEL, s.Name, e.Port)
	} else {
		err = ipsetCall(func() error { return k.nl.IpsetDel(s.Name, entry) })
	}
	if err == nil || ipsetErrno(err, ipsetErrExist) || isErrno(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("deleting %s from set %s: %w", e, s.Name, err)
}

// bitmapPortCmd adds or deletes a member of a bitmap:port set, spelling
// the request itself on the Kernel's own netfilter socket: netlink's
// IpsetAdd and IpsetDel always send a protocol with a port, and the
// kernel's bitmap:port, which knows no protocol, refuses the whole request
// (IPSET_ERR_PROTOCOL). It is sent, like the rest, with NLM_F_EXCL.
func (k *kernel) bitmapPortCmd(cmd int, set string, port uint16) error {
	if k.nf == nil {
		return errors.New("the kernel is closed")
	}
	req := nl.NewNetlinkRequest(cmd|(unix.NFNL_SUBSYS_IPSET<<8), nl.GetIpsetFlags(cmd)|unix.NLM_F_EXCL)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: k.nf}
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_NETLINK), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)))
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PORT|int(nl.NLA_F_NET_BYTEORDER), nl.BEUint16Attr(port)))
	data.AddChild(&nl.Uint32Attribute{Type: nl.IPSET_ATTR_LINENO | nl.NLA_F_NET_BYTEORDER, Value: 0})
	req.AddData(data)
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	var e syscall.Errno
	if errors.As(err, &e) && int(e) >= nl.IPSET_ERR_PRIVATE {
		err = nl.IPSetError(e)
	}
	return err
}

// DestroySet is one request; a missing set is no error (kernels since 5.x
// answer 0 themselves to a destroy without NLM_F_EXCL, as netlink sends
// it; older ones ENOENT), one still referenced by a rule fails
// (IPSET_ERR_BUSY).
func (k *kernel) DestroySet(name string) error {
	err := ipsetCall(func() error { return k.nl.IpsetDestroy(name) })
	switch {
	case err == nil, isErrno(err, unix.ENOENT):
		return nil
	case ipsetErrno(err, ipsetErrBusy):
		return fmt.Errorf("destroying set %s: it is still in use: %w", name, err)
	}
	return fmt.Errorf("destroying set %s: %w", name, err)
}

// --- Sysctls ---

func sysctlPath(name string) (string, error) {
	clean := filepath.Clean("/" + name)
	if name == "" || strings.HasPrefix(name, "/") || clean != "/"+name || strings.Contains(name, "..") {
		return "", fmt.Errorf("invalid sysctl name %q", name)
	}
	return "/proc/sys" + clean, nil
}

// inNS runs f on a thread in the Kernel's network namespace: the calling
// thread when it is in it (the usual case), else a fresh thread entered
// into it and thrown away afterwards.
func (k *kernel) inNS(f func() error) error {
	if k.ns < 0 {
		return errors.New("the kernel is closed")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err == nil && st.Dev == k.dev && st.Ino == k.ino {
		return f()
	}
	done := make(chan error, 1)
	go func() {
		// Locked and never unlocked: the runtime ends the thread with the
		// goroutine, so no other goroutine runs in the namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(k.ns), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("entering the network namespace: %w", err)
			return
		}
		done <- f()
	}()
	return <-done
}

// ReadSysctl reads one file under /proc/sys of the Kernel's namespace.
func (k *kernel) ReadSysctl(name string) (string, error) {
	p, err := sysctlPath(name)
	if err != nil {
		return "", err
	}
	var b []byte
	err = k.inNS(func() (err error) {
		b, err = os.ReadFile(p)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// WriteSysctl writes one file under /proc/sys of the Kernel's namespace.
func (k *kernel) WriteSysctl(name, value string) error {
	p, err := sysctlPath(name)
	if err != nil {
		return err
	}
	err = k.inNS(func() error {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, werr := f.WriteString(value)
		return errors.Join(werr, f.Close())
	})
	if err != nil {
		return fmt.Errorf("writing sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// Table is one read of the namespace's /proc/net/ip_vs (through
// /proc/thread-self: /proc/net is the main thread's namespace), the
// kernel's listing of its whole table; netlink would take a request per
// virtual server. Persistence timeouts take one netlink dump more.
func (k *kernel) Table(family model.Family) (map[VSKey]Listed, error) {
	if k.noIPVS != nil {
		return nil, k.noIPVS
	}
	var table map[VSKey]Listed
	err := k.inNS(func() error {
		f, err := os.Open("/proc/thread-self/net/ip_vs")
		if err != nil {
			return err
		}
		defer f.Close()
		table, err = parseTable(f)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing the IPVS table: %w", err)
	}
	persistent := false
	for key, l := range table {
		if key.Family() != family {
			delete(table, key)
			continue
		}
		persistent = persistent || l.Persistence > 0
	}
	if persistent {
		if err := k.persistenceInSeconds(family, table); err != nil {
			return nil, err
		}
	}
	return table, nil
}

// persistenceInSeconds puts into a table read from /proc the persistence
// timeouts netlink reports: /proc/net/ip_vs lists them in jiffies, which
// depend on the kernel's HZ (a 10800 s timeout shows as 2700000 at HZ
// 250), while netlink reports seconds, as they were set. One dump of the
// family's virtual servers, only when some are persistent.
func (k *kernel) persistenceInSeconds(family model.Family, table map[VSKey]Listed) error {
	servers, err := k.VirtualServers(family)
	if err != nil {
		return fmt.Errorf("reading the IPVS persistence timeouts: %w", err)
	}
	for _, vs := range servers {
		if l, ok := table[vs.VSKey]; ok {
			l.Persistence = vs.Persistence
			table[vs.VSKey] = l
		}
	}
	return nil
}
