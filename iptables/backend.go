package iptables

import (
	"context"
	"fmt"
	"sync"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Backend is the iptables proxier.Backend of one family: Compile, then Apply.
type Backend struct {
	cfg     netfilter.Config
	applier *netfilter.Applier
	// chainRules is how many rules each chain the kernel holds from
	// svcproxy has, as of the last sync that succeeded: the totals the
	// metrics report, which a partial plan alone does not tell.
	chainRules map[netfilter.ChainKey]int
	dropped    droppedCount
}

// droppedCount carries the packet counter of the rule that drops packets
// conntrack finds INVALID across the full syncs that rewrite its chain
// (which restarts the kernel's counter): base is what earlier versions of
// the rule counted, last the latest reading of the current one.
type droppedCount struct {
	mu         sync.Mutex
	base, last uint64
}

// invalidMatch picks the INVALID drop rule out of the forward chain.
const invalidMatch = "--ctstate INVALID"

// InvalidDropped returns how many packets svcproxy's rule has dropped
// because conntrack found them INVALID: kube-proxy's
// iptables_ct_state_invalid_dropped_packets_total, which kube-proxy keeps
// in an nfacct object. The count carries over the rewrites of the rule
// (see droppedCount), and starts with what the rule had counted when
// this process found it. On a failed reading it returns the last count.
func (b *Backend) InvalidDropped(ctx context.Context) (uint64, error) {
	b.dropped.mu.Lock()
	defer b.dropped.mu.Unlock()
	return b.readDropped(ctx)
}

// readDropped reads the rule's counter; b.dropped.mu is held.
func (b *Backend) readDropped(ctx context.Context) (uint64, error) {
	d := &b.dropped
	v, err := b.applier.PacketCount(ctx, netfilter.TableFilter, netfilter.ChainForward, invalidMatch)
	if err != nil {
		return d.base + d.last, err
	}
	if v < d.last { // rewritten by something else than a full sync (another program flushed it)
		d.base += d.last
	}
	d.last = v
	return d.base + v, nil
}

// applyCounting applies a plan; a full plan rewrites the forward chain,
// so the INVALID drop rule's count so far is read first and carried.
func (b *Backend) applyCounting(ctx context.Context, plan *netfilter.Plan) (netfilter.Applied, error) {
	if !plan.Full {
		return b.applier.Apply(ctx, plan)
	}
	b.dropped.mu.Lock()
	defer b.dropped.mu.Unlock()
	d := &b.dropped
	_, readErr := b.readDropped(ctx)
	done, err := b.applier.Apply(ctx, plan)
	if err == nil && readErr == nil {
		d.base, d.last = d.base+d.last, 0
	}
	return done, err
}

// New returns the backend of one family, programming the host through the
// flavor's binaries with the compiler's jump rules and top chains.
func New(cfg netfilter.Config, family model.Family, flavor netfilter.Flavor) (*Backend, error) {
	a, err := netfilter.NewApplier(netfilter.ApplierConfig{Family: family, Flavor: flavor, Jumps: netfilter.JumpRules(), TopChains: TopChains()})
	if err != nil {
		return nil, err
	}
	return NewBackend(cfg, a), nil
}

// NewBackend returns a backend applying through a, e.g. one built on a FakeKernel.
func NewBackend(cfg netfilter.Config, a *netfilter.Applier) *Backend {
	return &Backend{cfg: cfg, applier: a, chainRules: map[netfilter.ChainKey]int{}}
}

// Family implements proxier.Backend.
func (b *Backend) Family() model.Family { return b.applier.Family() }

// Sync implements proxier.Backend.
func (b *Backend) Sync(ctx context.Context, view, prev *model.NodeView) (model.SyncResult, error) {
	if view.Family != b.Family() {
		return model.SyncResult{}, fmt.Errorf("syncing an %s view with the %s backend", view.Family, b.Family())
	}
	plan := Compile(b.cfg, view, prev)
	done, err := b.applyCounting(ctx, plan)
	res := plan.Result(done, err)
	if err == nil {
		res.Tables = b.countRules(plan)
	}
	return res, err
}

// countRules brings chainRules up to date with an applied plan and counts
// the rules by table, as kube-proxy's sync_proxy_rules_iptables_total
// (rules owned) and _last (rules written by the sync) do. A full plan
// writes every chain svcproxy wants and removes the rest.
func (b *Backend) countRules(plan *netfilter.Plan) *model.TableRules {
	if plan.Full {
		clear(b.chainRules)
	}
	for _, k := range plan.Delete {
		delete(b.chainRules, k)
	}
	var t model.TableRules
	for k, rules := range plan.Write {
		b.chainRules[k] = len(rules)
		if k.Table == netfilter.TableFilter {
			t.FilterWritten += len(rules)
		} else {
			t.NATWritten += len(rules)
		}
	}
	for k, n := range b.chainRules {
		if k.Table == netfilter.TableFilter {
			t.FilterTotal += n
		} else {
			t.NATTotal += n
		}
	}
	return &t
}

// TopChains are the chains every ruleset of this mode has.
func TopChains() []netfilter.ChainKey { return netfilter.TopChains(netfilter.NatKey(chainNodePorts)) }

// Intact implements proxier.Backend. The rules of every view are hooked
// in the same way, so the view does not matter.
func (b *Backend) Intact(ctx context.Context, _ *model.NodeView) (bool, error) {
	return b.applier.Intact(ctx)
}

// Cleanup implements proxier.Backend.
func (b *Backend) Cleanup(ctx context.Context) error { return b.applier.Cleanup(ctx) }
