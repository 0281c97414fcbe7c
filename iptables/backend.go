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
	return &Backend{cfg: cfg, applier: a}
}

// Family implements proxier.Backend.
func (b *Backend) Family() model.Family { return b.applier.Family() }

// Sync implements proxier.Backend.
func (b *Backend) Sync(ctx context.Context, view, prev *model.NodeView) (model.SyncResult, error) {
	if view.Family != b.Family() {
		return model.SyncResult{}, fmt.Errorf("syncing an %s view with the %s backend", view.Family, b.Family())
	}
	plan := Compile(b.cfg, view, prev)
	done, err := b.applier.Apply(ctx, plan)
	return plan.Result(done, err), err
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
