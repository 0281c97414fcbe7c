// Package ipvs is svcproxy's IPVS mode: a pure compiler from a
// model.NodeView to the kernel state that serves it (IPVS virtual and real
// servers, the service addresses bound to the dummy interface kube-ipvs0,
// ipsets, sysctls, and the few iptables rules the mode needs, written
// through package netfilter like the iptables mode's), and the applier that
// alone observes the kernel, diffs and changes only what differs, in an
// order that never makes a service address live with half its state.
package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// DummyName is the interface every service address is bound to, as in
// kube-proxy: bound there, an address is local, so its packets reach IPVS
// on the INPUT path; the interface stays down, so it never answers ARP.
const DummyName = "kube-ipvs0"

// VSKey identifies an IPVS virtual server: what a client connects to.
type VSKey struct {
	Addr     netip.Addr
	Protocol model.Protocol
	Port     uint16
}

func (k VSKey) String() string {
	return k.Protocol.String() + " " + netip.AddrPortFrom(k.Addr, k.Port).String()
}

// Compare orders keys by address, port, then protocol.
func (k VSKey) Compare(o VSKey) int {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Port, o.Port); c != 0 {
		return c
	}
	return cmp.Compare(k.Protocol, o.Protocol)
}

// Family is the key's IP family.
func (k VSKey) Family() model.Family { return model.FamilyOf(k.Addr) }

// VirtualServer is one IPVS virtual server and, in a desired state, the
// real servers it balances over.
type VirtualServer struct {
	VSKey
	Scheduler string
	// Persistence is the ClientIP affinity timeout in seconds; 0: none.
	Persistence uint32
	// Reals are sorted by address; empty in what the kernel reports of
	// virtual servers (their real servers are a dump of their own).
	Reals []RealServer
}

// RealServer is one destination of a virtual server: an endpoint, always
// reached by masquerading (IPVS NAT).
type RealServer struct {
	Addr   netip.AddrPort
	Weight int
}

// RealStatus is a real server as the kernel reports it, with its
// connections: what graceful termination waits on.
type RealStatus struct {
	RealServer
	ActiveConns, InactiveConns int
}

// Idle reports whether no connection uses the real server any more.
func (r RealStatus) Idle() bool { return r.ActiveConns == 0 && r.InactiveConns == 0 }

// SetType is an ipset type svcproxy uses.
type SetType string

// The ipset types of the IPVS mode's sets.
const (
	HashIP        SetType = "hash:ip"
	HashIPPort    SetType = "hash:ip,port"
	HashIPPortNet SetType = "hash:ip,port,net"
	BitmapPort    SetType = "bitmap:port"
)

// Set is an ipset, by name, type and family.
type Set struct {
	Name   string
	Type   SetType
	Family model.Family
}

// Entry is one member of a set. Which fields are set depends on the set's
// type: Addr (hash:ip), Addr, Protocol and Port (hash:ip,port), those and
// Net (hash:ip,port,net), Port alone (bitmap:port).
type Entry struct {
	Addr     netip.Addr
	Protocol model.Protocol
	Port     uint16
	Net      netip.Prefix
}

// String spells the entry as ipset does: "10.96.0.1", "10.96.0.1,tcp:80",
// "203.0.113.5,tcp:80,192.168.50.0/24", "30080".
func (e Entry) String() string {
	var parts []string
	if e.Addr.IsValid() {
		parts = append(parts, e.Addr.String())
	}
	switch {
	case e.Protocol != 0:
		parts = append(parts, e.Protocol.Lower()+":"+strconv.Itoa(int(e.Port)))
	case e.Port != 0:
		parts = append(parts, strconv.Itoa(int(e.Port)))
	}
	if e.Net.IsValid() {
		parts = append(parts, e.Net.String())
	}
	return strings.Join(parts, ",")
}

