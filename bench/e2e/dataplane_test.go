package e2e

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// A window of connection attempts against a fake dial: nine of every ten
// connect in a minute, the tenth times out after 30 (its timeout). The
// clock is the probe's own and the window's context never ends by itself
// (as when its timer fires late on a busy machine), and a dial past its
// deadline fails at once, as Go's does. Only the attempts that timed out
// inside the window count as failures: not the one the window cut short,
// and none after it.
func TestConnProbeCountsOnlyFailuresInsideTheWindow(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	const window, took, timeout = 100 * time.Minute, time.Minute, 30 * time.Minute
	attempts := 0
	dial := func(ctx context.Context) (net.Conn, error) {
		deadline, _ := ctx.Deadline()
		if !clk.Now().Before(deadline) {
			return nil, os.ErrDeadlineExceeded // past its deadline: at once
		}
		attempts++
		if attempts%10 != 0 {
			clk.Step(took)
			client, server := net.Pipe()
			_ = server.Close()
			return client, nil
		}
		clk.Step(min(timeout, deadline.Sub(clk.Now())))
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	}
	p := connProbe{workers: 1, window: window, max: 1000, now: clk.Now, dial: dial,
		within: func(f func() error) error { return f() }}
	res := p.run(context.Background())

	// Two cycles of 9 + 30 minutes, 9 more connections by minute 87, and the
	// 30th attempt is cut short at minute 100.
	if res.ok != 27 || res.failed != 2 || attempts != 30 {
		t.Errorf("ok %d, failed %d in %d attempts; want 27 and 2 in 30", res.ok, res.failed, attempts)
	}
	if res.elapsed != window {
		t.Errorf("elapsed %v, want the window, %v", res.elapsed, window)
	}
	if res.kinds["timed out"] != 2 || res.firstErr == nil {
		t.Errorf("failures by kind %v, first %v; want 2 timed out", res.kinds, res.firstErr)
	}
}

// The cap on connections ends the window early, and a cancelled caller
// ends it without counting the dials it cut short.
func TestConnProbeStopsAtItsCapAndOnCancel(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	dial := func(ctx context.Context) (net.Conn, error) {
		if err := ctx.Err(); err != nil {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
		}
		clk.Step(time.Millisecond)
		client, server := net.Pipe()
		_ = server.Close()
		return client, nil
	}
	inline := func(f func() error) error { return f() }
	capped := connProbe{workers: 2, window: time.Hour, max: 50, now: clk.Now, dial: dial, within: inline}.run(context.Background())
	if got := capped.ok + capped.failed; got < 50 || got > 51 || capped.failed != 0 {
		t.Errorf("capped at 50: ok %d, failed %d", capped.ok, capped.failed)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cancelled := connProbe{workers: 2, window: time.Hour, max: 50, now: clk.Now, dial: dial, within: inline}.run(ctx)
	if cancelled.ok != 0 || cancelled.failed != 0 {
		t.Errorf("cancelled: ok %d, failed %d; want neither", cancelled.ok, cancelled.failed)
	}
}
