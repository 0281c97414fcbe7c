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
	// twice while conntrack still holds its closed connection (10 s),
	// which made a few thousand of 24,000 connections time out.
	maxConns = 12000
)

// connRate opens TCP connections from ns to target (host:port) with
// connWorkers workers for connWindow or maxConns connections, each closed at
// once with a reset (no TIME_WAIT), and returns the connections completed
// per second and the share of attempts that failed (timed out or were
// refused: a figure of the proxy's too) with the first failure's error.
// It fails only when none completed.
func connRate(ctx context.Context, ns *netnstest.NS, target string) (rate, failedShare float64, firstFailure string, err error) {
	ctx, cancel := context.WithTimeout(ctx, connWindow)
	defer cancel()
	var ok, failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var kindsMu sync.Mutex
	kinds := map[string]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for range connWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Entering the namespace once per worker, not per connection:
			// a socket belongs to the namespace of the thread that made it.
			err := ns.Do(func() error {
				d := net.Dialer{Timeout: connTimeout}
				for ctx.Err() == nil && ok.Load()+failed.Load() < maxConns {
					c, err := d.DialContext(ctx, "tcp", target)
					if err != nil {
						if ctx.Err() == nil {
							failed.Add(1)
							errOnce.Do(func() { firstErr = err })
							kindsMu.Lock()
							kinds[failureKind(err)]++
							kindsMu.Unlock()
						}
						continue
					}
					_ = c.(*net.TCPConn).SetLinger(0)
					_ = c.Close()
					ok.Add(1)
				}
				return nil
			})
			if err != nil {
				errOnce.Do(func() { firstErr = err })
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	n, bad := ok.Load(), failed.Load()
	if n == 0 {
		return 0, 0, "", fmt.Errorf("data plane: no connection to %s completed (%d failed), first error: %v", target, bad, firstErr)
	}
	if firstErr != nil {
		firstFailure = firstErr.Error() + " (" + countKinds(kinds) + ")"
	}
	return float64(n) / elapsed.Seconds(), float64(bad) / float64(n+bad), firstFailure, nil
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
