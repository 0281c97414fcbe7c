package main_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
)

// bin is the svcproxy binary TestMain builds for every test.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "svcproxy-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "svcproxy")
	code := 1
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// runSvcproxy runs the binary to its end and returns its exit code,
// standard output and standard error.
func runSvcproxy(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("running %s: %v", bin, err)
	return 0, "", ""
}

// Every case fails before svcproxy reaches the network or iptables.
func TestBadInputIsOneLineAndExitOne(t *testing.T) {
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badConfig, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\niptables:\n  syncPerod: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--proxy-mode=nftables"}, `svcproxy: proxy mode "nftables" is not supported by svcproxy; use iptables`},
		{[]string{"--mode=bogus"}, `svcproxy: unknown proxy mode "bogus"; svcproxy supports iptables and ipvs`},
		{[]string{"--mode=ipvs", "--ipvs-exclude-cidrs=10.0.0.0/33"}, `svcproxy: ipvs exclude CIDRs "10.0.0.0/33": "10.0.0.0/33" is not a CIDR`},
		{[]string{"--config=" + badConfig}, `svcproxy: config file ` + badConfig + `: unknown field "iptables.syncPerod"`},
		{[]string{"--kubeconfig=" + filepath.Join(dir, "missing")}, `svcproxy: kubeconfig "` + filepath.Join(dir, "missing") + `": stat`},
		{[]string{"--no-such-flag"}, "svcproxy: unknown flag: --no-such-flag"},
	}
	for _, c := range cases {
		code, _, stderr := runSvcproxy(t, c.args...)
		if last := errorLine(t, c.args, stderr); code != 1 || !strings.HasPrefix(last, c.want) {
			t.Errorf("svcproxy %q: exit %d, last line %q; want exit 1 and a line starting %q", c.args, code, last, c.want)
		}
	}
}

// errorLine returns the last line of stderr, the error, and checks it is
// the only one.
func errorLine(t *testing.T, args []string, stderr string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	for _, l := range lines[:len(lines)-1] {
		if strings.Contains(l, "svcproxy:") {
			t.Errorf("svcproxy %q: more than one error line: %q", args, stderr)
		}
	}
	return lines[len(lines)-1]
}

// On a kernel without IPVS (this machine's), --proxy-mode=ipvs stops at
// once with one line that names what is missing and the way out, before
// waiting on the API server (which does not answer here: waiting on it
// would take --api-timeout and end in another error).
func TestIPVSModeWithoutIPVSIsOneLineAndExitOne(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	// No server is bound: on a kernel with IPVS the run goes on to wait
	// for the API, which it must not do on the host's ports.
	args := []string{"--proxy-mode=ipvs", "--kubeconfig=" + kubeconfig, "--healthz-bind-address=",
		"--metrics-bind-address=", "--api-timeout=5s"}
	start := time.Now()
	code, _, stderr := runSvcproxy(t, args...)
	took := time.Since(start)
	last := errorLine(t, args, stderr)
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil && strings.Contains(last, "waited") {
		t.Skipf("this kernel has IPVS: svcproxy went on to the API server: %s", last)
	}
	if code != 1 || !strings.HasPrefix(last, "svcproxy: proxy mode ipvs: ") || !strings.Contains(last, "IPVS") ||
		!strings.Contains(last, "--mode=iptables") {
		t.Errorf("svcproxy %q: exit %d, last line %q; want exit 1 and one line naming IPVS and --mode=iptables", args, code, last)
	}
	if took >= 5*time.Second {
		t.Errorf("svcproxy took %v to fail: it waited on the API server before checking the kernel", took)
	}
}

func TestHelpAndWriteConfigExitZero(t *testing.T) {
	code, stdout, _ := runSvcproxy(t, "--help")
	if code != 0 || !strings.Contains(stdout, "--cleanup") {
		t.Errorf("--help: exit %d, output %q", code, stdout)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if code, _, stderr := runSvcproxy(t, "--write-config-to="+path, "--iptables-sync-period=12s"); code != 0 {
		t.Fatalf("--write-config-to: exit %d: %s", code, stderr)
	}
	written, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(written), "syncPeriod: 12s") || !strings.Contains(string(written), "kind: KubeProxyConfiguration") {
		t.Errorf("written config (%v):\n%s", err, written)
	}
	// This runs in the host's network namespace: every conntrack setting
	// at 0 leaves the host's as they are.
	if code, _, stderr := runSvcproxy(t, "--init-only", "--oom-score-adj=-999", "--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0"); code != 0 || !strings.Contains(stderr, "--oom-score-adj") {
		t.Errorf("--init-only: exit %d, stderr %q; want 0 and the ignored flag named", code, stderr)
	}
}

// --init-only makes kube-proxy's conntrack settings, as kube-proxy's does,
// here in a network namespace of the test's own. Outside the host's
// namespace nf_conntrack_max is read-only, so a limit other than the
// host's (a --conntrack-min above it, here) is a warning that names the
// way out (kube-proxy exits), and the namespace's own timeouts are set;
// --conntrack-max-per-core=0 leaves the limit alone, without a warning.
func TestInitOnlyTunesConntrack(t *testing.T) {
	ns := netnstest.NewNS(t, "node")
	const established = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
	const closeWait = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	read := func() (string, error) {
		var got string
		err := ns.Do(func() error {
			a, err1 := os.ReadFile(established)
			b, err2 := os.ReadFile(closeWait)
			got = strings.TrimSpace(string(a)) + " " + strings.TrimSpace(string(b))
			return errors.Join(err1, err2)
		})
		return got, err
	}
	if _, err := read(); errors.Is(err, os.ErrNotExist) {
		t.Skipf("no conntrack sysctls (nf_conntrack not loaded): %v", err)
	}
	run := func(args ...string) (int, string) {
		var code int
		var stderr bytes.Buffer
		err := ns.Do(func() error {
			cmd := exec.Command(bin, append([]string{"--init-only"}, args...)...)
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				code, err = exit.ExitCode(), nil
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return code, stderr.String()
	}
	hostMax, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Fatal(err)
	}
	code, stderr := run("--conntrack-min=" + strings.TrimSpace(string(hostMax)) + "1")
	if code != 0 || !strings.Contains(stderr, "WARN") || !strings.Contains(stderr, "nf_conntrack_max") ||
		!strings.Contains(stderr, "--conntrack-max-per-core=0 leaves it alone") {
		t.Errorf("--init-only in a network namespace: exit %d; want 0 and a warning naming nf_conntrack_max:\n%s", code, stderr)
	}
	if got, err := read(); err != nil || got != "86400 3600" {
		t.Errorf("timeouts %q (%v) after --init-only; want kube-proxy's 86400 3600", got, err)
	}
	code, stderr = run("--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=3h", "--conntrack-tcp-timeout-close-wait=2m")
	if got, err := read(); code != 0 || err != nil || got != "10800 120" || strings.Contains(stderr, "WARN") {
		t.Errorf("--init-only --conntrack-max-per-core=0: exit %d, timeouts %q (%v); want 0, 10800 120\n%s", code, got, err, stderr)
	}
}
