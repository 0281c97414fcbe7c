package sandbox

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
)

// ServeHTTP runs a small web server inside pod on port that answers every
// request with "<pod> from <client address>", so a caller sees both which
// backend answered and whether its source was masqueraded.
func ServeHTTP(t netnstest.TB, pod *netnstest.NS, port int) {
	var ln net.Listener
	err := pod.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("%s: serving HTTP on %d: %v", pod.Name, port, err)
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s from %s\n", pod.Name, r.RemoteAddr)
		}),
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// Client makes HTTP requests from inside a namespace, one new connection
// per request so each is balanced afresh.
func Client(ns *netnstest.NS, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialIn(ctx, ns, network, addr)
			},
		},
	}
}

// Get fetches url with c and returns the body's first line.
func Get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: HTTP %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return strings.TrimSpace(string(body)), nil
}

// Spread makes n requests to url and counts the answering backends (the
// first word of each answer). It stops at the first failure.
func Spread(c *http.Client, url string, n int) (map[string]int, error) {
	counts := map[string]int{}
	for range n {
		answer, err := Get(c, url)
		if err != nil {
			return counts, err
		}
		backend, _, _ := strings.Cut(answer, " ")
		counts[backend]++
	}
	return counts, nil
}

// WaitFor polls f every 100ms until it succeeds or timeout passes, and
// returns how long it took or f's last error.
func WaitFor(timeout time.Duration, f func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := f()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("after %v: %w", timeout.Round(time.Millisecond), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
