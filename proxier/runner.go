package proxier

import (
	"context"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

// RunnerConfig bounds how often the runner syncs.
type RunnerConfig struct {
	// MinSyncPeriod keeps two syncs at least this far apart, so a burst of
	// changes costs one sync (kube-proxy's --min-sync-period).
	MinSyncPeriod time.Duration
	// SyncPeriod is the longest time between two full syncs (--sync-period).
	SyncPeriod time.Duration
	// CheckPeriod is how often the backends' Intact check runs, which bounds
	// how long rules removed by another program stay missing.
	CheckPeriod time.Duration
	// RetryInitial and RetryMax bound the exponential backoff after a failed sync.
	RetryInitial time.Duration
	RetryMax     time.Duration
}

// DefaultRunnerConfig returns kube-proxy's defaults.
func DefaultRunnerConfig() RunnerConfig {
	return RunnerConfig{
		MinSyncPeriod: time.Second,
		SyncPeriod:    30 * time.Second,
		CheckPeriod:   time.Second,
		RetryInitial:  time.Second,
		RetryMax:      30 * time.Second,
	}
}

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
}

// NewRunner returns a runner; check may be nil when the backend cannot drift.
func NewRunner(cfg RunnerConfig, clk clock.WithTicker, sync SyncFunc, check CheckFunc, log *zap.Logger) *Runner {
	return &Runner{cfg: cfg, clock: clk, sync: sync, check: check, log: log}
}

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
}

// nextSync returns when the next sync is due and whether it must be full.
func (s schedule) nextSync(cfg RunnerConfig) (time.Time, bool) {
	periodic := s.lastFull.Add(cfg.SyncPeriod)
	switch {
	case s.urgent:
		return s.lastSync, true
	case s.failures > 0:
		// A retry is a full sync already, so the periodic one cannot come sooner.
		return s.lastSync.Add(backoff(cfg, s.failures)), true
	case s.pending || s.full:
		at := s.lastSync.Add(cfg.MinSyncPeriod)
		if periodic.Before(at) {
			return periodic, true
		}
		return at, s.full
	case !s.recheck.IsZero() && s.recheck.Before(periodic):
		return later(s.recheck, s.lastSync.Add(cfg.MinSyncPeriod)), false
	}
	return periodic, true
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func backoff(cfg RunnerConfig, failures int) time.Duration {
	d := cfg.RetryInitial
	for i := 1; i < failures && d < cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, cfg.RetryMax)
}

// afterSync records the outcome of an attempt started at start.
func (s schedule) afterSync(start time.Time, full bool, recheck time.Duration, err error) schedule {
	s.lastSync = start
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

	for {
		now := r.clock.Now()
		at, full := s.nextSync(r.cfg)
		if !now.Before(at) {
			recheck, err := r.attempt(ctx, full, s.failures)
			s = s.afterSync(now, full, recheck, err)
			continue
		}
		timer := r.clock.NewTimer(at.Sub(now))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
			s.pending = true
		case <-timer.C():
		case <-checks.C():
			if r.check == nil || s.failures > 0 || r.clock.Now().Before(nextCheck) {
				break
			}
			intact, next := r.runCheck(ctx)
			nextCheck = next
			if !intact {
				r.log.Warn("programmed rules went missing; resyncing everything")
				s.full, s.urgent = true, true
			}
		}
		timer.Stop()
	}
}

// maxCheckShare caps the share of time the integrity check may take: with
// iptables-legacy every check reads the whole table from the kernel, which
// at 100k rules takes a fair part of a second.
const maxCheckShare = 10

// runCheck runs the integrity check and says when the next one may run:
// after CheckPeriod, or later if the check itself was slow.
func (r *Runner) runCheck(ctx context.Context) (bool, time.Time) {
	start := r.clock.Now()
	intact := r.check(ctx)
	elapsed := r.clock.Since(start)
	return intact, start.Add(max(r.cfg.CheckPeriod, maxCheckShare*elapsed))
}

func (r *Runner) attempt(ctx context.Context, full bool, failures int) (time.Duration, error) {
	recheck, err := r.sync(ctx, full)
	if err != nil {
		r.log.Error("sync failed; will retry with a full sync",
			zap.Bool("full", full), zap.Int("consecutiveFailures", failures+1), zap.Error(err))
	}
	return recheck, err
}
