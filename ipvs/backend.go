package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Backend is the IPVS proxier.Backend of one family: it reads the node's
// addresses, compiles, and applies.
type Backend struct {
	cfg     Config
	family  model.Family
	applier *Applier
	rules   *netfilter.Applier
	open    func() (Kernel, error)
}

// New returns the backend of one family, programming the host's IPVS,
// links, sets and sysctls, and its iptables through the flavor's binaries.
func New(cfg Config, family model.Family, flavor netfilter.Flavor) (*Backend, error) {
	rules, err := netfilter.NewApplier(RulesConfig(family, flavor))
	if err != nil {
		return nil, err
	}
	return NewBackend(cfg, family, rules, OpenKernel, clock.RealClock{}), nil
}

// RulesConfig is how the mode's iptables rules are applied and checked,
// through the flavor's binaries unless the caller sets its own seams.
// Its chains hold a few rules per service at most, and the integrity
// check reads them whole.
func RulesConfig(family model.Family, flavor netfilter.Flavor) netfilter.ApplierConfig {
	return netfilter.ApplierConfig{Family: family, Flavor: flavor,
		Jumps: netfilter.JumpRules(), TopChains: TopChains(), SmallTables: true}
}

// NewBackend returns a backend reaching the kernel through open (called
// once per sync, in the calling thread's network namespace) and rules,
// e.g. a FakeKernel and an applier on a netfilter.FakeKernel.
func NewBackend(cfg Config, family model.Family, rules *netfilter.Applier, open func() (Kernel, error), clk clock.PassiveClock) *Backend {
	return &Backend{cfg: cfg, family: family, applier: NewApplier(cfg, family, rules, clk), rules: rules, open: open}
}

// TopChains are the chains every ruleset of this mode has.
func TopChains() []netfilter.ChainKey { return netfilter.TopChains() }

// Family implements proxier.Backend.
func (b *Backend) Family() model.Family { return b.family }

// Sync implements proxier.Backend. A partial sync becomes full when the
// node's addresses changed since the last one (recorded in NODE-IPS):
// every node port's virtual servers depend on them.
func (b *Backend) Sync(ctx context.Context, view, prev *model.NodeView) (model.SyncResult, error) {
	if view.Family != b.family {
		return model.SyncResult{}, fmt.Errorf("syncing an %s view with the %s backend", view.Family, b.family)
	}
	k, err := b.open()
	if err != nil {
		return model.SyncResult{Full: prev == nil}, fmt.Errorf("opening the kernel's IPVS and netlink interfaces: %w", err)
	}
	defer k.Close()
	looked := &countingKernel{Kernel: k}
	nodeAddrs, err := nodeAddrs(looked, b.family, len(view.Services))
	if err != nil {
		return model.SyncResult{Full: prev == nil, KernelOps: looked.ops}, fmt.Errorf("listing the node's addresses: %w", err)
	}
	if prev != nil && !b.sameNodeAddrs(looked, nodeAddrs) {
		prev = nil
	}
	plan := Compile(b.cfg, view, prev, nodeAddrs)
	done, err := b.applier.Apply(ctx, k, plan)
	res := model.SyncResult{
		Full:          plan.Full,
		KernelOps:     looked.ops + done.Ops,
		Written:       done.Written,
		Deleted:       done.Deleted,
		Rules:         plan.Rules.Rules(),
		Bytes:         done.Rules.Bytes,
		RestoreFailed: done.RestoreFailed,
	}
	if done.Draining > 0 {
		res.RecheckAfter = done.NextDrainCheck
	}
	return res, err
}

