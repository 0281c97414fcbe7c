package conntrack

import (
	"context"

	"encoding/binary"
	"errors"
	"fmt"
	"go.uber.org/zap"
	"net/netip"

	"github.com/svcproxy/svcproxy/model"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Table is the kernel's conntrack table as the cleaner needs it.
type Table interface {
	// Delete removes every entry of the family that one of the flows
	// matches and returns how many it removed.
	Delete(family model.Family, flows []Flow) (int, error)
	// List returns the family's entries.
	List(family model.Family) ([]Entry, error)
}

// Clean deletes the flows that the sync from prev to next made stale. With
// no prev (the first sync after a start) it judges the entries the table
// holds against next instead: what an earlier run left pointing at gone
// endpoints is deleted, nothing else. It returns how many entries it deleted.
func Clean(table Table, prev, next *model.NodeView) (int, error) {
	flows, err := stale(table, prev, next)
	if err != nil {
		return 0, err
	}
	if len(flows) == 0 {
		return 0, nil
	}
	n, err := table.Delete(next.Family, flows)
	if err != nil {
		return n, fmt.Errorf("deleting stale %s conntrack entries: %w", next.Family, err)
	}
	return n, nil
}

func stale(table Table, prev, next *model.NodeView) ([]Flow, error) {
	if prev != nil {
		return Plan(prev, next), nil
	}
	entries, err := table.List(next.Family)
	if err != nil {
		return nil, fmt.Errorf("listing %s conntrack entries: %w", next.Family, err)
	}
	return PlanFromTable(next, entries), nil
}

// Kernel is the conntrack table of one network namespace, over netlink.
//
// It speaks ctnetlink itself rather than through netlink.ConntrackDeleteFilters:
// the library parses ports of TCP and UDP entries only, so an SCTP entry's
// ports would read as 0 and a stale SCTP flow could never be told from a
// healthy one to another port.
type Kernel struct {
	sock *nl.SocketHandle
}

// Open opens the conntrack table of a network namespace; netns.None() means
// the caller's own.
func Open(ns netns.NsHandle) (*Kernel, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink: %w", err)
	}
	return &Kernel{sock: &nl.SocketHandle{Socket: s}}, nil
}

// Close releases the netlink socket.
func (k *Kernel) Close() { k.sock.Close() }

// Delete implements Table: it dumps the family's table once and deletes
// each entry one of the flows matches. Entries that vanish meanwhile are
// not errors.
func (k *Kernel) Delete(family model.Family, flows []Flow) (int, error) {
	set := newFlowSet(flows)
	var stale [][]byte
	dumpErr := k.dump(family, func(e Entry, msg []byte) {
		if set.matches(e) {
			stale = append(stale, msg)
		}
	})
	if dumpErr != nil && !errors.Is(dumpErr, nl.ErrDumpInterrupted) {
		return 0, dumpErr
	}
	deleted := 0
	var errs []error
	for _, msg := range stale {
		// The dumped attributes, sent back, name the entry (tuple and id).
		req := k.request(nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK, family)
		req.AddRawData(msg)
		_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
		switch {
		case err == nil:
			deleted++
		case !errors.Is(err, unix.ENOENT):
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return deleted, fmt.Errorf("%d of %d stale entries not deleted: %w", len(errs), len(stale), errors.Join(errs...))
	}
	// An interrupted dump may have missed entries; say so, the next sync retries.
	return deleted, dumpErr
}

// List implements Table.
func (k *Kernel) List(family model.Family) ([]Entry, error) {
	var entries []Entry
	err := k.dump(family, func(e Entry, _ []byte) { entries = append(entries, e) })
	return entries, err
}

// dump calls f with each entry of the family's table and its raw attributes.
func (k *Kernel) dump(family model.Family, f func(Entry, []byte)) error {
	req := k.request(nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP, family)
	return req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		attrs := msg[nfgenmsgLen:]
		if e, err := parseEntry(attrs); err == nil {
			f(e, attrs)
		}
		return true
	})
}

const nfgenmsgLen = 4 // struct nfgenmsg, ahead of every ctnetlink message's attributes

