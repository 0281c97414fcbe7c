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
	changed chan struct{}
	syncs   chan syncCall

	mu      sync.Mutex
	fail    bool
	intact  bool
	started time.Time
	// rechecks are what the next syncs return as their recheck, in order.
	rechecks []time.Duration
}

type syncCall struct {
	at   time.Duration // since the harness started
	full bool
}

func newRunnerHarness(t *testing.T) *runnerHarness {
	h := &runnerHarness{
		t:       t,
		clock:   clocktesting.NewFakeClock(time.Unix(1_000_000, 0)),
		changed: make(chan struct{}, 1),
		syncs:   make(chan syncCall, 100),
		intact:  true,
	}
	h.started = h.clock.Now()
	cfg := RunnerConfig{
		MinSyncPeriod: time.Second,
		SyncPeriod:    30 * time.Second,
		CheckPeriod:   time.Second,
		RetryInitial:  time.Second,
		RetryMax:      8 * time.Second,
	}
	sync := func(ctx context.Context, full bool) (time.Duration, error) {
		h.syncs <- syncCall{at: h.clock.Since(h.started), full: full}
		h.mu.Lock()
		defer h.mu.Unlock()
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
		defer h.mu.Unlock()
		return h.intact
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		NewRunner(cfg, h.clock, sync, check, zap.NewNop()).Run(ctx, h.changed)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

func (h *runnerHarness) set(fail, intact bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail, h.intact = fail, intact
}

// step advances the fake clock once the runner is parked on its timers, so
// no tick is lost to a race with the runner's goroutine.
func (h *runnerHarness) step(d time.Duration) {
	h.t.Helper()
	h.waitParked()
	h.clock.Step(d)
}

func (h *runnerHarness) waitParked() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	// Parked means waiting on both its check ticker and its sync timer; a
	// fake timer's channel is buffered, so a Step right after the timer is
	// made (before the runner reaches its select) is not lost.
	for h.clock.Waiters() < 2 {
		if time.Now().After(deadline) {
			h.t.Fatal("runner never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *runnerHarness) signal() {
	h.waitParked()
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

func (h *runnerHarness) expect(at time.Duration, full bool) {
	h.t.Helper()
	select {
	case c := <-h.syncs:
		if c.at != at || c.full != full {
			h.t.Fatalf("sync at %v full=%v, want at %v full=%v", c.at, c.full, at, full)
		}
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no sync, want one at %v full=%v", at, full)
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

func TestRunnerFirstSyncIsFullAndImmediate(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.expectNone()
}

func TestRunnerCoalescesBurstWithinMinSyncPeriod(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.step(100 * time.Millisecond)
	for i := 0; i < 5; i++ {
		h.signal()
	}
	h.step(400 * time.Millisecond)
	h.expectNone()
	h.step(500 * time.Millisecond)
	h.expect(time.Second, false)
	h.expectNone()
}

func TestRunnerChangeAfterQuietPeriodSyncsAtOnce(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.step(5 * time.Second)
	h.signal()
	h.expect(5*time.Second, false)
}

func TestRunnerFullSyncEverySyncPeriod(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	for i := 0; i < 29; i++ {
		h.step(time.Second)
	}
	h.expectNone()
	h.step(time.Second)
	h.expect(30*time.Second, true)
}

func TestRunnerRetriesFailuresWithBackoffAsFullSyncs(t *testing.T) {
	h := newRunnerHarness(t)
	h.set(true, true)
	h.expect(0, true)
	// 1s, 2s, 4s, then capped at 8s.
	want := []time.Duration{1, 3, 7, 15, 23}
	for _, at := range want {
		for h.clock.Since(h.started) < at*time.Second {
			h.step(time.Second)
		}
		h.expect(at*time.Second, true)
	}
	h.set(false, true)
	for h.clock.Since(h.started) < 31*time.Second {
		h.step(time.Second)
	}
	h.expect(31*time.Second, true)
	h.signal()
	h.step(time.Second)
	h.expect(32*time.Second, false)
}

func TestRunnerResyncsFullyWhenRulesGoMissing(t *testing.T) {
	h := newRunnerHarness(t)
	h.expect(0, true)
	h.step(3 * time.Second)
	h.expectNone()
	h.set(false, false)
	h.step(time.Second)
	h.expect(4*time.Second, true)
}

// A backend with work in progress (real servers draining) gets a partial
// sync when it asks for one, not earlier than --min-sync-period after the
// last, and none once it stops asking.
func TestRunnerRechecksWhenABackendAsks(t *testing.T) {
	h := newRunnerHarness(t)
	h.mu.Lock()
	h.rechecks = []time.Duration{3 * time.Second, 500 * time.Millisecond}
	h.mu.Unlock()
	h.expect(0, true)
	h.step(2 * time.Second)
	h.expectNone()
	h.step(time.Second)
	h.expect(3*time.Second, false)
	// Asked again after half a second: held to the 1s minimum period.
	h.step(500 * time.Millisecond)
	h.expectNone()
	h.step(500 * time.Millisecond)
	h.expect(4*time.Second, false)
	for range 10 {
		h.step(time.Second)
	}
	h.expectNone()
}

func TestScheduleBackoffIsCapped(t *testing.T) {
	cfg := RunnerConfig{RetryInitial: time.Second, RetryMax: 10 * time.Second}
	got := []time.Duration{}
	for f := 1; f <= 6; f++ {
		got = append(got, backoff(cfg, f))
	}
	want := []time.Duration{1, 2, 4, 8, 10, 10}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoff(%d) = %v, want %v", i+1, got[i], want[i]*time.Second)
		}
	}
}

func TestRunnerSpacesOutSlowIntegrityChecks(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	checks := 0
	slowCheck := func(context.Context) bool {
		checks++
		clk.Step(500 * time.Millisecond) // the check itself takes half a second
		return true
	}
	r := NewRunner(RunnerConfig{CheckPeriod: time.Second}, clk, nil, slowCheck, zap.NewNop())
	_, next := r.runCheck(context.Background())
	if got := next.Sub(time.Unix(0, 0)); got != 5*time.Second {
		t.Fatalf("next check after %v, want 5s (10x the check's own duration)", got)
	}
	fast := NewRunner(RunnerConfig{CheckPeriod: time.Second}, clk, nil, func(context.Context) bool { return true }, zap.NewNop())
	start := clk.Now()
	_, next = fast.runCheck(context.Background())
	if got := next.Sub(start); got != time.Second {
		t.Fatalf("a quick check is due again after %v, want the 1s check period", got)
	}
	if checks != 1 {
		t.Fatalf("checks = %d", checks)
	}
}
