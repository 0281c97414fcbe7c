package app

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/leftovers"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
)

// takeOver is a sync observer that removes what another proxy left on the
// node, once svcproxy's own state serves every family: after the first
// sync that succeeded in all of them. svcproxy's jumps go in ahead of
// anyone's, so until then the leftovers only wait; removing them first
// would leave a gap for new connections. Conntrack is never flushed, so
// established connections keep their NAT and go on.
//
// Its steps, each done once, in order where one needs another:
//   - kube-proxy's iptables chains and jumps, in every flavor and family,
//     and its nftables tables (package leftovers);
//   - in the iptables mode, the IPVS state of svcproxy's IPVS mode or
//     kube-proxy's: removed gently, a virtual server some connection uses
//     stays until that ends or --ipvs-drain-timeout passes;
//   - kube-proxy's ipsets, once the rules naming them and the virtual
//     servers they tell are gone.
//
// A step that must wait is tried again after each later successful sync
// (Recheck asks for one every retryAfter); one that failed, no sooner than
// retryAfter later, and one that keeps failing is given
// up after maxAttempts with a warning: the leftovers then stay, as they
// would without svcproxy.
//
// It runs on a goroutine of its own (run), handed the start of each sync
// that succeeded in every family: it lists every table of both flavors
// and families, svcproxy's own included, which at 10,000 services takes
// seconds that a change made meanwhile must not wait for.
type takeOver struct {
	d *daemon
	p *proxy
	// synced holds the start of the latest successful sync not yet
	// looked at.
	synced chan time.Time
	// finished is set once every step is done; Recheck reads it.
	finished atomic.Bool

	// The rest is the goroutine's own. rulesDone, nftDone, ipvsDone,
	// setsDone: the steps that are finished.
	rulesDone, nftDone, ipvsDone, setsDone bool
	attempts                               int
	// drainUntil bounds the wait for IPVS connections; next is the
	// earliest retry.
	drainUntil, next time.Time
	// retry is retryAfter, shorter in tests.
	retry time.Duration
}

const (
	retryAfter  = 10 * time.Second
	maxAttempts = 5
)

func (d *daemon) takeOver(p *proxy) *takeOver {
	// The IPVS mode's own sync takes kube-proxy's virtual servers over.
	retry := retryAfter
	if d.takeOverRetry > 0 {
		retry = d.takeOverRetry
	}
	return &takeOver{d: d, p: p, synced: make(chan time.Time, 1), ipvsDone: d.cfg.Mode == modeIPVS, retry: retry}
}

// Recheck wraps a sync so that, while the take-over has work left
// (connections to drain, a step to retry), the runner syncs again within
// retryAfter even if nothing changes: the take-over runs after syncs, and
// an idle node has none for an hour. Such a sync of an unchanged view
// writes nothing.
func (t *takeOver) Recheck(sync proxier.SyncFunc) proxier.SyncFunc {
	return func(ctx context.Context, full bool) (time.Duration, error) {
		recheck, err := sync(ctx, full)
		if !t.finished.Load() && (recheck <= 0 || recheck > t.retry) {
			recheck = t.retry
		}
		return recheck, err
	}
}

// done reports whether nothing is left to do.
func (t *takeOver) done() bool { return t.rulesDone && t.nftDone && t.ipvsDone && t.setsDone }

// Observe implements the sync observer: it hands a sync that succeeded
// in every family to run, replacing one run has not taken yet. It never
// blocks: the runner's goroutine is the only sender.
func (t *takeOver) Observe(r *proxier.SyncReport) {
	if t.finished.Load() || r.Err() != nil || len(r.Families) < len(t.p.families) {
		return
	}
	select {
	case <-t.synced:
	default:
	}
	t.synced <- r.Start
}

// run does the steps after each sync Observe hands over, until they are
// all done or ctx ends.
func (t *takeOver) run(ctx context.Context) {
	for !t.finished.Load() {
		select {
		case <-ctx.Done():
			return
		case start := <-t.synced:
			t.step(ctx, start)
			t.finished.Store(t.done())
		}
	}
}

// step does what is left, after a sync that started at start.
func (t *takeOver) step(ctx context.Context, start time.Time) {
	if start.Before(t.next) {
		return
	}
	if t.drainUntil.IsZero() {
		t.drainUntil = start.Add(t.d.cfg.IPVS.DrainTimeout)
	}
	failed := false
	if !t.rulesDone {
		t.rulesDone = t.removeKubeProxyChains(ctx)
		failed = !t.rulesDone
	}
	if !t.nftDone {
		t.nftDone = t.removeKubeProxyNFTables(ctx)
		failed = failed || !t.nftDone
	}
	if t.rulesDone && !t.ipvsDone {
		var err error
		t.ipvsDone, err = t.retireIPVSState(ctx, start)
		failed = failed || err != nil
	}
	if t.rulesDone && t.ipvsDone && !t.setsDone {
		t.setsDone = t.removeKubeProxySets(ctx)
		failed = failed || !t.setsDone
	}
	if !failed {
		return
	}
	t.next = start.Add(t.retry)
	if t.attempts++; t.attempts >= maxAttempts {
		t.d.log.Warn("giving up on removing what another proxy left on this node; it stays", zap.Int("attempts", t.attempts))
		t.rulesDone, t.nftDone, t.ipvsDone, t.setsDone = true, true, true, true
	}
}

