package app

import (
	"slices"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/netfilter"
)

// conntrackFiles is a fake host with the kernel's default conntrack
// settings on 2 CPUs.
func conntrackFiles() *conntrack.FakeFiles {
	return &conntrack.FakeFiles{Files: map[string]string{
		"/sys/devices/system/cpu/online":                               "0-1",
		"/proc/sys/net/netfilter/nf_conntrack_max":                     "262144",
		"/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established": "432000",
		"/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait":  "60",
		"/sys/module/nf_conntrack/parameters/hashsize":                 "262144",
		// Set already, for node ports on localhost (localnet_test.go).
		"/proc/sys/net/ipv4/conf/all/route_localnet": "1",
	}}
}

// runTuned runs the daemon with files as its sysctls until the service's
// rules are in, and returns what it logged.
func runTuned(t *testing.T, files *conntrack.FakeFiles, args ...string) *observer.ObservedLogs {
	host := newFakeHost("nft/IPv4", "nft/IPv6")
	td := newTestDaemon(t, fake.NewClientset(append(webObjects(), dualStackNode())...), host, args...)
	core, logs := observer.New(zap.InfoLevel)
	td.d.log = zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	td.d.sysctls = files
	stop := td.start(t)
	waitFor(t, "the service in nat", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
	})
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	return logs
}

// The daemon tunes conntrack as kube-proxy does before its first sync, and
// logs what it set.
func TestDaemonTunesConntrack(t *testing.T) {
	files := conntrackFiles()
	logs := runTuned(t, files)
	want := []string{"/proc/sys/net/netfilter/nf_conntrack_max=131072",
		"/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established=86400",
		"/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait=3600"}
	if !slices.Equal(files.Writes, want) {
		t.Errorf("writes %q, want %q", files.Writes, want)
	}
	if n := logs.FilterMessage("set sysctl").FilterLoggerName("conntrack").Len(); n != 3 {
		t.Errorf("%d sysctls logged as set, want 3", n)
	}
	if n := logs.FilterLevelExact(zap.WarnLevel).Len(); n != 0 {
		t.Errorf("%d warnings: %v", n, logs.FilterLevelExact(zap.WarnLevel).All())
	}
}

// A container's read-only /proc/sys is a warning for each setting; the
// daemon runs on and programs its rules.
func TestDaemonWithReadOnlyProcSysWarnsAndRuns(t *testing.T) {
	files := conntrackFiles()
	files.Errs = map[string]error{}
	for path := range files.Files {
		files.Errs[path] = syscall.EROFS
	}
	logs := runTuned(t, files, "--conntrack-udp-timeout=10s")
	if len(files.Writes) != 0 {
		t.Errorf("writes %q under a read-only /proc/sys", files.Writes)
	}
	// The UDP timeout does not exist in the fake: a warning of its own.
	warned := logs.FilterMessage("conntrack setting left as the kernel has it").All()
	if len(warned) != 4 {
		t.Fatalf("%d warnings, want 4: %v", len(warned), warned)
	}
	for _, w := range warned[:3] {
		if err := w.ContextMap()["error"]; !strings.Contains(err.(string), "/proc/sys is read-only here") {
			t.Errorf("warning %q does not say /proc/sys is read-only", err)
		}
	}
}

// --init-only makes the settings; one it cannot make is a warning, as in
// the daemon.
func TestInitOnly(t *testing.T) {
	cfg := parse(t).Config
	files := conntrackFiles()
	if errs := initOnly(cfg, files, zaptest.NewLogger(t)); len(errs) != 0 || len(files.Writes) != 3 {
		t.Errorf("--init-only: %v, writes %q", errs, files.Writes)
	}
	files = conntrackFiles()
	files.Errs = map[string]error{"/proc/sys/net/netfilter/nf_conntrack_max": syscall.EACCES}
	errs := initOnly(cfg, files, zaptest.NewLogger(t))
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "nf_conntrack_max=131072: read-only outside the host's network namespace") {
		t.Errorf("--init-only with a read-only limit: %v", errs)
	}
	if len(files.Writes) != 2 {
		t.Errorf("writes %q: the timeouts are set all the same", files.Writes)
	}
}
