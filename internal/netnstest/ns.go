// Package netnstest is the test bed for svcproxy's datapath tests: unnamed
// network namespaces for a node, its pods and an outside client, joined by
// veth pairs, with servers that say who answered and clients that tell a
// reject from a drop. Nothing it makes is visible in `ip netns list`, and
// everything vanishes when the test ends, even if the test binary is killed.
package netnstest

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// init pins the main goroutine to the process's main thread. Do locks the
// thread it runs on and lets it exit afterwards, but the runtime cannot end
// the main thread: it would park it forever still inside the test's
// namespace, which would then outlive the test, and /proc/self/net would
// show that namespace instead of the host's.
func init() { runtime.LockOSThread() }

// DefaultTimeout bounds a dial unless the namespace's Timeout says otherwise.
const DefaultTimeout = time.Second

// RequireRoot skips the test when it cannot create network namespaces.
func RequireRoot(t TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
}

// Do runs f on an OS thread switched into ns. The thread is never handed
// back to Go's scheduler: it exits with f, so no other goroutine can ever run
// in a namespace it did not ask for. Processes started inside f inherit ns,
// and sockets opened inside f stay in ns wherever they are used later.
//
// f must not call t.FailNow (it runs on another goroutine); return an error.
func Do(ns netns.NsHandle, f func() error) error {
	type outcome struct {
		err      error
		panicked any
		returned bool
	}
	done := make(chan outcome, 1)
	go func() {
		var out outcome
		defer func() {
			if !out.returned {
				out.panicked = recover()
			}
			done <- out
		}()
		// Locked and never unlocked, so the runtime kills the thread when
		// this goroutine ends.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns), unix.CLONE_NEWNET); err != nil {
			out.err, out.returned = fmt.Errorf("entering network namespace: %w", err), true
			return
		}
		out.err = f()
		out.returned = true
	}()
	out := <-done
	switch {
	case out.panicked != nil:
		panic(out.panicked)
	case !out.returned:
		return errors.New("function run in network namespace exited without returning (t.FailNow inside Do?)")
	}
	return out.err
}

// newUnnamedNS creates a network namespace that lives only as long as the
// returned handle (and any socket or process inside it).
func newUnnamedNS() (netns.NsHandle, error) {
	type created struct {
		ns  netns.NsHandle
		err error
	}
	done := make(chan created, 1)
	go func() {
		runtime.LockOSThread() // the thread dies in the new namespace, with this goroutine
		ns, err := netns.New()
		done <- created{ns, err}
	}()
	c := <-done
	return c.ns, c.err
}

// NS is one network namespace of a test: a node, a pod or an outside client.
type NS struct {
	Name string

	t      TB
	handle netns.NsHandle
	v4, v6 netip.Addr // the namespace's main addresses; invalid if it has none

	// Timeout bounds each dial from this namespace; a dropped packet shows
	// up as ErrTimeout after it.
	Timeout time.Duration

	mu      sync.Mutex
	servers []func() // closers of the servers started in this namespace
}

// NewNS creates an empty namespace with loopback up, removed when the test
// ends. Most tests want NewBed; this is for tests that need no traffic.
func NewNS(t TB, name string) *NS {
	t.Helper()
	RequireRoot(t)
	handle, err := newUnnamedNS()
	if err != nil {
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	ns := &NS{Name: name, t: t, handle: handle, Timeout: DefaultTimeout}
	t.Cleanup(ns.close)
	if err := ns.linkUp("lo"); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return ns
}

func (ns *NS) close() {
	ns.mu.Lock()
	servers := ns.servers
	ns.servers = nil
	ns.mu.Unlock()
	for _, stop := range servers {
		stop()
	}
	ns.handle.Close()
}

// Handle is the namespace's file descriptor, for netlink.NewHandleAt and Do.
func (ns *NS) Handle() netns.NsHandle { return ns.handle }

// Do runs f inside the namespace; see the package function Do.
func (ns *NS) Do(f func() error) error { return Do(ns.handle, f) }

// Netlink opens a route-netlink handle inside the namespace. The caller closes it.
func (ns *NS) Netlink() (*netlink.Handle, error) {
	return netlink.NewHandleAt(ns.handle, unix.NETLINK_ROUTE)
}

// IPv4 is the namespace's main IPv4 address (invalid for a bare NewNS).
func (ns *NS) IPv4() netip.Addr { return ns.v4 }

// IPv6 is the namespace's main IPv6 address (invalid for a bare NewNS).
func (ns *NS) IPv6() netip.Addr { return ns.v6 }

// Addr returns the main address of the same family as like.
func (ns *NS) Addr(like netip.Addr) netip.Addr {
	if like.Is4() {
		return ns.v4
	}
	return ns.v6
}

// Run runs a command inside the namespace and returns its standard output.
// A failure carries the command's standard error.
func (ns *NS) Run(name string, args ...string) (string, error) {
	return ns.RunStdin(nil, name, args...)
}

// RunStdin is Run with the given standard input.
func (ns *NS) RunStdin(stdin []byte, name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	err := ns.Do(func() error {
		cmd := exec.Command(name, args...)
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		return cmd.Run()
	})
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// MustRun is Run that fails the test on error.
func (ns *NS) MustRun(name string, args ...string) string {
	ns.t.Helper()
	out, err := ns.Run(name, args...)
	if err != nil {
		ns.t.Fatal(err)
	}
	return out
}

// Sysctl sets a sysctl of this namespace, key in dotted form
// ("net.ipv4.ip_forward"). Network sysctls are per namespace, so this writes
// /proc/sys from a thread inside it.
func (ns *NS) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return ns.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, ns.Name, err)
		}
		return nil
	})
}

func (ns *NS) linkUp(name string) error {
	h, err := ns.Netlink()
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns.Name, err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", name, ns.Name, err)
	}
	return h.LinkSetUp(link)
}

// onStop registers a server closer run when the test ends.
func (ns *NS) onStop(stop func()) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	ns.servers = append(ns.servers, stop)
}