// Compare orders entries for deterministic output.
func (e Entry) Compare(o Entry) int {
	if c := e.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(e.Port, o.Port); c != 0 {
		return c
	}
	if c := cmp.Compare(e.Protocol, o.Protocol); c != 0 {
		return c
	}
	return e.Net.Addr().Compare(o.Net.Addr())*256 + cmp.Compare(e.Net.Bits(), o.Net.Bits())
}

// SetEntry is an entry of a named set: one kernel object.
type SetEntry struct {
	Set   string
	Entry Entry
}

func (s SetEntry) String() string { return s.Set + " " + s.Entry.String() }

// Sysctl is one kernel setting and the value svcproxy wants it at. Name is
// the path under /proc/sys ("net/ipv4/vs/conntrack").
type Sysctl struct {
	Name, Value string
}

// State is a whole IPVS-mode kernel state of one family, or a part of it:
// the unit the compiler produces and the fake kernel dumps.
type State struct {
	Family         model.Family
	VirtualServers map[VSKey]*VirtualServer
	// Addresses are bound to kube-ipvs0.
	Addresses map[netip.Addr]bool
	// Sets are the sets that exist; Entries their members.
	Sets    map[string]Set
	Entries map[SetEntry]bool
	Sysctls []Sysctl
}

// NewState returns an empty state.
func NewState(family model.Family) *State {
	return &State{
		Family:         family,
		VirtualServers: map[VSKey]*VirtualServer{},
		Addresses:      map[netip.Addr]bool{},
		Sets:           map[string]Set{},
		Entries:        map[SetEntry]bool{},
	}
}

// Empty reports whether the state holds nothing.
func (s *State) Empty() bool {
	return len(s.VirtualServers) == 0 && len(s.Addresses) == 0 && len(s.Sets) == 0 && len(s.Entries) == 0 && len(s.Sysctls) == 0
}

// Dump renders the state as text for golden tests and for people, in a
// stable order, much like ipvsadm -Ln and ipset list.
func (s *State) Dump() string {
	var b strings.Builder
	for _, k := range sortedKeys(s.VirtualServers, VSKey.Compare) {
		vs := s.VirtualServers[k]
		fmt.Fprintf(&b, "%s %s", k, vs.Scheduler)
		if vs.Persistence > 0 {
			fmt.Fprintf(&b, " persistent %d", vs.Persistence)
		}
		b.WriteString("\n")
		for _, r := range vs.Reals {
			fmt.Fprintf(&b, "  -> %s weight %d\n", r.Addr, r.Weight)
		}
	}
	for _, a := range sortedKeys(s.Addresses, netip.Addr.Compare) {
		fmt.Fprintf(&b, "address %s dev %s\n", a, DummyName)
	}
	for _, name := range sortedKeys(s.Sets, strings.Compare) {
		set := s.Sets[name]
		fmt.Fprintf(&b, "set %s %s %s\n", name, set.Type, set.Family)
		var entries []Entry
		for se := range s.Entries {
			if se.Set == name {
				entries = append(entries, se.Entry)
			}
		}
		slices.SortFunc(entries, Entry.Compare)
		for _, e := range entries {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	// Entries of sets the state does not declare (a partial state).
	var loose []SetEntry
	for se := range s.Entries {
		if _, ok := s.Sets[se.Set]; !ok {
			loose = append(loose, se)
		}
	}
	slices.SortFunc(loose, compareSetEntries)
	for _, se := range loose {
		fmt.Fprintf(&b, "entry %s\n", se)
	}
	for _, sc := range s.Sysctls {
		fmt.Fprintf(&b, "sysctl %s = %s\n", sc.Name, sc.Value)
	}
	return b.String()
}

func compareSetEntries(a, b SetEntry) int {
	if c := strings.Compare(a.Set, b.Set); c != 0 {
		return c
	}
	return a.Entry.Compare(b.Entry)
}

func sortedKeys[K comparable, V any](m map[K]V, compare func(a, b K) int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compare)
	return keys
}
