package ipvs

import (
	"errors"
	"net/netip"
	"time"

	"github.com/svcproxy/svcproxy/model"
)

// Kernel is everything of the kernel the IPVS mode's applier touches
// besides iptables: IPVS, links and addresses, ipsets and sysctls. One is
// opened per sync in the calling thread's network namespace (as the
// iptables binaries run in it), so a test's sync inside a namespace
// programs that namespace. Every method is one kernel request (a netlink
// message and its answer, or one /proc/sys file), which is what a sync's
// KernelOps counts.
type Kernel interface {
	IPVS
	Links
	Sets
	Sysctls
	Close()
}

// IPVS is the kernel's IPVS table.
type IPVS interface {
	// VirtualServers lists every virtual server of the family, whoever
	// made it, without real servers; fwmark services are left out.
	VirtualServers(family model.Family) ([]VirtualServer, error)
	// RealServers lists a virtual server's real servers with their
	// connection counts. A missing virtual server is ErrNotFound.
	RealServers(vs VSKey) ([]RealStatus, error)
	// Table lists every virtual server of the family with its real
	// servers, in one request (the kernel's listing of its whole table):
	// what a full sync and the integrity check read, where a request per
	// virtual server would cost thousands.
	Table(family model.Family) (map[VSKey]Listed, error)
	AddVirtualServer(vs VirtualServer) error
	UpdateVirtualServer(vs VirtualServer) error
	DeleteVirtualServer(vs VSKey) error
	AddRealServer(vs VSKey, rs RealServer) error
	UpdateRealServer(vs VSKey, rs RealServer) error
	DeleteRealServer(vs VSKey, rs netip.AddrPort) error
	// SetTimeouts sets IPVS's connection timeouts; a zero field is left
	// as it is.
	SetTimeouts(t Timeouts) error
}

// Listed is a virtual server as Table lists it: its settings (Reals
// empty) and its real servers with their connections.
type Listed struct {
	VirtualServer
	Status []RealStatus
}

// Listing is a set as ListSets lists it, with its members.
type Listing struct {
	Set
	Entries []Entry
}

// Timeouts are IPVS's connection timeouts (--ipvs-tcp-timeout,
// --ipvs-tcpfin-timeout, --ipvs-udp-timeout).
type Timeouts struct {
	TCP, TCPFin, UDP time.Duration
}

// Links are the network interfaces and their addresses.
type Links interface {
	// EnsureDummy creates the dummy interface name, down, if it does not
	// exist; a kernel without the dummy driver is ErrNoDummy.
	EnsureDummy(name string) error
	// LinkAddrs lists the addresses of one family on a link; a missing
	// link has none.
	LinkAddrs(name string, family model.Family) ([]netip.Addr, error)
	// AddAddr binds a host address (/32 or /128) to a link; one already
	// bound is no error.
	AddAddr(name string, a netip.Addr) error
	// DelAddr unbinds an address; one not bound is no error.
	DelAddr(name string, a netip.Addr) error
	// HostAddrs lists the addresses of one family of every link but
	// exclude: the node's addresses, where node ports answer. Link-local
	// IPv6 addresses are left out.
	HostAddrs(family model.Family, exclude string) ([]netip.Addr, error)
	// LinkNames lists every link's name, sorted.
	LinkNames() ([]string, error)
	// DeleteLink deletes a link; a missing one is no error.
	DeleteLink(name string) error
}

// Sets are the kernel's ipsets.
type Sets interface {
	// ListSets lists every set of the family, whoever made it, with its
	// members: the kernel's dump answers both at once.
	ListSets(family model.Family) ([]Listing, error)
	// CreateSet creates a set; one that exists with the same type is no
	// error.
	CreateSet(s Set) error
	// SetEntries lists a set's members; a missing set is ErrNotFound.
	SetEntries(s Set) ([]Entry, error)
	// AddEntry adds a member; one already there is no error.
	AddEntry(s Set, e Entry) error
	// DelEntry removes a member; one not there is no error.
	DelEntry(s Set, e Entry) error
	// DestroySet destroys a set; a missing one is no error, one still
	// referenced by an iptables rule is.
	DestroySet(name string) error
}

// Sysctls are the kernel settings under /proc/sys of the namespace.
type Sysctls interface {
	// ReadSysctl reads a setting ("net/ipv4/vs/conntrack"), trimmed.
	ReadSysctl(name string) (string, error)
	WriteSysctl(name, value string) error
}

// Errors a Kernel returns that the applier acts on.
var (
	// ErrNotFound: the virtual server or set asked about does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNoDummy: the kernel cannot make dummy interfaces.
	ErrNoDummy = errors.New("the kernel has no dummy interface driver (CONFIG_DUMMY)")
)
