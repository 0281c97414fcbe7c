package conntrack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/svcproxy/svcproxy/internal/netnstest"
)

// hostNetNSEnv hands the host's network namespace, as the test process's
// main thread has it, to a test run again inside another one.
const hostNetNSEnv = "SVCPROXY_TEST_HOST_NETNS"

// hostNetNS names the host's network namespace: the main thread's, which
// netnstest keeps there, or what the parent test said.
func hostNetNS() (string, error) {
	if ns := os.Getenv(hostNetNSEnv); ns != "" {
		return ns, nil
	}
	return os.Readlink("/proc/self/ns/net")
}

// ownNamespaceOnly is the host's files for the root tests, which tune
// namespaces of their own: a write goes through only under /proc/sys/net/
// and only from a thread outside the host's network namespace, so nothing
// a test does can reach the host's settings, nor the conntrack hash size,
// which is the whole host's.
type ownNamespaceOnly struct{ HostFiles }

func (o ownNamespaceOnly) WriteFile(path, value string) error {
	if !strings.HasPrefix(path, "/proc/sys/net/") {
		return fmt.Errorf("the test refuses to write %s: not a network namespace's setting", path)
	}
	host, err1 := hostNetNS()
	here, err2 := os.Readlink("/proc/thread-self/ns/net")
	if err1 != nil || err2 != nil || host == here {
		return fmt.Errorf("the test refuses to write %s: not in a network namespace of its own (%s, %v, %v)", path, here, err1, err2)
	}
	return o.HostFiles.WriteFile(path, value)
}

// readSysctls reads sysctls of the calling thread's network namespace.
func readSysctls(names ...string) (map[string]string, error) {
	got := map[string]string{}
	for _, name := range names {
		b, err := os.ReadFile(sysctlRoot + name)
		if err != nil {
			return nil, err
		}
		got[name] = strings.TrimSpace(string(b))
	}
	return got, nil
}

var tunedSysctls = []string{maxSysctl, established, closeWait, beLiberal, udpTimeout, udpStream}

