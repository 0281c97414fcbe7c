package iptables

import (
	"context"
	"errors"
	"sync"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// The packet counters kube-proxy keeps in nfacct objects, which svcproxy
// reads off its own rules' counters instead:
// iptables_ct_state_invalid_dropped_packets_total from the rule that
// drops what conntrack finds INVALID, and
// iptables_localhost_nodeports_accepted_packets_total from the pair of
// rules around the node ports on 127.0.0.0/8 (see
// netfilter.CommentLocalhostNodePorts).

// counted is one rule's packet count carried across the syncs that
// rewrite its chain (which restarts the kernel's counter): base is what
// earlier versions of the rule counted, last the latest reading of the
// current one.
type counted struct {
	match      string
	base, last uint64
}

// total is the count so far.
func (c *counted) total() uint64 { return c.base + c.last }

// read takes a new reading v of the current rule.
func (c *counted) read(v uint64) {
	if v < c.last { // rewritten by something else than svcproxy's sync (another program flushed it)
		c.base += c.last
	}
	c.last = v
}

// carry folds the last reading into base: the rule is about to be
// rewritten and count afresh.
func (c *counted) carry() { c.base, c.last = c.base+c.last, 0 }

// countedChain is a chain of svcproxy's holding counted rules.
type countedChain struct {
	key   netfilter.ChainKey
	rules []*counted
}

// packetCounters are the counted rules of one family's backend. The
// runner reads them (for the metrics) and syncs (which rewrites them)
// from its one goroutine; the mutex keeps a scrape-time caller safe too.
type packetCounters struct {
	mu        sync.Mutex
	invalid   counted
	localhost struct{ entered, missed counted } // entered - missed: accepted
	chains    []countedChain
}

// invalidMatch picks the INVALID drop rule out of the forward chain.
const invalidMatch = "--ctstate INVALID"

func newPacketCounters(cfg netfilter.Config, family model.Family) *packetCounters {
	c := &packetCounters{}
	c.invalid.match = invalidMatch
	c.chains = []countedChain{{key: netfilter.FilterKey(netfilter.ChainForward), rules: []*counted{&c.invalid}}}
	if netfilter.NewRules(cfg, family).LocalhostNodePorts {
		c.localhost.entered.match = netfilter.CommentLocalhostNodePorts
		c.localhost.missed.match = netfilter.CommentLocalhostNotNodePort
		c.chains = append(c.chains, countedChain{key: netfilter.NatKey(netfilter.ChainServices),
			rules: []*counted{&c.localhost.entered, &c.localhost.missed}})
	}
	return c
}

// PacketCounts returns what svcproxy's counting rules have counted since
// this process found them, carried over their rewrites: the packets
// dropped as INVALID, and the new connections node ports accepted on
// 127.0.0.0/8 (0 where node ports do not answer there). On a failed
// reading it returns the last counts with the error.
func (b *Backend) PacketCounts(ctx context.Context) (model.PacketCounts, error) {
	c := b.counters
	c.mu.Lock()
	defer c.mu.Unlock()
	err := b.readCounters(ctx, func(netfilter.ChainKey) bool { return true })
	return model.PacketCounts{
		InvalidDropped:             c.invalid.total(),
		LocalhostNodePortsAccepted: c.localhost.entered.total() - min(c.localhost.entered.total(), c.localhost.missed.total()),
	}, err
}

// readCounters reads the counted rules of the chains picked; c.mu is held.
func (b *Backend) readCounters(ctx context.Context, pick func(netfilter.ChainKey) bool) error {
	var errs []error
	for _, ch := range b.counters.chains {
		if !pick(ch.key) {
			continue
		}
		matches := make([]string, len(ch.rules))
		for i, r := range ch.rules {
			matches[i] = r.match
		}
		counts, err := b.applier.PacketCounts(ctx, ch.key.Table, ch.key.Name, matches...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i, r := range ch.rules {
			r.read(counts[i])
		}
	}
	return errors.Join(errs...)
}

// applyCounting applies a plan. The counted rules of a chain the plan
// rewrites (every chain, for a full plan) are read first and their counts
// carried, so that what they counted survives the rewrite.
func (b *Backend) applyCounting(ctx context.Context, plan *netfilter.Plan) (netfilter.Applied, error) {
	rewrites := func(k netfilter.ChainKey) bool {
		_, written := plan.Write[k]
		return plan.Full || written
	}
	c := b.counters
	c.mu.Lock()
	defer c.mu.Unlock()
	var rewritten []countedChain
	for _, ch := range c.chains {
		if rewrites(ch.key) {
			rewritten = append(rewritten, ch)
		}
	}
	if len(rewritten) == 0 {
		return b.applier.Apply(ctx, plan)
	}
	readErr := b.readCounters(ctx, rewrites)
	done, err := b.applier.Apply(ctx, plan)
	if err == nil && readErr == nil {
		for _, ch := range rewritten {
			for _, r := range ch.rules {
				r.carry()
			}
		}
	}
	return done, err
}
