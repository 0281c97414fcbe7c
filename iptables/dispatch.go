package iptables

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// maxBucketEntries bounds the addresses one destination bucket dispatches.
//
// A flat SERVICES chain of 10k services costs every new connection a walk
// of 10k rules and every added service a rewrite of all of them. Buckets
// split the destinations by address prefix: SERVICES jumps to a bucket by
// "-d prefix", the bucket matches address and port. Buckets are the leaves
// of a binary split of the address space, cut wherever a prefix holds more
// than maxBucketEntries addresses, so at 10k ClusterIPs (allocated at
// random in the service range) a connection walks ~100 + ~100 rules and
// adding a service rewrites one bucket. A fixed /24 split would leave ~2
// services per bucket and thousands of chains in a /12 service range;
// this split adapts to however the addresses are spread, and depends only
// on the set of addresses, not on history, so a partial plan always lands
// on what a full plan would write.
const maxBucketEntries = 128

// dispatchEntry is one address of one port in a destination bucket.
type dispatchEntry struct {
	dst  netip.Addr
	kind addrKind
	port *netfilter.Port
}

func compareEntries(a, b dispatchEntry) int {
	if c := a.dst.Compare(b.dst); c != 0 {
		return c
	}
	if c := a.port.Name().Compare(b.port.Name()); c != 0 {
		return c
	}
	return cmp.Compare(a.kind, b.kind)
}

// destBucket is one leaf of the split: a chain for the addresses in prefix.
type destBucket struct {
	prefix  netip.Prefix
	chain   string
	entries []dispatchEntry // sorted
}

// buckets splits every dispatched address of the ports into buckets, in
// address order.
func (c *compiler) buckets(ports []netfilter.Port) []destBucket {
	entries := make([]dispatchEntry, 0, len(ports))
	for i := range ports {
		rp := &ports[i]
		if !rp.Present() {
			continue
		}
		eachDispatch(rp, func(kind addrKind, dst netip.Addr) {
			entries = append(entries, dispatchEntry{dst: dst, kind: kind, port: rp})
		})
	}
	if len(entries) == 0 {
		return nil
	}
	slices.SortFunc(entries, compareEntries)
	root := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if c.Family == model.IPv6 {
		root = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return splitBuckets(nil, root, entries)
}

// splitBuckets halves p until each half holds at most maxBucketEntries
// addresses. An empty half gets no chain, so a crowded service range far
// from any other address costs no chain for the prefixes above it.
func splitBuckets(out []destBucket, p netip.Prefix, entries []dispatchEntry) []destBucket {
	if len(entries) <= maxBucketEntries || p.Bits() == p.Addr().BitLen() {
		return append(out, destBucket{prefix: p, chain: bucketChain(p), entries: entries})
	}
	upper := withBit(p.Addr(), p.Bits())
	i, _ := slices.BinarySearchFunc(entries, upper, func(e dispatchEntry, a netip.Addr) int { return e.dst.Compare(a) })
	if i > 0 {
		out = splitBuckets(out, netip.PrefixFrom(p.Addr(), p.Bits()+1), entries[:i])
	}
	if i < len(entries) {
		out = splitBuckets(out, netip.PrefixFrom(upper, p.Bits()+1), entries[i:])
	}
	return out
}

// withBit returns a with bit i (0 is the most significant) set.
func withBit(a netip.Addr, i int) netip.Addr {
	b := a.AsSlice()
	b[i/8] |= 0x80 >> (i % 8)
	out, _ := netip.AddrFromSlice(b)
	return out
}

// bucketRules renders a bucket's chain, its entries in descending order of
// the chain each jumps to (an address's rules stay together, in order).
// The API server never gives two services one address and port, so the
// order means nothing to a packet (of two given by hand, which a full sync
// meets first still wins); it is what lets iptables-nft-restore write the
// bucket rule by rule right after the chain it jumps to (see netfilter's
// writeChains), which at 10,000 services takes seconds off a full sync.
func (c *compiler) bucketRules(b destBucket) []string {
	type group struct {
		target string // what the address's last rule jumps to
		rules  []string
	}
	groups := make([]group, len(b.entries))
	for i, e := range b.entries {
		rules := c.dispatchEntryRules(e.port, e.kind, e.dst)
		groups[i] = group{netfilter.JumpTarget(rules[len(rules)-1]), rules}
	}
	slices.SortStableFunc(groups, func(a, b group) int { return strings.Compare(b.target, a.target) })
	var out []string
	for _, g := range groups {
		out = append(out, g.rules...)
	}
	return out
}

// servicesRules renders SERVICES: a jump per bucket, then node ports last,
// so that a service address that is also a node address keeps its port.
func (c *compiler) servicesRules(buckets []destBucket) []string {
	rules := make([]string, 0, len(buckets)+len(c.NodePortDsts)+2)
	for _, b := range buckets {
		if b.prefix.Bits() == 0 {
			rules = append(rules, "-j "+b.chain)
		} else {
			rules = append(rules, "-d "+b.prefix.String()+" -j "+b.chain)
		}
	}
	return append(rules, c.NodePortJumps(chainNodePorts)...)
}

// diffDispatch brings SERVICES and the buckets from prev's to view's.
// Only buckets that hold an address of a port whose dispatch rules changed
// can differ, unless the split itself moved; the others are not rendered.
func (c *compiler) diffDispatch(plan *netfilter.Plan, ports *netfilter.Views, changed map[model.ServicePortName]bool) {
	before, after := c.buckets(ports.Before()), c.buckets(ports.After())
	netfilter.DiffChain(plan, netfilter.NatKey(netfilter.ChainServices), c.servicesRules(before), c.servicesRules(after))
	old := make(map[netip.Prefix]destBucket, len(before))
	for _, b := range before {
		old[b.prefix] = b
	}
	for _, b := range after {
		o, existed := old[b.prefix]
		delete(old, b.prefix)
		switch {
		case !existed:
			plan.Write[netfilter.NatKey(b.chain)] = c.bucketRules(b)
		case holdsAny(o, changed) || holdsAny(b, changed):
			netfilter.DiffChain(plan, netfilter.NatKey(b.chain), c.bucketRules(o), c.bucketRules(b))
		}
	}
	for _, o := range old {
		plan.Delete = append(plan.Delete, netfilter.NatKey(o.chain))
	}
}

func holdsAny(b destBucket, names map[model.ServicePortName]bool) bool {
	return slices.ContainsFunc(b.entries, func(e dispatchEntry) bool { return names[e.port.Name()] })
}
