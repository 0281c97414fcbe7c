package netnstest

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func TestPodsNodeAndOutsideReachEachOther(t *testing.T) {
	bed := NewBed(t, 2)
	bed.Pod(1).ServeTCP(8080)
	bed.Pod(1).ServeUDP(5353)
	bed.Node().ServeTCP(10250)
	bed.Node().ServeUDP(10250)

	cases := []struct {
		name   string
		client *NS
		dst    netip.Addr
		port   uint16
		want   string
		source netip.Addr
	}{
		{"pod to pod v4", bed.Pod(0), bed.Pod(1).IPv4(), 8080, "pod-1", bed.Pod(0).IPv4()},
		{"pod to pod v6", bed.Pod(0), bed.Pod(1).IPv6(), 8080, "pod-1", bed.Pod(0).IPv6()},
		{"node to pod v4", bed.Node(), bed.Pod(1).IPv4(), 8080, "pod-1", bed.PodGateway(bed.Pod(1).IPv4())},
		{"node to pod v6", bed.Node(), bed.Pod(1).IPv6(), 8080, "pod-1", bed.PodGateway(bed.Pod(1).IPv6())},
		{"outside to pod v4", bed.Outside(), bed.Pod(1).IPv4(), 8080, "pod-1", bed.Outside().IPv4()},
		{"outside to pod v6", bed.Outside(), bed.Pod(1).IPv6(), 8080, "pod-1", bed.Outside().IPv6()},
		{"outside to node v4", bed.Outside(), bed.Node().IPv4(), 10250, "node", bed.Outside().IPv4()},
		{"outside to node v6", bed.Outside(), bed.Node().IPv6(), 10250, "node", bed.Outside().IPv6()},
		{"pod to node v4", bed.Pod(0), bed.Node().IPv4(), 10250, "node", bed.Pod(0).IPv4()},
		{"pod to node v6", bed.Pod(0), bed.Node().IPv6(), 10250, "node", bed.Pod(0).IPv6()},
	}
	for _, c := range cases {
		for _, network := range []string{"tcp", "udp"} {
			port := c.port
			if network == "udp" && c.want == "pod-1" {
				port = 5353
			}
			dst := netip.AddrPortFrom(c.dst, port)
			got, err := c.client.Dial(network, dst)
			if err != nil {
				t.Errorf("%s %s: %v", c.name, network, err)
				continue
			}
			if got.Server != c.want || got.Source.Addr() != c.source {
				t.Errorf("%s %s to %s: answered %q, want %s from %s", c.name, network, dst, got, c.want, c.source)
			}
		}
	}
}

