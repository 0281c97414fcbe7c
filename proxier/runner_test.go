package proxier

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	clocktesting "k8s.io/utils/clock/testing"
)

// runnerHarness drives a Runner with a fake clock and records every sync.
type runnerHarness struct {
	t       *testing.T
	clock   *clocktesting.FakeClock
	cfg     RunnerConfig
	changed chan struct{}
	syncs   chan syncCall

	mu      sync.Mutex
	fail    bool
	intact  bool
	started time.Time
	// rechecks are what the next syncs return as their recheck, in order.
	rechecks []time.Duration
	// inSync, if set, runs inside every sync (n counts syncs from 0), on
	// the runner's goroutine: it may step the clock (a sync that takes
	// time) and queue changes (h.queue), as the API server would.
	inSync func(n int)
	// checkTakes is how long each integrity check takes.
	checkTakes time.Duration
	// inCheck, if set, runs first in every check (n counts checks from 0),
	// on the runner's goroutine; a false return fails the check.
	inCheck func(ctx context.Context, n int) bool
	checks  int
	// flushAt, if set, is when another program removes the rules: from
	// then the check fails, until a full sync repairs them. Set ahead in
	// fake time, it does not race with the runner's goroutine.
	flushAt time.Duration
	calls   int
	// awaiting is when a new Service still without an EndpointSlice was
	// queued (what Tracker.SliceWaitEnds looks at); zero: none pending.
	awaiting time.Duration
	// looked counts the runner's looks at awaiting.
	looked int
}

type syncCall struct {
	at   time.Duration // since the harness started
	full bool
}

// harnessConfig is the runner's configuration in these tests: kube-proxy's
// defaults, with retries capped at 8s so the cap shows within a few steps.
func harnessConfig() RunnerConfig {
	return RunnerConfig{
		MinSyncPeriod:  time.Second,
		BurstSyncs:     2,
		SyncPeriod:     8 * time.Second,
		FullSyncPeriod: time.Hour,
		CheckPeriod:    time.Second,
		RetryInitial:   time.Second,
		SliceWait:      250 * time.Millisecond,
	}
}

