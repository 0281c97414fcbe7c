package proxier

import (
	"context"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

// RunnerConfig says when the runner syncs. The policy is kube-proxy
// 1.35's (its nftables mode, and its iptables mode in small clusters):
// partial syncs carry every change; a full sync comes at start, after a
// failure, when the integrity check finds rules missing, and otherwise
// once every FullSyncPeriod (an hour), never on a shorter clock. At 10,000
// services a full sync takes seconds, and whatever changes meanwhile
// waits for it.
type RunnerConfig struct {
	// MinSyncPeriod bounds how hard svcproxy drives the kernel (kube-proxy's
	// --min-sync-period): syncs start once per MinSyncPeriod at most, on
	// average, however fast changes come. BurstSyncs of them may start back
	// to back after a quiet spell: a Service and its EndpointSlice, written
	// a few milliseconds apart, are two changes, and the second must not
	// wait a whole period. Over any stretch of time T, at most
	// BurstSyncs + T/MinSyncPeriod syncs start. Measured from the starts of
	// syncs, so a change queued during a long sync is applied as soon as
	// that sync ends.
	MinSyncPeriod time.Duration
	// BurstSyncs is that allowance; 1 (or less) spaces every two syncs
	// MinSyncPeriod apart.
	BurstSyncs int
	// SyncPeriod is kube-proxy's --sync-period, as kube-proxy 1.35 uses it:
	// the longest a failed sync waits for its retry (the backoff from
	// RetryInitial doubles up to it; 0: kube-proxy's 30s). Health lets a change wait
	// twice as long. It no longer brings full syncs: those are
	// FullSyncPeriod's.
	SyncPeriod time.Duration
	// FullSyncPeriod is the longest time between two full syncs while
	// nothing fails and nothing drifts: kube-proxy's FullSyncPeriod, an
	// hour. The integrity check only sees svcproxy's hooks and top chains
	// go missing; this repairs what it cannot see (a rule edited inside one
	// of svcproxy's chains) at a cost of one full sync an hour. 0: none
	// but those of start, failures and drift.
	FullSyncPeriod time.Duration
	// CheckPeriod is how often the backends' Intact check runs, which bounds
	// how long rules removed by another program stay missing.
	CheckPeriod time.Duration
	// RetryInitial is the first wait after a failed sync.
	RetryInitial time.Duration
	// SliceWait is how long a new Service may wait for its first
	// EndpointSlice before it is programmed alone (see
	// Tracker.SliceWaitEnds): the two are written apart, and a sync for
	// each would spend the burst allowance; 0: no wait.
	SliceWait time.Duration
}

// DefaultRunnerConfig returns kube-proxy's defaults.
func DefaultRunnerConfig() RunnerConfig {
	return RunnerConfig{
		MinSyncPeriod:  time.Second,
		BurstSyncs:     2,
		SyncPeriod:     30 * time.Second,
		FullSyncPeriod: time.Hour,
		CheckPeriod:    time.Second,
		RetryInitial:   time.Second,
		SliceWait:      DefaultSliceWait,
	}
}

// DefaultSliceWait is long enough for the EndpointSlice controller to
// write a new Service's slice (tens of milliseconds on a loaded API
// server), short enough that a Service without one is hardly delayed
// (it has no endpoints to send traffic to meanwhile).
const DefaultSliceWait = 250 * time.Millisecond

// SyncFunc performs one sync; full asks it to ignore what it applied
// before. A positive recheck asks for another sync within that long even
// if nothing changes: a backend has work in progress that only time
// completes (connections draining from removed real servers).
type SyncFunc func(ctx context.Context, full bool) (recheck time.Duration, err error)

// CheckFunc reports whether the kernel still holds what was programmed.
type CheckFunc func(ctx context.Context) bool

// Runner is the single goroutine that decides when to sync. It owns no
// proxy state itself: it only calls sync and check at the right times.
type Runner struct {
	cfg   RunnerConfig
	clock clock.WithTicker
	sync  SyncFunc
	check CheckFunc
	log   *zap.Logger
	// sliceWaitEnds says how long pending changes may wait for the
	// slices that complete them (Tracker.SliceWaitEnds); nil: never.
	sliceWaitEnds func(wait time.Duration) time.Time
}

// NewRunner returns a runner; check may be nil when the backend cannot drift.
func NewRunner(cfg RunnerConfig, clk clock.WithTicker, sync SyncFunc, check CheckFunc, log *zap.Logger) *Runner {
	return &Runner{cfg: cfg, clock: clk, sync: sync, check: check, log: log}
}

// WaitForSlicesWith lets pending new Services wait, up to
// RunnerConfig.SliceWait, for their first EndpointSlices, as ends says
// (Tracker.SliceWaitEnds). Call it before Run.
func (r *Runner) WaitForSlicesWith(ends func(wait time.Duration) time.Time) { r.sliceWaitEnds = ends }

// schedule is the runner's whole memory: enough to say when the next sync
// is due and whether it must be full. It is a value, so nextSync is a pure
// function of it and easy to test.
type schedule struct {
	pending  bool      // changes are waiting
	full     bool      // the next sync must be full
	urgent   bool      // sync now, ignoring MinSyncPeriod (rules went missing)
	lastSync time.Time // start of the last attempt
	lastFull time.Time // start of the last successful full sync
	failures int       // consecutive failed attempts
	recheck  time.Time // a backend asked for a sync by then; zero: none
	// paced is when the syncs so far would have been paid for, had they
	// started one per MinSyncPeriod: every start moves it one period past
	// the later of itself and that start. A sync may start once paced is
	// at most BurstSyncs-1 periods ahead (a token bucket of BurstSyncs,
	// refilled once per period, kept as one time so the value stays small).
	paced time.Time
	// sliceWait is, while the pending changes are all new Services
	// waiting for their first slices, when that wait ends; zero: none.
	sliceWait time.Time
}

// nextSync returns when the next sync is due and whether it must be full.
func (s schedule) nextSync(cfg RunnerConfig) (time.Time, bool) {
	periodic := s.lastFull.Add(cfg.FullSyncPeriod)
	if cfg.FullSyncPeriod <= 0 {
		periodic = never
	}
	allowed := s.allowed(cfg)
	switch {
	case s.urgent:
		return s.lastSync, true
	case s.failures > 0:
		// A retry is a full sync already, so the periodic one cannot come
		// sooner; changes wait for it too.
		return later(s.lastSync.Add(backoff(cfg, s.failures)), allowed), true
	case s.full:
		return allowed, true
	case s.pending:
		// A periodic full sync that is due takes the changes with it.
		at := later(allowed, s.sliceWait)
		return at, !periodic.After(at)
	case !s.recheck.IsZero() && s.recheck.Before(periodic):
		return later(s.recheck, allowed), false
	}
	return later(periodic, allowed), true
}

// allowed is the earliest start MinSyncPeriod and BurstSyncs allow.
func (s schedule) allowed(cfg RunnerConfig) time.Time {
	return s.paced.Add(-time.Duration(max(cfg.BurstSyncs, 1)-1) * cfg.MinSyncPeriod)
}

// never is a time no sync waits for.
var never = time.Unix(1<<40, 0)

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func backoff(cfg RunnerConfig, failures int) time.Duration {
	limit := cfg.SyncPeriod
	if limit <= 0 {
		limit = DefaultRunnerConfig().SyncPeriod
	}
	d := cfg.RetryInitial
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// afterSync records the outcome of an attempt started at start.
func (s schedule) afterSync(cfg RunnerConfig, start time.Time, full bool, recheck time.Duration, err error) schedule {
	s.lastSync = start
	s.paced = later(s.paced, start).Add(cfg.MinSyncPeriod)
	s.urgent = false
	s.recheck = time.Time{}
	if recheck > 0 {
		s.recheck = start.Add(recheck)
	}
	if err != nil {
		s.failures++
		s.full = true // whatever was applied before may not be what the kernel holds
		return s
	}
	s.failures = 0
	s.pending = false
	s.full = false
	if full {
		s.lastFull = start
	}
	return s
}

// Run syncs until ctx ends. The first sync is full and immediate; after that
// a signal on changed schedules a partial sync.
func (r *Runner) Run(ctx context.Context, changed <-chan struct{}) {
	s := schedule{pending: true, full: true, urgent: true}
	checks := r.clock.NewTicker(r.cfg.CheckPeriod)
	defer checks.Stop()
	var nextCheck time.Time
	var costs checkCosts
	stops := 0 // checks stopped in a row by changes

	for {
		// A change queued during the last sync goes before a check tick
		// that came meanwhile: a check can take a fair part of a second.
		select {
		case <-changed:
			s.pending = true
		default:
		}
		now := r.clock.Now()
		s.sliceWait = time.Time{}
		if r.sliceWaitEnds != nil && s.pending {
			s.sliceWait = r.sliceWaitEnds(r.cfg.SliceWait)
		}
		at, full := s.nextSync(r.cfg)
		if !now.Before(at) {
			recheck, err := r.attempt(ctx, full, s.failures)
			s = s.afterSync(r.cfg, now, full, recheck, err)
			continue
		}
		timer := r.clock.NewTimer(at.Sub(now))
		tick := false
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
			s.pending = true
		case <-timer.C():
		case <-checks.C():
			tick = true
		}
		// Stopped before any work, so that a fake clock's waiters show
		// whether the runner is idle.
		timer.Stop()
		if tick && r.check != nil && s.failures == 0 && !r.clock.Now().Before(nextCheck) {
			stoppable := changed
			if stops >= maxCheckStops {
				stoppable = nil // a steady stream of changes must not starve the check
			}
			intact, next, interrupted := r.runCheck(ctx, stoppable, &costs)
			if interrupted {
				stops++
				s.pending = true // the check runs again at a later tick
				continue
			}
			stops = 0
			nextCheck = next
			if !intact {
				r.log.Warn("programmed rules went missing; resyncing everything")
				s.full, s.urgent = true, true
			}
		}
	}
}

// maxCheckShare caps the share of time the integrity check may take, to a
// fiftieth: on an idle node the check is most of svcproxy's work, and 2%
// of a core is what idling may cost. A check that grows with the rules
// (iptables-legacy reads its whole nat table, 0.3 s at 10,000 services;
// the IPVS mode reads the whole IPVS table) runs less often: at a tenth,
// legacy at 10,000 services idled at 10% of a core.
const maxCheckShare = 50

// maxCheckStops is how many checks in a row changes may stop; the next
// one runs to its end, changes or not, so that drift is still repaired on
// a node whose services never stop changing.
const maxCheckStops = 3

// runCheck runs the integrity check and says when the next one may run:
// after CheckPeriod, or later if checks are slow. A change that comes
// meanwhile stops it: a check may take seconds (the IPVS mode's at 10,000
// services), and a change must not wait behind one. interrupted then says
// so, and intact means nothing; a change that came as the check ended
// counts as an interruption too, so that no change is lost. With changed
// nil the check runs to its end.
func (r *Runner) runCheck(ctx context.Context, changed <-chan struct{}, costs *checkCosts) (intact bool, next time.Time, interrupted bool) {
	checkCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done, stopped := make(chan struct{}), make(chan bool, 1)
	go func() {
		select {
		case <-changed:
			cancel()
			stopped <- true
		case <-done:
			stopped <- false
		}
	}()
	start := r.clock.Now()
	intact = r.check(checkCtx)
	close(done)
	if <-stopped {
		return false, time.Time{}, true
	}
	costs.add(r.clock.Since(start))
	return intact, start.Add(max(r.cfg.CheckPeriod, maxCheckShare*costs.cheapest())), false
}

// checkCosts are how long the last few integrity checks took. The next
// check waits maxCheckShare times the cheapest of them, so that one check
// slowed by a busy moment (a sync beside it, a garbage collection, the
// emulated VM) does not put the next off by fifty times its length.
type checkCosts [3]time.Duration

func (c *checkCosts) add(d time.Duration) {
	copy(c[1:], c[:len(c)-1])
	c[0] = d
}

// cheapest is the shortest cost recorded; zero before any.
func (c *checkCosts) cheapest() time.Duration {
	least := c[0]
	for _, d := range c[1:] {
		if d > 0 && d < least {
			least = d
		}
	}
	return least
}

func (r *Runner) attempt(ctx context.Context, full bool, failures int) (time.Duration, error) {
	recheck, err := r.sync(ctx, full)
	if err != nil {
		r.log.Error("sync failed; will retry with a full sync",
			zap.Bool("full", full), zap.Int("consecutiveFailures", failures+1), zap.Error(err))
	}
	return recheck, err
}