// removeKubeProxyChains removes kube-proxy's chains from every flavor and
// family whose iptables can list them and reports whether all of them
// went. The iptables svcproxy does not use may be missing or unusable
// here: that is no failure.
func (t *takeOver) removeKubeProxyChains(ctx context.Context) bool {
	remover := leftovers.Remover{Run: t.d.kernel.run}
	ok := true
	for _, flavor := range netfilter.Flavors() {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			removed, err := remover.RemoveIPTables(ctx, family, flavor)
			log := t.d.log.With(zap.String("flavor", string(flavor)), zap.Stringer("family", family))
			if len(removed.Removed) > 0 {
				log.Info("removed kube-proxy's iptables chains and the jumps to them", zap.Int("chains", len(removed.Removed)))
			}
			if len(removed.Kept) > 0 {
				log.Info("kept kube-proxy's chains that another program's rules jump to", zap.Stringers("chains", chainNames(removed.Kept)))
			}
			switch {
			case err == nil:
			case errors.Is(err, leftovers.ErrUnlisted) && !t.uses(flavor, family):
				log.Debug("iptables unusable here: no kube-proxy chains to look for", zap.Error(err))
			default:
				log.Warn("could not remove kube-proxy's iptables chains; will try again", zap.Error(err))
				ok = false
			}
		}
	}
	return ok
}

// removeKubeProxyNFTables deletes the tables of kube-proxy's nftables
// mode and reports whether none is left. Where nft is missing or cannot
// list tables (a kernel without nf_tables), there can be none svcproxy
// could see; the image svcproxy ships has nft.
func (t *takeOver) removeKubeProxyNFTables(ctx context.Context) bool {
	tables, err := leftovers.Remover{Run: t.d.kernel.run}.RemoveNFTables(ctx)
	switch {
	case errors.Is(err, leftovers.ErrNoNFT), errors.Is(err, leftovers.ErrUnlisted):
		t.d.log.Debug("not looking for kube-proxy's nftables tables", zap.Error(err))
	case err != nil:
		t.d.log.Warn("could not remove kube-proxy's nftables tables; will try again", zap.Error(err))
		return false
	case len(tables) > 0:
		t.d.log.Info("removed kube-proxy's nftables tables", zap.Stringers("tables", tables))
	}
	return true
}

// uses reports whether svcproxy programs a flavor and family.
func (t *takeOver) uses(flavor netfilter.Flavor, family model.Family) bool {
	if flavor != t.p.flavor {
		return false
	}
	for _, f := range t.p.families {
		if f == family {
			return true
		}
	}
	return false
}

// retireIPVSState, in the iptables mode, removes the IPVS state a run of
// the IPVS mode or of kube-proxy's left, gently until drainUntil. It
// reports whether it is all gone.
func (t *takeOver) retireIPVSState(ctx context.Context, now time.Time) (bool, error) {
	loaded, inUse, err := t.d.kernel.removeIPVSState(ctx, t.d.cfg, t.flavors(), t.d.log, now.Before(t.drainUntil))
	switch {
	case err != nil:
		t.d.log.Warn("could not remove the IPVS state another mode or proxy left; it serves no traffic the rules send to", zap.Error(err))
		return false, err
	case !loaded:
		t.d.log.Debug("IPVS is not loaded in the kernel: no IPVS leftovers to remove")
	}
	return inUse == 0, nil
}

// removeKubeProxySets destroys the ipsets of kube-proxy's ipvs mode and
// reports whether none is left.
func (t *takeOver) removeKubeProxySets(ctx context.Context) bool {
	destroyed, err := t.d.kernel.removeKubeProxySets(ctx, t.d.cfg, t.flavors())
	if len(destroyed) > 0 {
		t.d.log.Info("destroyed kube-proxy's ipsets", zap.Strings("sets", destroyed))
	}
	if err != nil {
		t.d.log.Warn("could not destroy kube-proxy's ipsets; will try again", zap.Error(err))
		return false
	}
	return true
}

func (t *takeOver) flavors() map[model.Family]netfilter.Flavor {
	flavors := map[model.Family]netfilter.Flavor{}
	for _, f := range t.p.families {
		flavors[f] = t.p.flavor
	}
	return flavors
}

type chainName netfilter.ChainKey

func (c chainName) String() string { return fmt.Sprintf("%s/%s", c.Table, c.Name) }

func chainNames(keys []netfilter.ChainKey) []fmt.Stringer {
	out := make([]fmt.Stringer, len(keys))
	for i, k := range keys {
		out[i] = chainName(k)
	}
	return out
}