// newRunnerHarness starts a runner; setup runs before it does.
func newRunnerHarness(t *testing.T, setup ...func(*runnerHarness)) *runnerHarness {
	h := &runnerHarness{
		t:       t,
		clock:   clocktesting.NewFakeClock(time.Unix(1_000_000, 0)),
		cfg:     harnessConfig(),
		changed: make(chan struct{}, 1),
		syncs:   make(chan syncCall, 100),
		intact:  true,
	}
	h.started = h.clock.Now()
	for _, f := range setup {
		f(h)
	}
	sync := func(ctx context.Context, full bool) (time.Duration, error) {
		select { // the sync takes every change queued so far, as Tracker.Snapshot does
		case <-h.changed:
		default:
		}
		select { // a runaway runner blocks here until the test ends
		case h.syncs <- syncCall{at: h.clock.Since(h.started), full: full}:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		h.mu.Lock()
		inSync, n := h.inSync, h.calls
		h.calls++
		h.mu.Unlock()
		if inSync != nil {
			inSync(n)
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if full && h.flushAt > 0 && h.now() >= h.flushAt {
			h.flushAt = 0
		}
		var recheck time.Duration
		if len(h.rechecks) > 0 {
			recheck, h.rechecks = h.rechecks[0], h.rechecks[1:]
		}
		if h.fail {
			return 0, errors.New("kernel said no")
		}
		return recheck, nil
	}
	check := func(ctx context.Context) bool {
		h.mu.Lock()
		inCheck, n := h.inCheck, h.checks
		h.checks++
		h.mu.Unlock()
		if inCheck != nil && !inCheck(ctx, n) {
			return false
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.clock.Step(h.checkTakes)
		flushed := h.flushAt > 0 && h.now() >= h.flushAt
		return h.intact && !flushed
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := NewRunner(h.cfg, h.clock, sync, check, zap.NewNop())
		r.WaitForSlicesWith(func(wait time.Duration) time.Time {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.looked++
			if h.awaiting == 0 {
				return time.Time{}
			}
			return h.started.Add(h.awaiting + wait)
		})
		r.Run(ctx, h.changed)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// await says a new Service without slices was queued at (since the
// start), or with 0 that none is pending any more (its slice came).
func (h *runnerHarness) await(at time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.awaiting = at
}

func (h *runnerHarness) set(fail, intact bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail, h.intact = fail, intact
}

// flush has another program remove the rules at (fake time) at.
func (h *runnerHarness) flush(at time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushAt = at
}

func (h *runnerHarness) now() time.Duration { return h.clock.Since(h.started) }

// step advances the fake clock once the runner is parked on its timers, so
// no tick is lost to a race with the runner's goroutine.
func (h *runnerHarness) step(d time.Duration) {
	h.t.Helper()
	h.waitParked()
	h.clock.Step(d)
}

// stepTo steps a second at a time (every check tick seen) up to at.
func (h *runnerHarness) stepTo(at time.Duration) {
	h.t.Helper()
	for h.now() < at {
		h.step(min(time.Second, at-h.now()))
	}
}

func (h *runnerHarness) waitParked() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	// Parked means waiting on both its check ticker and its sync timer
	// (the runner stops the timer before it does anything); a fake timer's
	// channel is buffered, so a Step right after the timer is made (before
	// the runner reaches its select) is not lost.
	for h.clock.Waiters() < 2 {
		if time.Now().After(deadline) {
			h.t.Fatal("runner never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

// signal is a change while the runner waits.
func (h *runnerHarness) signal() {
	h.waitParked()
	h.queue()
}

// signalSeen is a change while the runner waits, returning once the
// runner has looked at it (at whether it must wait for a slice) and is
// waiting again, or syncing: steps that follow cannot overtake it.
func (h *runnerHarness) signalSeen() {
	h.t.Helper()
	h.waitParked()
	h.mu.Lock()
	looked := h.looked
	h.mu.Unlock()
	h.queue()
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.mu.Lock()
		seen := h.looked > looked
		h.mu.Unlock()
		if seen {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatal("the runner never looked at the change")
		}
		time.Sleep(time.Millisecond)
	}
}

// queue is a change at any time, as the tracker signals one (coalesced).
func (h *runnerHarness) queue() {
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// stepUntilSync steps a second at a time until a sync starts, at most
// steps times: for when the next check may come a few ticks late (a step
// that lands while a check runs counts in its duration, which spaces the
// next check out).
func (h *runnerHarness) stepUntilSync(steps int) syncCall {
	h.t.Helper()
	for range steps {
		h.step(time.Second)
		select {
		case c := <-h.syncs:
			return c
		case <-time.After(50 * ms):
		}
	}
	return h.next()
}

func (h *runnerHarness) next() syncCall {
	h.t.Helper()
	select {
	case c := <-h.syncs:
		return c
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no sync by %v", h.now())
	}
	return syncCall{}
}

func (h *runnerHarness) expect(at time.Duration, full bool) {
	h.t.Helper()
	if c := h.next(); c.at != at || c.full != full {
		h.t.Fatalf("sync at %v full=%v, want at %v full=%v", c.at, c.full, at, full)
	}
}

func (h *runnerHarness) expectNone() {
	h.t.Helper()
	h.waitParked()
	select {
	case c := <-h.syncs:
		h.t.Fatalf("unexpected sync at %v full=%v", c.at, c.full)
	default:
	}
}

const ms = time.Millisecond

func TestRunnerFirstSyncIsFullAndImmediate(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.expectNone()
}

// The first sync (here 8s, as at 10,000 services) and a repair of drift
// are full and slow; a change queued 100ms into one is applied as soon as
// it ends, not one --min-sync-period later, and before an integrity check
// that came due meanwhile (each check here takes 50ms). Repeated, since
// the runner would pick between a ready check tick and a ready change at
// random if it did not put the change first.
func TestRunnerChangeQueuedDuringAFullSyncIsAppliedRightAfterIt(t *testing.T) {
	const takes = 8 * time.Second
	h := newRunnerHarness(t, func(h *runnerHarness) {
		h.checkTakes = 50 * ms
		h.inSync = func(n int) {
			if n%2 == 1 {
				return // the partial syncs of the changes take no time
			}
			h.clock.Step(100 * ms)
			h.queue()
			h.clock.Step(takes - 100*ms)
			h.set(false, true)
		}
	})
	h.expect(0, true)
	h.expect(takes, false)
	for range 8 {
		h.expectNone()
		h.set(false, false) // another program flushes the rules
		c := h.stepUntilSync(10)
		if !c.full {
			t.Fatalf("drift repaired at %v by a partial sync", c.at)
		}
		h.expect(c.at+takes, false)
	}
}

// A Service and its EndpointSlice are two changes a few milliseconds
// apart; after a quiet spell neither waits for --min-sync-period, whether
// the second comes after the first one's sync or during it.
func TestRunnerServiceAndSliceWrittenTogetherDoNotWaitMinSyncPeriod(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)

	h.step(5 * time.Second)
	h.signal() // the Service
	h.expect(5*time.Second, false)
	h.step(5 * ms)
	h.signal() // its EndpointSlice
	h.expect(5*time.Second+5*ms, false)

	// The same when the slice comes while the Service's sync (40ms) runs.
	h.mu.Lock()
	h.inSync = func(n int) {
		if n == 3 {
			h.clock.Step(5 * ms)
			h.queue()
			h.clock.Step(35 * ms)
		}
	}
	h.mu.Unlock()
	h.stepTo(10 * time.Second)
	h.signal()
	h.expect(10*time.Second, false)
	h.expect(10*time.Second+40*ms, false)
	h.expectNone()
}

// A new Service waits for its first EndpointSlice instead of being
// programmed alone, so that the pair costs one sync: pairs written every
// 1.2s (as make bench writes them) never wait for --min-sync-period,
// where a sync for each would have spent the burst allowance and left
// every second slice waiting most of a second. A Service whose slice
// never comes is programmed SliceWait after it was queued; a change that
// is not a new Service is never held.
func TestRunnerNewServiceWaitsForItsSlice(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.stepTo(5 * time.Second)
	for range 8 {
		at := h.now()
		h.await(at) // the Service
		h.signalSeen()
		h.step(5 * ms)
		h.expectNone()
		h.await(0) // its EndpointSlice
		h.signalSeen()
		h.expect(at+5*ms, false)
		h.step(1200*ms - 5*ms)
	}

	at := h.now()
	h.await(at) // a Service whose slice never comes
	h.signalSeen()
	h.step(200 * ms)
	h.expectNone()
	h.step(50 * ms)
	h.expect(at+250*ms, false)
	h.await(0)

	h.stepTo(20 * time.Second)
	h.signalSeen() // an endpoint change: at once
	h.expect(20*time.Second, false)
}

// --min-sync-period still bounds how hard svcproxy drives the kernel: a
// steady stream of changes (one every 100ms for 10s) is applied once a
// second, after the two back to back of the burst allowance.
func TestRunnerPacesAStreamOfChangesToMinSyncPeriod(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.stepTo(5 * time.Second)
	want := map[time.Duration]bool{5 * time.Second: true, 5*time.Second + 100*ms: true}
	for at := 6 * time.Second; at <= 15*time.Second; at += time.Second {
		want[at] = true
	}
	for ; h.now() < 15*time.Second; h.step(100 * ms) {
		h.signal()
		if want[h.now()] {
			h.expect(h.now(), false)
		}
	}
	h.expect(15*time.Second, false) // the last change, from 14.9s
	h.stepTo(20 * time.Second)
	h.expectNone()
}

// A burst of changes within --min-sync-period costs one sync once the
// burst allowance is spent.
func TestRunnerCoalescesBurstWithinMinSyncPeriod(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.step(5 * time.Second)
	h.signal()
	h.expect(5*time.Second, false)
	h.signal()
	h.expect(5*time.Second, false)
	h.step(100 * ms)
	for range 5 {
		h.signal()
	}
	h.step(400 * ms)
	h.expectNone()
	h.step(500 * ms)
	h.expect(6*time.Second, false)
	h.expectNone()
}

func TestRunnerChangeAfterQuietPeriodSyncsAtOnce(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.step(5 * time.Second)
	h.signal()
	h.expect(5*time.Second, false)
}

// Idle (nothing changes, nothing drifts, nothing fails) means no sync at
// all, and no full sync until the full-sync period, an hour: not every
// --sync-period as before (8s here; kube-proxy's 30s by default).
func TestRunnerIdleMeansNoFullSyncUntilTheFullSyncPeriod(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.stepTo(2 * time.Minute)
	h.expectNone()
	for h.now() < time.Hour-time.Second {
		h.step(min(10*time.Minute, time.Hour-time.Second-h.now()))
	}
	h.expectNone()
	h.step(time.Second)
	h.expect(time.Hour, true)
	h.expectNone()

	// Partial syncs in between do not put it off.
	h.step(10 * time.Minute)
	h.signal()
	h.expect(time.Hour+10*time.Minute, false)
	h.step(50*time.Minute - time.Second)
	h.expectNone()
	h.step(time.Second)
	h.expect(2*time.Hour, true)
}

func TestRunnerRetriesFailuresWithBackoffAsFullSyncs(t *testing.T) {
	h := newRunnerHarness(t, func(h *runnerHarness) { h.fail = true })
	h.expect(0, true)
	// A change does not cut the backoff short.
	h.step(500 * ms)
	h.signal()
	h.expectNone()
	// 1s, 2s, 4s, then capped at --sync-period (8s here).
	want := []time.Duration{1, 3, 7, 15, 23}
	for _, at := range want {
		h.stepTo(at * time.Second)
		h.expect(at*time.Second, true)
	}
	h.set(false, true)
	h.stepTo(30 * time.Second)
	h.expectNone()
	h.stepTo(31 * time.Second)
	h.expect(31*time.Second, true)
	h.signal()
	h.expect(31*time.Second, false)
	h.stepTo(time.Minute)
	h.expectNone()
}

// Another program flushes the rules: the check (every second) sees it and
// a full sync repairs it at once; after that the runner is idle again.
func TestRunnerResyncsFullyWhenRulesGoMissing(t *testing.T) {
	h := newRunnerHarness(t, func(h *runnerHarness) { h.flushAt = 3500 * ms })
	h.expect(0, true)
	h.stepTo(4 * time.Second)
	h.expect(4*time.Second, true)
	h.stepTo(time.Minute)
	h.expectNone()
	// A change right after a repair is not held up by it.
	h.flush(time.Minute + 500*ms)
	h.step(time.Second)
	h.expect(61*time.Second, true)
	h.signal()
	h.expect(61*time.Second, false)
	h.stepTo(2 * time.Minute)
	h.expectNone()
}

// A backend with work in progress (real servers draining) gets a partial
// sync when it asks for one, paced like changes, and none once it stops
// asking.
func TestRunnerRechecksWhenABackendAsks(t *testing.T) {
	h := newRunnerHarness(t, func(h *runnerHarness) {
		h.rechecks = []time.Duration{3 * time.Second, 500 * ms, 500 * ms, 500 * ms}
	})
	h.expect(0, true)
	h.step(2 * time.Second)
	h.expectNone()
	h.step(time.Second)
	h.expect(3*time.Second, false)
	h.step(500 * ms)
	h.expect(3500*ms, false) // the burst allowance
	h.step(500 * ms)
	h.expect(4*time.Second, false)
	// Asked again after half a second: held to --min-sync-period.
	h.step(500 * ms)
	h.expectNone()
	h.step(500 * ms)
	h.expect(5*time.Second, false)
	h.stepTo(15 * time.Second)
	h.expectNone()
}

func TestScheduleBackoffIsCappedAtSyncPeriod(t *testing.T) {
	cfg := RunnerConfig{RetryInitial: time.Second, SyncPeriod: 10 * time.Second}
	want := []time.Duration{1, 2, 4, 8, 10, 10}
	for i, w := range want {
		if got := backoff(cfg, i+1); got != w*time.Second {
			t.Fatalf("backoff(%d) = %v, want %v", i+1, got, w*time.Second)
		}
	}
}

func TestDefaultRunnerConfigIsKubeProxys(t *testing.T) {
	cfg := DefaultRunnerConfig()
	if cfg.FullSyncPeriod != time.Hour || cfg.SyncPeriod != 30*time.Second || cfg.MinSyncPeriod != time.Second || cfg.BurstSyncs != 2 {
		t.Fatalf("defaults %+v: want hourly full syncs, retries within 30s, 1s min sync period, bursts of 2", cfg)
	}
}

// nextSync is pure: a table of schedules and when each syncs next.
func TestScheduleNextSync(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	cfg := harnessConfig()
	one := cfg
	one.BurstSyncs = 1
	eager := cfg
	eager.MinSyncPeriod = 0
	noFull := cfg
	noFull.FullSyncPeriod = 0
	noSync := cfg
	noSync.SyncPeriod = 0
	s := time.Second
	for _, tc := range []struct {
		name     string
		cfg      RunnerConfig
		s        schedule
		wantAt   time.Time
		wantFull bool
	}{
		{"start", cfg, schedule{pending: true, full: true, urgent: true}, time.Time{}, true},
		{"idle: the full-sync period", cfg,
			schedule{lastSync: at(10 * s), lastFull: at(0), paced: at(11 * s)}, at(time.Hour), true},
		{"a change after a quiet spell: now", cfg,
			schedule{pending: true, lastSync: at(0), lastFull: at(0), paced: at(s)}, at(0), false},
		{"the second of a pair: at once", cfg,
			schedule{pending: true, lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(5 * s), false},
		{"the third: one period after the first", cfg,
			schedule{pending: true, lastSync: at(5 * s), lastFull: at(0), paced: at(7 * s)}, at(6 * s), false},
		{"no burst: one period after the last", one,
			schedule{pending: true, lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(6 * s), false},
		{"no min sync period: now", eager,
			schedule{pending: true, lastSync: at(5 * s), lastFull: at(0), paced: at(5 * s)}, at(5 * s), false},
		{"a change waiting when the full sync comes due rides in it", cfg,
			schedule{pending: true, lastSync: at(time.Hour), lastFull: at(0), paced: at(time.Hour + 2*s)}, at(time.Hour + s), true},
		{"a change just before: partial", cfg,
			schedule{pending: true, lastSync: at(time.Hour - 3*s), lastFull: at(0), paced: at(time.Hour)}, at(time.Hour - s), false},
		{"drift: now, full, whatever the pace", cfg,
			schedule{urgent: true, full: true, lastSync: at(5 * s), lastFull: at(0), paced: at(7 * s)}, at(5 * s), true},
		{"failed twice: backoff, full", cfg,
			schedule{pending: true, full: true, failures: 2, lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(7 * s), true},
		{"failed often: capped at the sync period", cfg,
			schedule{full: true, failures: 9, lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(13 * s), true},
		{"a retry still keeps the pace", eager,
			schedule{full: true, failures: 1, lastSync: at(5 * s), lastFull: at(0), paced: at(9 * s)}, at(9 * s), true},
		{"recheck: partial, when asked", cfg,
			schedule{recheck: at(8 * s), lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(8 * s), false},
		{"recheck: paced", cfg,
			schedule{recheck: at(5*s + 100*ms), lastSync: at(5 * s), lastFull: at(0), paced: at(7 * s)}, at(6 * s), false},
		{"recheck after the full sync is due: the full sync", cfg,
			schedule{recheck: at(2 * time.Hour), lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(time.Hour), true},
		{"no full-sync period: idle for good", noFull,
			schedule{lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, never, true},
		{"no full-sync period: a change is partial", noFull,
			schedule{pending: true, lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(5 * s), false},
		{"no sync period: retries capped at kube-proxy's 30s", noSync,
			schedule{full: true, failures: 9, lastSync: at(5 * s), lastFull: at(0), paced: at(6 * s)}, at(35 * s), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotAt, gotFull := tc.s.nextSync(tc.cfg)
			if !gotAt.Equal(tc.wantAt) || gotFull != tc.wantFull {
				t.Errorf("nextSync = %v full=%v, want %v full=%v", gotAt.Sub(t0), gotFull, tc.wantAt.Sub(t0), tc.wantFull)
			}
		})
	}
}

// afterSync moves the pace one period past the later of itself and the
// sync's start: a burst spends it ahead, a quiet spell lets it fall back.
func TestScheduleAfterSyncPaces(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	cfg := harnessConfig()
	var s schedule
	for _, step := range []struct {
		start, wantPaced, wantAllowed time.Duration
	}{
		{0, time.Second, 0},
		{5 * time.Second, 6 * time.Second, 5 * time.Second},
		{5 * time.Second, 7 * time.Second, 6 * time.Second},
		{6 * time.Second, 8 * time.Second, 7 * time.Second},
		{20 * time.Second, 21 * time.Second, 20 * time.Second},
	} {
		s = s.afterSync(cfg, t0.Add(step.start), false, 0, nil)
		if got := s.paced.Sub(t0); got != step.wantPaced {
			t.Fatalf("after a sync at %v paced = %v, want %v", step.start, got, step.wantPaced)
		}
		if got := s.allowed(cfg).Sub(t0); got != step.wantAllowed {
			t.Fatalf("after a sync at %v the next may start at %v, want %v", step.start, got, step.wantAllowed)
		}
	}
	s = s.afterSync(cfg, t0.Add(30*time.Second), true, 0, errors.New("no"))
	if s.failures != 1 || !s.full || !s.lastFull.IsZero() {
		t.Fatalf("a failed full sync: %+v", s)
	}
	s = s.afterSync(cfg, t0.Add(31*time.Second), true, 0, nil)
	if s.failures != 0 || s.full || s.pending || s.lastFull.Sub(t0) != 31*time.Second {
		t.Fatalf("a successful full sync: %+v", s)
	}
}

func TestRunnerSpacesOutSlowIntegrityChecks(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	checks := 0
	cost := 500 * time.Millisecond
	slowCheck := func(context.Context) bool {
		checks++
		clk.Step(cost) // the check itself takes this long
		return true
	}
	r := NewRunner(RunnerConfig{CheckPeriod: time.Second}, clk, nil, slowCheck, zap.NewNop())
	var costs checkCosts
	waits := func() time.Duration {
		t.Helper()
		start := clk.Now()
		_, next, _ := r.runCheck(context.Background(), nil, &costs)
		return next.Sub(start)
	}
	if got := waits(); got != 25*time.Second {
		t.Fatalf("next check after %v, want 25s (50x the check's own duration)", got)
	}
	// One check slowed by a busy moment does not put the next one off.
	cost = 5 * time.Second
	if got := waits(); got != 25*time.Second {
		t.Errorf("after one slow check the next waits %v, want 25s (50x the cheapest of the last three)", got)
	}
	// Checks that stay slow are spaced by what they cost.
	waits()
	if got := waits(); got != 250*time.Second {
		t.Errorf("after three 5s checks the next waits %v, want 250s", got)
	}
	if checks != 4 {
		t.Fatalf("checks = %d", checks)
	}

	fast := NewRunner(RunnerConfig{CheckPeriod: time.Second}, clk, nil, func(context.Context) bool { return true }, zap.NewNop())
	start := clk.Now()
	_, next, _ := fast.runCheck(context.Background(), nil, &checkCosts{})
	if got := next.Sub(start); got != time.Second {
		t.Fatalf("a quick check is due again after %v, want the 1s check period", got)
	}
}

// A change that comes while an integrity check runs stops the check (one
// can take seconds at 10,000 services): the change syncs at once, the
// stopped check's verdict starts no full sync, and the check runs again
// at a later tick.
func TestRunnerChangeInterruptsAnIntegrityCheck(t *testing.T) {
	checking, stopped := make(chan int, 10), make(chan struct{}, 1)
	h := newRunnerHarness(t, func(h *runnerHarness) {
		h.inCheck = func(ctx context.Context, n int) bool {
			checking <- n
			if n > 0 {
				return true
			}
			select { // the first check lasts until it is stopped
			case <-ctx.Done():
				stopped <- struct{}{}
				return false
			case <-time.After(5 * time.Second):
				return true
			}
		}
	})
	h.expect(0, true)
	h.step(3 * time.Second) // past the pacing of the first sync: the change may sync at once
	waitFor := func(what string, c <-chan struct{}) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(5 * time.Second):
			t.Fatal(what)
		}
	}
	started := make(chan struct{})
	go func() { <-checking; close(started) }()
	waitFor("no integrity check started", started)
	h.queue() // the API server's change, mid-check
	waitFor("the change did not stop the integrity check", stopped)
	h.expect(3*time.Second, false)
	h.step(time.Second)
	select {
	case n := <-checking:
		if n != 1 {
			t.Fatalf("check %d, want the second", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no integrity check after the interrupted one")
	}
	h.expectNone() // the second check passed: no full sync
}

// Changes stop at most maxCheckStops checks in a row: the next one runs
// to its end, so a node whose services never stop changing still has
// its drift repaired.
func TestRunnerChangesDoNotStarveTheIntegrityCheck(t *testing.T) {
	checking, release := make(chan int, 10), make(chan struct{})
	h := newRunnerHarness(t, func(h *runnerHarness) {
		h.inCheck = func(ctx context.Context, n int) bool {
			checking <- n
			if n < maxCheckStops {
				select {
				case <-ctx.Done():
					return false
				case <-time.After(5 * time.Second):
					return true
				}
			}
			<-release // the test has queued a change meanwhile
			if ctx.Err() != nil {
				t.Errorf("check %d was stopped too", n)
			}
			return true
		}
	})
	h.expect(0, true)
	nextCheck := func() int {
		t.Helper()
		h.step(3 * time.Second) // a check tick, past the pacing of the last sync
		select {
		case n := <-checking:
			return n
		case <-time.After(5 * time.Second):
			t.Fatal("no integrity check")
		}
		return -1
	}
	for i := range maxCheckStops {
		if n := nextCheck(); n != i {
			t.Fatalf("check %d, want %d", n, i)
		}
		h.queue()
		if c := h.next(); c.full {
			t.Fatalf("the change after stopped check %d synced fully", i)
		}
	}
	if n := nextCheck(); n != maxCheckStops {
		t.Fatalf("check %d, want %d", n, maxCheckStops)
	}
	h.queue()
	time.Sleep(50 * ms) // room for a wrong stop
	close(release)
	if c := h.next(); c.full {
		t.Fatal("the change after the check synced fully")
	}
}
