package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
)

// The data-plane figure: how many new connections a client pod opens per
// second through one ClusterIP. Only a connection's first packet meets the
// proxy's NAT rules, so the figure moves with what that packet walks: a
// chain of one rule per service (kube-proxy's iptables mode) slows down as
// N grows, a map or a bucketed dispatch (nftables, svcproxy) stays flat.
// Measured at N and at baseServices, with the same proxy, the pair says
// how much of its speed the proxy keeps as the cluster grows.
const (
	// baseServices is the size the data plane is compared against.
	baseServices = 10
	// connWorkers open connections in parallel: enough to keep both
	// cores busy with packets, few enough that the client is not the limit.
	connWorkers = 4
	// connWindow is how long the rate is measured; connTimeout bounds
	// one connection attempt within it.
	connWindow  = 2 * time.Second
	connTimeout = time.Second
	// maxConns ends the window early: well below the 28,000 ports of
	// Linux's default ephemeral range, so that no client port is used
	// twice in a window while conntrack (or IPVS) still holds its closed
	// connection (10 s), which would measure that reuse, not the rules.
	maxConns = 12000
)

// connRate opens TCP connections from ns to target (host:port) with
// connWorkers workers for connWindow or maxConns connections, each closed at
// once with a reset (no TIME_WAIT), and returns the connections completed
// per second and the share of attempts that failed (timed out or were
// refused: a figure of the proxy's too) with the first failure's error.
// It fails only when none completed.
func connRate(ctx context.Context, ns *netnstest.NS, target string) (rate, failedShare float64, firstFailure string, err error) {
	d := net.Dialer{Timeout: connTimeout}
	p := connProbe{
		workers: connWorkers, window: connWindow, max: maxConns, now: time.Now,
		dial: func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) },
		// Entering the namespace once per worker, not per connection: a
		// socket belongs to the namespace of the thread that made it.
		within: ns.Do,
	}
	res := p.run(ctx)
	if res.ok == 0 {
		return 0, 0, "", fmt.Errorf("data plane: no connection to %s completed (%d failed), first error: %v", target, res.failed, res.firstErr)
	}
	if res.firstErr != nil {
		firstFailure = res.firstErr.Error() + " (" + countKinds(res.kinds) + ")"
	}
	return float64(res.ok) / res.elapsed.Seconds(), float64(res.failed) / float64(res.ok+res.failed), firstFailure, nil
}

// connProbe is one window of connection attempts; its clock, its dial and
// the way a worker enters the client's namespace are a test's to replace.
type connProbe struct {
	workers int
	window  time.Duration
	max     int64
	now     func() time.Time
	// dial opens one connection; it gives up at ctx's deadline.
	dial   func(ctx context.Context) (net.Conn, error)
	within func(func() error) error
}

type probeResult struct {
	ok, failed int64
	firstErr   error
	kinds      map[string]int
	elapsed    time.Duration
}

// run opens connections until the window ends by the probe's clock. The
// end is read from the clock, not from a context's cancellation: that
// comes from a timer that fires a little late, and meanwhile every dial,
// its deadline passed, fails at once with "i/o timeout" (thousands of
// them on a busy machine, all counted as the proxy's failures until this
// was found). For the same reason an attempt that ends with the window
// is not counted: the window cut it short, the proxy did not fail it.
func (p connProbe) run(ctx context.Context) probeResult {
	start := p.now()
	end := start.Add(p.window)
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var ok, failed atomic.Int64
	var mu sync.Mutex
	res := probeResult{kinds: map[string]int{}}
	record := func(err error, kind string) {
		mu.Lock()
		defer mu.Unlock()
		if res.firstErr == nil {
			res.firstErr = err
		}
		if kind != "" {
			res.kinds[kind]++
		}
	}
	open := func() bool { return p.now().Before(end) && ok.Load()+failed.Load() < p.max }
	var wg sync.WaitGroup
	for range p.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.within(func() error {
				for open() {
					c, err := p.dial(ctx)
					if err != nil {
						if ctx.Err() != nil || !p.now().Before(end) {
							return nil // cut short by the window, or by the caller
						}
						failed.Add(1)
						record(err, failureKind(err))
						continue
					}
					if tc, isTCP := c.(*net.TCPConn); isTCP {
						_ = tc.SetLinger(0)
					}
					_ = c.Close()
					ok.Add(1)
				}
				return nil
			})
			if err != nil {
				record(err, "")
			}
		}()
	}
	wg.Wait()
	res.ok, res.failed, res.elapsed = ok.Load(), failed.Load(), p.now().Sub(start)
	return res
}

// failureKind names what went wrong with a connection attempt.
func failureKind(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no local port"
	}
	return err.Error()
}

// countKinds lists the failures by kind, most first.
func countKinds(kinds map[string]int) string {
	names := slices.SortedFunc(maps.Keys(kinds), func(a, b string) int { return cmp.Or(kinds[b]-kinds[a], strings.Compare(a, b)) })
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%d %s", kinds[k], k)
	}
	return strings.Join(parts, ", ")
}

// hostPort is the host:port of an http URL.
func hostPort(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	return u.Host, nil
}