// nodeAddrs lists the node's addresses, those of every link but
// kube-ipvs0, which holds about one per service port. One dump of every
// address makes the kernel format kube-ipvs0's too: at 10,000 services
// that was half of a one-endpoint sync's CPU in the VM. So where the
// other links are few against them, each of those is dumped alone; where
// they are many (a node of many pods and few services), one dump costs
// less than a request per link.
func nodeAddrs(k Kernel, family model.Family, servicePorts int) ([]netip.Addr, error) {
	if servicePorts < 2*addrsPerLinkDump {
		// Dumping link by link could pay only on a node of one link:
		// not worth the request that lists the links.
		return k.HostAddrs(family, DummyName)
	}
	names, err := k.LinkNames()
	if err != nil {
		return nil, err
	}
	names = slices.DeleteFunc(names, func(n string) bool { return n == DummyName })
	if len(names)*addrsPerLinkDump > servicePorts {
		return k.HostAddrs(family, DummyName)
	}
	var all []netip.Addr
	for _, name := range names {
		addrs, err := k.LinkAddrs(name, family)
		if err != nil {
			return nil, err
		}
		all = append(all, addrs...)
	}
	slices.SortFunc(all, netip.Addr.Compare)
	return slices.Compact(all), nil
}

// addrsPerLinkDump is about how many addresses the kernel formats in the
// time one more dump request costs. Measured in the VM: a dump of one
// link's addresses took 90 to 300 µs, while each address kube-ipvs0 adds
// to a dump of all costs 1.5 µs (18.7 ms at 12,000).
const addrsPerLinkDump = 100

// sameNodeAddrs reports whether node ports answer on the addresses the
// last sync recorded.
func (b *Backend) sameNodeAddrs(k Kernel, nodeAddrs []netip.Addr) bool {
	names := newSetNames(b.family)
	recorded, err := k.SetEntries(names.byName[names.nodeIPs])
	if err != nil {
		return false
	}
	var addrs []netip.Addr
	for _, e := range recorded {
		addrs = append(addrs, e.Addr)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Equal(addrs, NodePortAddrs(netfilter.NewRules(b.cfg.Rules, b.family), nodeAddrs))
}

// Intact implements proxier.Backend: the jump rules and top chains are in
// place, and the kernel holds every virtual server (with its real servers
// and their weights), address, set entry and sysctl the applied view
// needs. It reads the whole IPVS table (one read of /proc/net/ip_vs),
// kube-ipvs0's addresses and the sets: its cost grows with the services
// (2.2 s of the VM's emulated CPU at 10,000). So it stops between its
// steps once ctx ends: the runner ends it when a change comes.
func (b *Backend) Intact(ctx context.Context, applied *model.NodeView) (bool, error) {
	if ok, err := b.rules.Intact(ctx); !ok || err != nil || applied == nil {
		return ok, err
	}
	k, err := b.open()
	if err != nil {
		return false, err
	}
	defer k.Close()
	nodeAddrs, err := nodeAddrs(k, b.family, len(applied.Services))
	if err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return b.applier.holds(ctx, k, fullWantsOf(b.cfg, applied, nodeAddrs))
}

// Cleanup implements proxier.Backend: the iptables rules (which name the
// sets) go first, then everything of the family's IPVS state, and
// kube-ipvs0 once no family has an address on it.
func (b *Backend) Cleanup(ctx context.Context) error {
	rulesErr := b.rules.Cleanup(ctx)
	return errors.Join(rulesErr, b.RemoveIPVSState(ctx))
}

// RemoveIPVSState removes the family's virtual servers, kube-ipvs0's
// addresses and the sets svcproxy made, but no iptables rule.
func (b *Backend) RemoveIPVSState(ctx context.Context) error {
	_, err := b.removeIPVSState(ctx, false)
	return err
}

// RetireIPVSState is what the iptables mode does, once its own rules are
// in place (they send new connections past IPVS, and no longer name the
// sets), on a node that ran the IPVS mode: it removes the IPVS state no
// connection uses and says how many virtual servers still carry some.
// Called again later, it removes those whose connections have ended.
func (b *Backend) RetireIPVSState(ctx context.Context) (inUse int, err error) {
	return b.removeIPVSState(ctx, true)
}

func (b *Backend) removeIPVSState(ctx context.Context, gently bool) (int, error) {
	k, err := b.open()
	if err != nil {
		return 0, fmt.Errorf("opening the kernel's IPVS and netlink interfaces: %w", err)
	}
	defer k.Close()
	return b.applier.removeAll(ctx, k, gently)
}