func TestDialTellsRejectFromDropFromUnreachable(t *testing.T) {
	bed := NewBed(t, 1)
	bed.Pod(0).Timeout = 300 * time.Millisecond
	// The node routes these ranges nowhere, each in its own way.
	bed.Node().MustRun("ip", "route", "add", "unreachable", "10.99.0.0/16")
	bed.Node().MustRun("ip", "route", "add", "blackhole", "10.98.0.0/16")

	cases := []struct {
		name    string
		network string
		dst     string
		want    error
	}{
		{"closed TCP port", "tcp", bed.Node().IPv4().String() + ":81", ErrRefused},
		{"closed UDP port", "udp", bed.Node().IPv4().String() + ":81", ErrRefused},
		{"closed TCP port v6", "tcp", "[" + bed.Node().IPv6().String() + "]:81", ErrRefused},
		{"unreachable route UDP", "udp", "10.99.0.1:53", ErrUnreachable},
		{"blackhole TCP", "tcp", "10.98.0.1:80", ErrTimeout},
		{"blackhole UDP", "udp", "10.98.0.1:53", ErrTimeout},
	}
	for _, c := range cases {
		got, err := bed.Pod(0).Dial(c.network, netip.MustParseAddrPort(c.dst))
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	// Only the SYN retransmitted after a second is sure to carry the ICMP
	// error back (see ErrUnreachable).
	bed.Pod(0).Timeout = 1500 * time.Millisecond
	if got, err := bed.Pod(0).DialTCP(netip.MustParseAddrPort("10.99.0.1:80")); !errors.Is(err, ErrUnreachable) {
		t.Errorf("unreachable route TCP: got %v, %v; want %v", got, err, ErrUnreachable)
	}
}

func TestDoRunsInTheNamespaceAndLeavesTheCallerAlone(t *testing.T) {
	ns := NewNS(t, "probe")
	before := nsInode(t, "/proc/thread-self/ns/net")
	var inside uint64
	err := ns.Do(func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		inside = st.Ino
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := fdInode(t, ns.Handle()); inside != want {
		t.Errorf("f ran in namespace %d, want %d", inside, want)
	}
	if after := nsInode(t, "/proc/thread-self/ns/net"); after != before {
		t.Errorf("caller moved from namespace %d to %d", before, after)
	}
	if err := ns.Do(func() error { return fmt.Errorf("boom") }); err == nil || err.Error() != "boom" {
		t.Errorf("Do returned %v, want f's error", err)
	}
}

// TestNothingOutlivesTheBed builds a bed in a subtest and then looks for any
// thread or file of this process still in one of its namespaces.
func TestNothingOutlivesTheBed(t *testing.T) {
	RequireRoot(t)
	var inodes []uint64
	t.Run("bed", func(t *testing.T) {
		bed := NewBed(t, 2)
		bed.Pod(0).ServeTCP(80)
		bed.Pod(1).ServeUDP(53)
		if _, err := bed.Pod(1).DialTCP(netip.AddrPortFrom(bed.Pod(0).IPv4(), 80)); err != nil {
			t.Fatal(err)
		}
		if _, err := bed.Pod(0).UDPClient(netip.AddrPortFrom(bed.Pod(1).IPv4(), 53)); err != nil {
			t.Fatal(err)
		}
		for _, ns := range append([]*NS{bed.Node(), bed.Outside()}, bed.Pods()...) {
			inodes = append(inodes, fdInode(t, ns.Handle()))
		}
	})
	// Threads that ran Do exit just after their goroutine does: give them a moment.
	var left []string
	for range 50 {
		if left = refsTo(inodes); len(left) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range left {
		t.Errorf("%s still refers to a bed namespace", p)
	}
	if out, err := os.ReadFile("/proc/self/net/dev"); err == nil && hasInterface(string(out), "pod0") {
		t.Errorf("a bed veth appeared in the test's own namespace")
	}
}

// refsTo lists this process's threads and files that refer to one of the
// network namespaces.
func refsTo(inodes []uint64) []string {
	var refs []string
	for _, pattern := range []string{"/proc/self/task/*/ns/net", "/proc/self/fd/*"} {
		paths, _ := filepath.Glob(pattern)
		for _, p := range paths {
			target, err := os.Readlink(p)
			if err != nil {
				continue
			}
			for _, ino := range inodes {
				if target == fmt.Sprintf("net:[%d]", ino) {
					refs = append(refs, p)
				}
			}
		}
	}
	return refs
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func fdInode(t testing.TB, h netns.NsHandle) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func hasInterface(procNetDev, name string) bool {
	for _, line := range strings.Split(procNetDev, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), name+":") {
			return true
		}
	}
	return false
}

func TestSessionBuildsABedOutsideATestAndCloseRemovesIt(t *testing.T) {
	RequireRoot(t)
	var s Session
	var bed *Bed
	if err := s.Build(func() { bed = NewBed(&s, 1) }); err != nil {
		t.Fatal(err)
	}
	bed.Pod(0).ServeTCP(8080)
	if _, err := bed.Node().DialTCP(netip.AddrPortFrom(PodIP4(0), 8080)); err != nil {
		t.Fatalf("node to pod through a session's bed: %v", err)
	}
	s.Close()
	for _, ns := range append([]*NS{bed.Node(), bed.Outside()}, bed.Pods()...) {
		if ns.Handle().IsOpen() {
			t.Fatalf("%s is still open after Close", ns.Name)
		}
	}
	if err := s.Build(func() { NewBed(&s, MaxPods+1) }); err == nil {
		t.Fatal("a failing build must return its error")
	}
	s.Close()
}
