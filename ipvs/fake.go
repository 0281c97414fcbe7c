package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// FakeKernel is an in-memory Kernel of both families for tests without
// root (and without IPVS): virtual and real servers with connection
// counts, links with addresses, ipsets, sysctls. It checks what the
// kernel checks (a real server needs its virtual server, an entry its
// set), records every call, can refuse any call (Fault), and dumps its
// state in State's format.
type FakeKernel struct {
	// Calls lists every call, in order, as "AddRealServer TCP 10.96.0.1:80 10.244.0.1:8080".
	Calls []string
	// Fault, if set, is asked before each call; an error it returns is the
	// call's, and the call changes nothing.
	Fault func(call string) error
	// NoDummy makes EnsureDummy fail as a kernel without the driver does.
	NoDummy bool

	servers map[VSKey]*fakeServer
	links   map[string]map[netip.Addr]bool
	sets    map[string]Set
	entries map[string]map[Entry]bool
	sysctls map[string]string
}

type fakeServer struct {
	vs    VirtualServer
	reals map[netip.AddrPort]*RealStatus
}

// NewFakeKernel returns a kernel with a loopback link and IPVS's default
// settings.
func NewFakeKernel() *FakeKernel {
	return &FakeKernel{
		servers: map[VSKey]*fakeServer{},
		links:   map[string]map[netip.Addr]bool{"lo": {netip.MustParseAddr("127.0.0.1"): true, netip.IPv6Loopback(): true}},
		sets:    map[string]Set{},
		entries: map[string]map[Entry]bool{},
		sysctls: map[string]string{
			"net/ipv4/vs/conntrack": "0", "net/ipv4/vs/expire_nodest_conn": "0",
			"net/ipv4/vs/expire_quiescent_template": "0", "net/ipv4/vs/conn_reuse_mode": "1",
			"net/ipv4/conf/all/arp_ignore": "0", "net/ipv4/conf/all/arp_announce": "0",
		},
	}
}

// AddHostAddr gives the node an address on a link, as its network setup would.
func (k *FakeKernel) AddHostAddr(link string, a netip.Addr) {
	if k.links[link] == nil {
		k.links[link] = map[netip.Addr]bool{}
	}
	k.links[link][a] = true
}

// SetConnections sets a real server's connection counts, as traffic would.
func (k *FakeKernel) SetConnections(vs VSKey, rs netip.AddrPort, active, inactive int) {
	if s, ok := k.servers[vs]; ok {
		if r, ok := s.reals[rs]; ok {
			r.ActiveConns, r.InactiveConns = active, inactive
		}
	}
}

// Real returns a real server as the kernel holds it.
func (k *FakeKernel) Real(vs VSKey, rs netip.AddrPort) (RealStatus, bool) {
	if s, ok := k.servers[vs]; ok {
		if r, ok := s.reals[rs]; ok {
			return *r, true
		}
	}
	return RealStatus{}, false
}

