package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/proxier"
)

// Everything a cluster test starts (runner, servers, long-lived
// connections, the conntrack socket, threads that entered a namespace) is
// gone when it ends, so nothing keeps a namespace of it alive and the
// kernel frees them with their rules. (Every cluster's cleanup also checks
// that svcproxy's own cleanup removed its rules.)
func TestNothingOutlivesACluster(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		var inodes []uint64
		t.Run("cluster", func(t *testing.T) { inodes = busyCluster(t, s) })
		// Threads that entered a namespace exit just after their goroutine.
		var left []string
		for range 50 {
			if left = refsTo(inodes); len(left) == 0 {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, ref := range left {
			t.Errorf("%s still refers to a namespace of the finished test", ref)
		}
	})
}

// busyCluster runs a cluster with everything the harness can start and
// returns the inodes of its namespaces.
func busyCluster(t *testing.T, s setup) []uint64 {
	c := newCluster(t, s, 2)
	serveLines(t, c.Pod(1), 9000)
	c.upsertService(service("web", []string{"10.96.0.60"}))
	c.upsertSlice(endpoints("web", local(c.Pod(1))))
	cfg := proxier.DefaultRunnerConfig()
	cfg.MinSyncPeriod = 10 * time.Millisecond
	c.run(cfg)
	if _, ok := waitFor(c.Pod(0), tcp("10.96.0.60"), "pod-1", 5*time.Second); !ok {
		t.Fatal("the runner's first sync did not carry traffic")
	}
	dialLines(t, c.Pod(0), at(c.Pod(1).IPv4(), 9000))
	udpClient(t, c.Pod(0), udp("10.96.0.60"))
	var inodes []uint64
	for _, ns := range append([]*netnstest.NS{c.Node(), c.Outside()}, c.Pods()...) {
		inodes = append(inodes, nsInode(t, ns))
	}
	return inodes
}

func nsInode(t *testing.T, ns *netnstest.NS) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Handle()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// refsTo lists this process's threads and open files that keep one of the
// network namespaces alive: a thread inside it, a handle on it, or a
// socket made in it.
func refsTo(inodes []uint64) []string {
	var refs []string
	for _, pattern := range []string{"/proc/self/task/*/ns/net", "/proc/self/fd/*"} {
		paths, _ := filepath.Glob(pattern)
		for _, p := range paths {
			ino, ok := netnsOf(p)
			if ok && slices.Contains(inodes, ino) {
				refs = append(refs, p)
			}
		}
	}
	return refs
}

// netnsOf returns the inode of the network namespace a /proc link refers
// to, or that a socket behind it was made in.
func netnsOf(path string) (uint64, bool) {
	target, err := os.Readlink(path)
	if err != nil {
		return 0, false
	}
	var ino uint64
	if _, err := fmt.Sscanf(target, "net:[%d]", &ino); err == nil {
		return ino, true
	}
	if !strings.HasPrefix(target, "socket:") {
		return 0, false
	}
	fd, err := strconv.Atoi(filepath.Base(path))
	if err != nil {
		return 0, false
	}
	// The kernel hands out a handle on a socket's namespace (SIOCGSKNS).
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return 0, false
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}
