package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// helperEnv (vmJob sets it) makes the test binary, copied into a share and run
// inside the VM, act as a tiny IPVS client instead of running tests: ipvsadm
// is not installed here, and a Go program is what will drive IPVS.
const helperEnv = "SVCPROXY_VM_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "ipvs" {
		if err := ipvsHelper(); err != nil {
			fmt.Fprintln(os.Stderr, "ipvs helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The schedulers the project may configure; every one must work in the VM.
var schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}

// vmJob proves, in a fresh network namespace inside the VM, what the
// project's IPVS tests need, and records what the host then checks in the
// share $1. It ends with 42 so that a status other than 0 is seen to come back.
const vmJob = `set -eu
share=$1
printf '%s' "$2" >"$share/arg"
pwd >"$share/pwd"
printf '%s' "$VMTEST_VAR" >"$share/env"
uname -r >"$share/uname"
test -e /proc/net/ip_vs
test "$(cat /proc/sys/net/ipv4/ip_forward)" = 1
test "$(cat /proc/sys/net/ipv6/conf/all/forwarding)" = 1
ip -o link show lo | grep -q '[<,]UP[,>]'
for m in nf_conntrack nf_nat nf_tables ip_vs ip_vs_rr ip_vs_mh dummy veth ip_set ip_set_hash_ipport ip_set_bitmap_port xt_set; do
  test -d /sys/module/$m || { echo "module $m not loaded"; exit 1; }
done
unshare --net sh -eu -c '
  share=$1
  test -e /proc/sys/net/ipv4/vs/conntrack
  test -e /proc/sys/net/netfilter/nf_conntrack_max
  ip link set lo up
  ip link add svc0 type dummy
  ip addr add 192.0.2.10/32 dev svc0
  ip link set svc0 up
  ip link add veth0 type veth peer name veth1
  ipset create TEST-SET hash:ip,port
  ipset add TEST-SET 192.0.2.10,tcp:80
  ipset test TEST-SET 192.0.2.10,tcp:80
  for ipt in iptables-nft iptables-legacy; do
    $ipt -t nat -N TEST-SERVICES
    $ipt -t nat -A OUTPUT -m comment --comment "test services" -j TEST-SERVICES
    $ipt -t nat -A TEST-SERVICES -m set --match-set TEST-SET dst,dst -j MARK --set-xmark 0x4000/0x4000
    $ipt -t nat -A TEST-SERVICES -d 192.0.2.10/32 -p tcp --dport 80 -m statistic --mode random --probability 0.5 -j DNAT --to-destination 127.0.0.1:8080
    $ipt -t nat -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
    $ipt -t filter -A INPUT -m conntrack --ctstate INVALID -j DROP
    $ipt -t nat -A OUTPUT -m addrtype --dst-type LOCAL -j RETURN
    $ipt-save -t nat | grep -q "match-set TEST-SET"
  done
  ip6tables-nft -t nat -A OUTPUT -d 2001:db8::1/128 -p tcp -j DNAT --to-destination "[::1]:8080"
  SVCPROXY_VM_TEST_HELPER=ipvs "$share/vm.test"
  cat /proc/net/ip_vs
  ! command -v conntrack >/dev/null || conntrack -L >/dev/null
  echo ok >"$share/netns"
' sh "$share"
echo done >"$share/result"
exit 42
`

func TestVM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the VM mounts the host's root and the test prepares the kernel with apt")
	}
	start := time.Now()
	dir, err := KernelDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel directory %s ready in %v", dir, time.Since(start).Round(time.Millisecond))

	t.Run("job", func(t *testing.T) {
		t.Parallel()
		share := t.TempDir() // under /tmp: visible in the VM only as a share
		copyTestBinary(t, filepath.Join(share, "vm.test"))
		arg := `it's "quoted" $HOME \n`
		job := Job{
			Args:   []string{"/bin/sh", "-c", vmJob, "sh", share, arg},
			Env:    []string{"VMTEST_VAR=from the host"},
			Dir:    share,
			Shares: []string{share},
		}
		console := logConsole(t)
		start := time.Now()
		code, err := Run(context.Background(), Config{KernelDir: dir, Timeout: 5 * time.Minute, Console: console}, job)
		t.Logf("VM ran for %v", time.Since(start).Round(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if code != 42 {
			t.Fatalf("exit status %d, want 42 (the job's own; see the console)", code)
		}
		for file, want := range map[string]string{
			"arg":    arg,
			"pwd":    share + "\n",
			"env":    "from the host",
			"netns":  "ok\n",
			"result": "done\n",
		} {
			got, err := os.ReadFile(filepath.Join(share, file))
			if err != nil {
				t.Errorf("the job's %s did not reach the host: %v", file, err)
			} else if string(got) != want {
				t.Errorf("%s = %q, want %q", file, got, want)
			}
		}
		uname, _ := os.ReadFile(filepath.Join(share, "uname"))
		if rel := strings.TrimSpace(string(uname)); rel != filepath.Base(dir) {
			t.Errorf("the VM ran kernel %q, want %q", rel, filepath.Base(dir))
		}
		if !strings.Contains(console.String(), "svcproxy-vm: job exited with status 42") {
			t.Error("the console lacks the init's closing line")
		}
	})

	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		const timeout = 2 * time.Second // shorter than any boot
		start := time.Now()
		code, err := Run(context.Background(), Config{KernelDir: dir, MemoryMiB: 1001, Timeout: timeout, Console: logConsole(t)},
			Job{Args: []string{"sleep", "600"}})
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "timed out after 2s") {
			t.Fatalf("Run = %d, %v; want a time-out error", code, err)
		}
		t.Log(err)
		if code != -1 {
			t.Errorf("exit status %d with an error, want -1", code)
		}
		if took > timeout+5*time.Second {
			t.Errorf("Run returned %v after the start, %v past its time-out", took, took-timeout)
		}
		noQemuLeft(t, 1001)
	})

	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := Run(ctx, Config{KernelDir: dir, MemoryMiB: 1002, Console: logConsole(t)}, Job{Args: []string{"sleep", "600"}})
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "stopped after") {
			t.Fatalf("Run with a context that ends = %v; want an error wrapping the context's", err)
		}
		noQemuLeft(t, 1002)
	})
}

