package iptables

import (
	"context"
	"fmt"

	"github.com/svcproxy/svcproxy/model"
)

// Backend is the iptables proxier.Backend of one family: Compile, then Apply.
type Backend struct {
	cfg     Config
	applier *Applier
}

// New returns the backend of one family, programming the host through the
// flavor's binaries with the compiler's jump rules and top chains.
func New(cfg Config, family model.Family, flavor Flavor) (*Backend, error) {
	a, err := NewApplier(ApplierConfig{Family: family, Flavor: flavor, Jumps: JumpRules(cfg, family), TopChains: TopChains()})
	if err != nil {
		return nil, err
	}
	return NewBackend(cfg, a), nil
}

// NewBackend returns a backend applying through a, e.g. one built on a FakeKernel.
func NewBackend(cfg Config, a *Applier) *Backend { return &Backend{cfg: cfg, applier: a} }

// Family implements proxier.Backend.
func (b *Backend) Family() model.Family { return b.applier.family }

// Sync implements proxier.Backend.
func (b *Backend) Sync(ctx context.Context, view, prev *model.NodeView) (model.SyncResult, error) {
	if view.Family != b.Family() {
		return model.SyncResult{}, fmt.Errorf("syncing an %s view with the %s backend", view.Family, b.Family())
	}
	plan := Compile(b.cfg, view, prev)
	n, err := b.applier.Apply(ctx, plan)
	result := model.SyncResult{
		Full:          plan.Full,
		ChainsWritten: len(plan.Write),
		ChainsDeleted: len(plan.Delete),
		RulesWritten:  plan.Rules(),
		Bytes:         n,
	}
	return result, err
}

// Intact implements proxier.Backend.
func (b *Backend) Intact(ctx context.Context) (bool, error) { return b.applier.Intact(ctx) }

// Cleanup implements proxier.Backend.
func (b *Backend) Cleanup(ctx context.Context) error { return b.applier.Cleanup(ctx) }