func (k *Kernel) request(msgType, flags int, family model.Family) *nl.NetlinkRequest {
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{
			Len:   unix.SizeofNlMsghdr,
			Type:  uint16(unix.NFNL_SUBSYS_CTNETLINK<<8 | msgType),
			Flags: uint16(unix.NLM_F_REQUEST | flags),
		},
		Sockets: map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: k.sock},
	}
	req.AddData(&nl.Nfgenmsg{NfgenFamily: inetFamily(family), Version: nl.NFNETLINK_V0})
	return req
}

func inetFamily(f model.Family) uint8 {
	if f == model.IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// flowSet indexes flows by protocol and destination port, so a large table
// costs one map lookup per entry.
type flowSet map[flowKey][]Flow

type flowKey struct {
	protocol model.Protocol
	port     uint16
}

func newFlowSet(flows []Flow) flowSet {
	set := flowSet{}
	for _, f := range flows {
		k := flowKey{f.Protocol, f.DstPort}
		set[k] = append(set[k], f)
	}
	return set
}

func (s flowSet) matches(e Entry) bool {
	for _, f := range s[flowKey{e.Protocol, e.Orig.Dst.Port()}] {
		if f.Matches(e) {
			return true
		}
	}
	return false
}

// parseEntry reads the two tuples of a ctnetlink entry.
func parseEntry(attrs []byte) (Entry, error) {
	var e Entry
	list, err := nl.ParseRouteAttr(attrs)
	if err != nil {
		return e, err
	}
	var proto uint8
	for _, a := range list {
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case nl.CTA_TUPLE_ORIG:
			e.Orig, proto, err = parseTuple(a.Value)
		case nl.CTA_TUPLE_REPLY:
			e.Reply, _, err = parseTuple(a.Value)
		}
		if err != nil {
			return e, err
		}
	}
	e.Protocol = protocolOf(proto)
	return e, nil
}

func parseTuple(b []byte) (t Tuple, proto uint8, err error) {
	list, err := nl.ParseRouteAttr(b)
	if err != nil {
		return t, 0, err
	}
	var src, dst netip.Addr
	var sport, dport uint16
	for _, a := range list {
		inner, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return t, 0, err
		}
		for _, v := range inner {
			switch kind := a.Attr.Type & nl.NLA_TYPE_MASK; {
			case kind == nl.CTA_TUPLE_IP && (v.Attr.Type == nl.CTA_IP_V4_SRC || v.Attr.Type == nl.CTA_IP_V6_SRC):
				src, _ = netip.AddrFromSlice(v.Value)
			case kind == nl.CTA_TUPLE_IP && (v.Attr.Type == nl.CTA_IP_V4_DST || v.Attr.Type == nl.CTA_IP_V6_DST):
				dst, _ = netip.AddrFromSlice(v.Value)
			case kind == nl.CTA_TUPLE_PROTO && v.Attr.Type == nl.CTA_PROTO_NUM && len(v.Value) == 1:
				proto = v.Value[0]
			case kind == nl.CTA_TUPLE_PROTO && v.Attr.Type == nl.CTA_PROTO_SRC_PORT && len(v.Value) == 2:
				sport = binary.BigEndian.Uint16(v.Value)
			case kind == nl.CTA_TUPLE_PROTO && v.Attr.Type == nl.CTA_PROTO_DST_PORT && len(v.Value) == 2:
				dport = binary.BigEndian.Uint16(v.Value)
			}
		}
	}
	return Tuple{Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(dst, dport)}, proto, nil
}

// protocolOf maps an IP protocol number to the protocols services use.
func protocolOf(ipProto uint8) model.Protocol {
	switch ipProto {
	case unix.IPPROTO_TCP:
		return model.TCP
	case unix.IPPROTO_UDP:
		return model.UDP
	case unix.IPPROTO_SCTP:
		return model.SCTP
	}
	return 0
}

// Cleaner is a Table as the syncer's proxier.FlowCleaner: after each sync
// it deletes the flows that sync made stale, and logs how many.
type Cleaner struct {
	Table Table
	Log   *zap.Logger // nil: no logging
}

// Clean implements proxier.FlowCleaner.
func (c Cleaner) Clean(_ context.Context, prev, next *model.NodeView) (int, error) {
	n, err := Clean(c.Table, prev, next)
	if n > 0 && c.Log != nil {
		c.Log.Debug("deleted stale flows", zap.Stringer("family", next.Family), zap.Int("entries", n))
	}
	return n, err
}