func TestJobValidation(t *testing.T) {
	tmp := t.TempDir()
	for _, job := range []Job{
		{},
		{Args: []string{"/tmp/prog"}},
		{Args: []string{"/run/prog"}, Shares: []string{tmp}},
		{Args: []string{"true"}, Shares: []string{"relative"}},
		{Args: []string{"true"}, Shares: []string{"/"}},
		{Args: []string{"true"}, Shares: []string{"/proc/x"}},
		{Args: []string{"true"}, Shares: []string{filepath.Join(tmp, "missing")}},
	} {
		if err := job.validate(); err == nil {
			t.Errorf("%+v: valid, want an error", job)
		}
	}
	ok := Job{Args: []string{filepath.Join(tmp, "prog")}, Shares: []string{tmp + "/"}}
	if err := ok.validate(); err != nil {
		t.Errorf("a program inside a share: %v", err)
	}
	if err := writeJob(t.TempDir(), Job{Args: []string{"true"}, Env: []string{"1X=y"}}, nil); err == nil {
		t.Error("an environment entry with a bad name was accepted")
	}
}

func TestLineTail(t *testing.T) {
	tail := &lineTail{max: 2}
	var w io.Writer = &crlfWriter{w: tail}
	fmt.Fprint(w, "one\r\ntwo\r\nthr")
	fmt.Fprint(w, "ee\r\nfour")
	if got, want := tail.String(), "  three\n  four"; got != want {
		t.Errorf("tail = %q, want %q", got, want)
	}
}

// logConsole collects a VM's console and logs it if the test fails or runs
// with -v.
func logConsole(t *testing.T) *syncBuffer {
	b := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("console:\n%s", b.String())
		}
	})
	return b
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func copyTestBinary(t *testing.T, dst string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// noQemuLeft fails if a qemu this process started with -m mem (each subtest
// uses its own size, so parallel ones do not confuse each other) still exists,
// running or unreaped, after Run returned.
func noQemuLeft(t *testing.T, mem int) {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	me := strconv.Itoa(os.Getpid())
	memArg := "\x00-m\x00" + strconv.Itoa(mem) + "\x00"
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after it.
		_, rest, _ := strings.Cut(string(stat), ") ")
		if f := strings.Fields(rest); len(f) < 2 || f[1] != me {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), "qemu") && strings.Contains(string(cmdline), memArg) {
			t.Errorf("qemu (pid %s, state %s) still there after Run returned", e.Name(), strings.Fields(rest)[0])
		}
	}
}