// State returns what the kernel holds of one family as a State, sets and
// entries of every owner included.
func (k *FakeKernel) State(family model.Family) *State {
	s := NewState(family)
	for key, fs := range k.servers {
		if key.Family() != family {
			continue
		}
		vs := fs.vs
		vs.Reals = nil
		for _, r := range fs.reals {
			vs.Reals = append(vs.Reals, r.RealServer)
		}
		slices.SortFunc(vs.Reals, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
		s.VirtualServers[key] = &vs
	}
	for a := range k.links[DummyName] {
		if model.FamilyOf(a) == family {
			s.Addresses[a] = true
		}
	}
	for name, set := range k.sets {
		if set.Family != family {
			continue
		}
		s.Sets[name] = set
		for e := range k.entries[name] {
			s.Entries[SetEntry{name, e}] = true
		}
	}
	for _, name := range sortedKeys(k.sysctls, strings.Compare) {
		s.Sysctls = append(s.Sysctls, Sysctl{name, k.sysctls[name]})
	}
	return s
}

// HasLink reports whether a link exists.
func (k *FakeKernel) HasLink(name string) bool {
	_, ok := k.links[name]
	return ok
}

// call records a call and asks Fault about it.
func (k *FakeKernel) call(format string, a ...any) error {
	c := fmt.Sprintf(format, a...)
	k.Calls = append(k.Calls, c)
	if k.Fault != nil {
		return k.Fault(c)
	}
	return nil
}

// Close implements Kernel.
func (k *FakeKernel) Close() {}

// VirtualServers implements IPVS.
func (k *FakeKernel) VirtualServers(family model.Family) ([]VirtualServer, error) {
	if err := k.call("VirtualServers %s", family); err != nil {
		return nil, err
	}
	var out []VirtualServer
	for _, key := range sortedKeys(k.servers, VSKey.Compare) {
		if key.Family() == family {
			vs := k.servers[key].vs
			vs.Reals = nil
			out = append(out, vs)
		}
	}
	return out, nil
}

// RealServers implements IPVS.
func (k *FakeKernel) RealServers(vs VSKey) ([]RealStatus, error) {
	if err := k.call("RealServers %s", vs); err != nil {
		return nil, err
	}
	s, ok := k.servers[vs]
	if !ok {
		return nil, fmt.Errorf("virtual server %s: %w", vs, ErrNotFound)
	}
	var out []RealStatus
	for _, addr := range sortedKeys(s.reals, netip.AddrPort.Compare) {
		out = append(out, *s.reals[addr])
	}
	return out, nil
}

// Table implements IPVS.
func (k *FakeKernel) Table(family model.Family) (map[VSKey]Listed, error) {
	if err := k.call("Table %s", family); err != nil {
		return nil, err
	}
	out := map[VSKey]Listed{}
	for key, s := range k.servers {
		if key.Family() != family {
			continue
		}
		l := Listed{VirtualServer: s.vs}
		l.Reals = nil
		for _, addr := range sortedKeys(s.reals, netip.AddrPort.Compare) {
			l.Status = append(l.Status, *s.reals[addr])
		}
		out[key] = l
	}
	return out, nil
}

// AddVirtualServer implements IPVS.
func (k *FakeKernel) AddVirtualServer(vs VirtualServer) error {
	if err := k.call("AddVirtualServer %s %s %d", vs.VSKey, vs.Scheduler, vs.Persistence); err != nil {
		return err
	}
	if _, ok := k.servers[vs.VSKey]; ok {
		return fmt.Errorf("virtual server %s: file exists", vs.VSKey)
	}
	vs.Reals = nil
	k.servers[vs.VSKey] = &fakeServer{vs: vs, reals: map[netip.AddrPort]*RealStatus{}}
	return nil
}

// UpdateVirtualServer implements IPVS.
func (k *FakeKernel) UpdateVirtualServer(vs VirtualServer) error {
	if err := k.call("UpdateVirtualServer %s %s %d", vs.VSKey, vs.Scheduler, vs.Persistence); err != nil {
		return err
	}
	s, ok := k.servers[vs.VSKey]
	if !ok {
		return fmt.Errorf("virtual server %s: %w", vs.VSKey, ErrNotFound)
	}
	vs.Reals = nil
	s.vs = vs
	return nil
}

// DeleteVirtualServer implements IPVS.
func (k *FakeKernel) DeleteVirtualServer(vs VSKey) error {
	if err := k.call("DeleteVirtualServer %s", vs); err != nil {
		return err
	}
	if _, ok := k.servers[vs]; !ok {
		return fmt.Errorf("virtual server %s: %w", vs, ErrNotFound)
	}
	delete(k.servers, vs)
	return nil
}

// AddRealServer implements IPVS.
func (k *FakeKernel) AddRealServer(vs VSKey, rs RealServer) error {
	if err := k.call("AddRealServer %s %s weight %d", vs, rs.Addr, rs.Weight); err != nil {
		return err
	}
	s, ok := k.servers[vs]
	switch {
	case !ok:
		return fmt.Errorf("virtual server %s: %w", vs, ErrNotFound)
	case s.reals[rs.Addr] != nil:
		return fmt.Errorf("real server %s of %s: file exists", rs.Addr, vs)
	case model.FamilyOf(rs.Addr.Addr()) != vs.Family():
		return fmt.Errorf("real server %s of %s: address family mismatch", rs.Addr, vs)
	}
	s.reals[rs.Addr] = &RealStatus{RealServer: rs}
	return nil
}

// UpdateRealServer implements IPVS.
func (k *FakeKernel) UpdateRealServer(vs VSKey, rs RealServer) error {
	if err := k.call("UpdateRealServer %s %s weight %d", vs, rs.Addr, rs.Weight); err != nil {
		return err
	}
	r, err := k.real(vs, rs.Addr)
	if err != nil {
		return err
	}
	r.Weight = rs.Weight
	return nil
}

// DeleteRealServer implements IPVS.
func (k *FakeKernel) DeleteRealServer(vs VSKey, rs netip.AddrPort) error {
	if err := k.call("DeleteRealServer %s %s", vs, rs); err != nil {
		return err
	}
	if _, err := k.real(vs, rs); err != nil {
		return err
	}
	delete(k.servers[vs].reals, rs)
	return nil
}

func (k *FakeKernel) real(vs VSKey, rs netip.AddrPort) (*RealStatus, error) {
	s, ok := k.servers[vs]
	if !ok {
		return nil, fmt.Errorf("virtual server %s: %w", vs, ErrNotFound)
	}
	r, ok := s.reals[rs]
	if !ok {
		return nil, fmt.Errorf("real server %s of %s: %w", rs, vs, ErrNotFound)
	}
	return r, nil
}

// SetTimeouts implements IPVS.
func (k *FakeKernel) SetTimeouts(t Timeouts) error {
	return k.call("SetTimeouts tcp %v tcpfin %v udp %v", t.TCP, t.TCPFin, t.UDP)
}

// EnsureDummy implements Links.
func (k *FakeKernel) EnsureDummy(name string) error {
	if err := k.call("EnsureDummy %s", name); err != nil {
		return err
	}
	if k.NoDummy {
		return fmt.Errorf("creating %s: %w", name, ErrNoDummy)
	}
	if k.links[name] == nil {
		k.links[name] = map[netip.Addr]bool{}
	}
	return nil
}

// LinkAddrs implements Links.
func (k *FakeKernel) LinkAddrs(name string, family model.Family) ([]netip.Addr, error) {
	if err := k.call("LinkAddrs %s %s", name, family); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range sortedKeys(k.links[name], netip.Addr.Compare) {
		if model.FamilyOf(a) == family && !a.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out, nil
}

// AddAddr implements Links.
func (k *FakeKernel) AddAddr(name string, a netip.Addr) error {
	if err := k.call("AddAddr %s %s", name, a); err != nil {
		return err
	}
	if k.links[name] == nil {
		return fmt.Errorf("link %s: no such device", name)
	}
	k.links[name][a] = true
	return nil
}

// DelAddr implements Links.
func (k *FakeKernel) DelAddr(name string, a netip.Addr) error {
	if err := k.call("DelAddr %s %s", name, a); err != nil {
		return err
	}
	delete(k.links[name], a)
	return nil
}

// HostAddrs implements Links.
func (k *FakeKernel) HostAddrs(family model.Family, exclude string) ([]netip.Addr, error) {
	if err := k.call("HostAddrs %s", family); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for name, addrs := range k.links {
		if name == exclude {
			continue
		}
		for a := range addrs {
			if model.FamilyOf(a) == family && !a.IsLinkLocalUnicast() {
				out = append(out, a)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// LinkNames implements Links.
func (k *FakeKernel) LinkNames() ([]string, error) {
	if err := k.call("LinkNames"); err != nil {
		return nil, err
	}
	return sortedKeys(k.links, strings.Compare), nil
}

// DeleteLink implements Links.
func (k *FakeKernel) DeleteLink(name string) error {
	if err := k.call("DeleteLink %s", name); err != nil {
		return err
	}
	delete(k.links, name)
	return nil
}

// ListSets implements Sets.
func (k *FakeKernel) ListSets(family model.Family) ([]Listing, error) {
	if err := k.call("ListSets %s", family); err != nil {
		return nil, err
	}
	var out []Listing
	for _, name := range sortedKeys(k.sets, strings.Compare) {
		if k.sets[name].Family == family {
			out = append(out, Listing{Set: k.sets[name], Entries: sortedKeys(k.entries[name], Entry.Compare)})
		}
	}
	return out, nil
}

// CreateSet implements Sets.
func (k *FakeKernel) CreateSet(s Set) error {
	if err := k.call("CreateSet %s %s %s", s.Name, s.Type, s.Family); err != nil {
		return err
	}
	if old, ok := k.sets[s.Name]; ok {
		if old != s {
			return fmt.Errorf("set %s exists as %s %s", s.Name, old.Type, old.Family)
		}
		return nil
	}
	k.sets[s.Name] = s
	k.entries[s.Name] = map[Entry]bool{}
	return nil
}

// SetEntries implements Sets.
func (k *FakeKernel) SetEntries(s Set) ([]Entry, error) {
	if err := k.call("SetEntries %s", s.Name); err != nil {
		return nil, err
	}
	if _, ok := k.sets[s.Name]; !ok {
		return nil, fmt.Errorf("set %s: %w", s.Name, ErrNotFound)
	}
	out := sortedKeys(k.entries[s.Name], Entry.Compare)
	return out, nil
}

// AddEntry implements Sets.
func (k *FakeKernel) AddEntry(s Set, e Entry) error {
	if err := k.call("AddEntry %s %s", s.Name, e); err != nil {
		return err
	}
	if _, ok := k.sets[s.Name]; !ok {
		return fmt.Errorf("set %s: %w", s.Name, ErrNotFound)
	}
	k.entries[s.Name][e] = true
	return nil
}

// DelEntry implements Sets.
func (k *FakeKernel) DelEntry(s Set, e Entry) error {
	if err := k.call("DelEntry %s %s", s.Name, e); err != nil {
		return err
	}
	if _, ok := k.sets[s.Name]; !ok {
		return fmt.Errorf("set %s: %w", s.Name, ErrNotFound)
	}
	delete(k.entries[s.Name], e)
	return nil
}

// DestroySet implements Sets.
func (k *FakeKernel) DestroySet(name string) error {
	if err := k.call("DestroySet %s", name); err != nil {
		return err
	}
	delete(k.sets, name)
	delete(k.entries, name)
	return nil
}

// ReadSysctl implements Sysctls.
func (k *FakeKernel) ReadSysctl(name string) (string, error) {
	if err := k.call("ReadSysctl %s", name); err != nil {
		return "", err
	}
	v, ok := k.sysctls[name]
	if !ok {
		return "", fmt.Errorf("sysctl %s: no such file or directory", name)
	}
	return v, nil
}

// WriteSysctl implements Sysctls.
func (k *FakeKernel) WriteSysctl(name, value string) error {
	if err := k.call("WriteSysctl %s %s", name, value); err != nil {
		return err
	}
	if _, ok := k.sysctls[name]; !ok {
		return fmt.Errorf("sysctl %s: no such file or directory", name)
	}
	k.sysctls[name] = value
	return nil
}
