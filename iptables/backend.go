package iptables

import (
	"context"
	"fmt"

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
	counters   *packetCounters
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
	return &Backend{cfg: cfg, applier: a, chainRules: map[netfilter.ChainKey]int{}, counters: newPacketCounters(cfg, a.Family())}
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