// requireConntrackSysctls skips when the namespace has no conntrack
// settings (nf_conntrack is not loaded).
func requireConntrackSysctls(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	err := ns.Do(func() error { _, err := readSysctls(tunedSysctls...); return err })
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("no conntrack sysctls (nf_conntrack not loaded): %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
}

// hostSysctls reads the host's values, to show the tests leave them as
// they are (this goroutine is on no thread a namespace was entered on).
func hostSysctls(t *testing.T) map[string]string {
	t.Helper()
	got, err := readSysctls(tunedSysctls...)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// Every per-namespace setting kube-proxy tunes is set in the namespace
// svcproxy runs in, and reads back; the host's stay as they were.
func TestTuneSetsTheNetworkNamespacesSysctls(t *testing.T) {
	ns := netnstest.NewNS(t, "node")
	requireConntrackSysctls(t, ns)
	host := hostSysctls(t)
	tuning := Tuning{TCPEstablishedTimeout: 7 * time.Hour, TCPCloseWaitTimeout: 1234 * time.Second, TCPBeLiberal: true,
		UDPTimeout: 33 * time.Second, UDPStreamTimeout: 150 * time.Second}
	var errs []error
	var got map[string]string
	err := ns.Do(func() (err error) {
		errs = Tune(ownNamespaceOnly{}, PlanTuning(tuning, 2), zaptest.NewLogger(t))
		got, err = readSysctls(tunedSysctls...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) != 0 {
		t.Errorf("Tune: %v", errs)
	}
	want := map[string]string{maxSysctl: host[maxSysctl], established: "25200", closeWait: "1234", beLiberal: "1",
		udpTimeout: "33", udpStream: "150"}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %s in the namespace, want %s", name, got[name], v)
		}
	}
	if after := hostSysctls(t); fmt.Sprint(after) != fmt.Sprint(host) {
		t.Errorf("the host's sysctls changed:\nbefore %v\nafter  %v", host, after)
	}
}

// With kube-proxy's defaults in a network namespace other than the
// host's, nf_conntrack_max is read-only: one clear warning that names the
// way out, and the timeouts are set all the same. (kube-proxy exits
// there unless --conntrack-max-per-core=0.)
func TestTuneDefaultsOutsideTheHostsNamespaceWarnsOfTheLimit(t *testing.T) {
	ns := netnstest.NewNS(t, "node")
	requireConntrackSysctls(t, ns)
	host := hostSysctls(t)
	plan := PlanTuning(Tuning{MaxPerCore: 32 * 1024, Min: 128 * 1024,
		TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}, CPUs(HostFiles{}))
	var errs []error
	var got map[string]string
	err := ns.Do(func() (err error) {
		errs = Tune(ownNamespaceOnly{}, plan, zaptest.NewLogger(t))
		got, err = readSysctls(tunedSysctls...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got[established] != "86400" || got[closeWait] != "3600" {
		t.Errorf("timeouts %s and %s in the namespace, want 86400 and 3600", got[established], got[closeWait])
	}
	if got[maxSysctl] != host[maxSysctl] {
		t.Errorf("nf_conntrack_max %s in the namespace, the host's %s", got[maxSysctl], host[maxSysctl])
	}
	if host[maxSysctl] == strconv.Itoa(plan.Max) {
		t.Logf("the host's nf_conntrack_max is %d already: nothing to refuse", plan.Max)
		return
	}
	if len(errs) != 1 || !errors.Is(errs[0], fs.ErrPermission) ||
		!strings.Contains(errs[0].Error(), "nf_conntrack_max="+strconv.Itoa(plan.Max)+": read-only outside the host's network namespace (--conntrack-max-per-core=0") {
		t.Errorf("errors %v, want one: nf_conntrack_max is read-only here", errs)
	}
	if after := hostSysctls(t); fmt.Sprint(after) != fmt.Sprint(host) {
		t.Errorf("the host's sysctls changed:\nbefore %v\nafter  %v", host, after)
	}
}

const readOnlyHelperEnv = "SVCPROXY_TEST_READ_ONLY_PROC_SYS"

// In a container that is not privileged /proc/sys is mounted read-only:
// every setting is a warning, none a crash. The test runs itself again
// in a fresh mount and network namespace whose /proc/sys is a read-only
// bind mount, as a container runtime makes it.
func TestTuneWithReadOnlyProcSysWarns(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, tool := range []string{"unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	cmd := exec.Command("unshare", "--mount", "--net", "--propagation", "private", "sh", "-c",
		`mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$0" -test.run='^TestTuneReadOnlyProcSysHelper$' -test.v -test.count=1`,
		os.Args[0])
	host, err := hostNetNS()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), readOnlyHelperEnv+"=1", hostNetNSEnv+"="+host)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestTuneReadOnlyProcSysHelper") {
		t.Fatalf("the helper in a read-only /proc/sys: %v\n%s", err, out)
	}
}

// TestTuneReadOnlyProcSysHelper is TestTuneWithReadOnlyProcSysWarns's other half.
func TestTuneReadOnlyProcSysHelper(t *testing.T) {
	if os.Getenv(readOnlyHelperEnv) != "1" {
		t.Skip("run by TestTuneWithReadOnlyProcSysWarns")
	}
	before, err := readSysctls(tunedSysctls...)
	if errors.Is(err, fs.ErrNotExist) {
		// The parent cannot tell: say so loudly rather than pass.
		t.Fatalf("no conntrack sysctls in the fresh namespace: %v", err)
	}
	if HostFiles.Writable(HostFiles{}, sysctlRoot+established) {
		t.Fatal("/proc/sys is writable: the read-only bind mount did not take")
	}
	tuning := Tuning{TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour, TCPBeLiberal: true,
		UDPTimeout: 33 * time.Second, UDPStreamTimeout: 150 * time.Second}
	errs := Tune(ownNamespaceOnly{}, PlanTuning(tuning, 1), zaptest.NewLogger(t))
	if len(errs) != 5 {
		t.Errorf("%d errors, want one per setting: %v", len(errs), errs)
	}
	for _, err := range errs {
		if !errors.Is(err, syscall.EROFS) || !strings.Contains(err.Error(), "/proc/sys is read-only here") {
			t.Errorf("error %q: want EROFS, said as a read-only /proc/sys", err)
		}
	}
	if after, err := readSysctls(tunedSysctls...); err != nil || fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("sysctls changed under a read-only /proc/sys (%v):\nbefore %v\nafter  %v", err, before, after)
	}
}
