// Package vm_test runs svcproxy's real-kernel suites in IPVS mode inside a
// qemu VM (internal/vm) whose kernel has IPVS and the dummy driver, which
// this machine's kernel lacks: the datapath suite (package e2e), the
// daemon suite against a real control plane (package e2e/daemon), both
// with -svcproxy.mode=ipvs, and the IPVS kernel seam's tests (package
// ipvs). Each is compiled here and run unchanged in one VM boot.
//
// Everything in the VM runs 5-10 times slower than here; the suites' own
// timeouts allow for it. The VM's whole console is kept in a file of the
// test's, and on failure the failing tests and their output are logged.
package vm_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/vm"
)

// The datapath suite runs whole under iptables-nft (the flavor a current
// distribution has), and the tests that lean on the IPVS mode's own
// iptables rules (masquerade, source ranges, reject, hairpin, the filter)
// once more under iptables-legacy: the iptables code is shared with the
// iptables mode, which runs every test under both flavors on the host, so
// a second whole run would cost the VM ten minutes to prove little more.
func TestDatapathInIPVSMode(t *testing.T) {
	runSuite(t, suite{pkg: "./e2e", args: slices.Concat(ipvsMode, []string{"-svcproxy.flavors=nft"}), memoryMiB: 2048, timeout: 25 * time.Minute})
}

func TestDatapathInIPVSModeLegacyIPTables(t *testing.T) {
	runSuite(t, suite{pkg: "./e2e", args: slices.Concat(ipvsMode, []string{"-svcproxy.flavors=legacy", "-test.run=" + legacyPart}), memoryMiB: 2048, timeout: 12 * time.Minute})
}

// legacyPart are the datapath tests run again under iptables-legacy.
const legacyPart = "^(TestClusterIP|TestExternalAddresses|TestLoadBalancerSourceRanges|TestNoEndpointsRejectPromptly|TestMasqueradeAll|TestHairpin|TestIPVSServiceAddressesAnswerOnlyServicePorts|TestIPv6|TestIPVSDriftIsRepaired)$"

// The IPVS mode's kernel seam against the real IPVS, links, ipsets and
// sysctls (its tests skip where IPVS is missing, as here).
func TestKernelSeamWithIPVS(t *testing.T) {
	runSuite(t, suite{pkg: "./ipvs", args: []string{"-test.run=^TestKernel"}, memoryMiB: 1024, timeout: 10 * time.Minute})
}

// ipvsMode are the flags that run a suite in the IPVS mode, with its
// bounds stretched for the emulated VM.
var ipvsMode = []string{"-svcproxy.mode=ipvs", "-svcproxy.time-scale=" + timeScale}

func TestDaemonInIPVSMode(t *testing.T) {
	runSuite(t, suite{pkg: "./e2e/daemon", args: ipvsMode, memoryMiB: 4096, timeout: 50 * time.Minute, prebuilt: true})
}

// timeScale is how much slower than this machine the emulated VM is, for
// the suites' bounds on how soon svcproxy reacts.
const timeScale = "5"

// suite is one test package to run in the VM.
type suite struct {
	pkg       string
	args      []string
	memoryMiB int
	timeout   time.Duration
	// prebuilt: the suite runs the svcproxy binary, built here (in the VM
	// a build would take minutes) and named by SVCPROXY_BIN.
	prebuilt bool
}

// runSuite builds the suite's test binary, boots the VM, runs the binary
// in its package directory with the suite's flags, and fails with the
// failing tests' output if it fails.
func runSuite(t *testing.T, s suite) {
	requireRoot(t)
	root := repoRoot(t)
	kernel, err := vm.KernelDir()
	if err != nil {
		t.Fatalf("preparing the VM's kernel: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, filepath.Base(s.pkg)+".test")
	build := exec.Command("go", "test", "-c", "-o", bin, s.pkg)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", s.pkg, err, out)
	}
	env := []string{"PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if s.prebuilt {
		svcproxy := filepath.Join(dir, "svcproxy")
		build := exec.Command("go", "build", "-o", svcproxy, "./cmd/svcproxy")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building svcproxy: %v\n%s", err, out)
		}
		env = append(env, "SVCPROXY_BIN="+svcproxy)
	}
	consolePath := filepath.Join(dir, "console.log")
	console, err := os.Create(consolePath)
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()

	args := append([]string{bin, "-test.v", "-test.count=1", fmt.Sprintf("-test.timeout=%v", s.timeout-2*time.Minute)}, s.args...)
	ctx, cancel := context.WithTimeout(t.Context(), s.timeout)
	defer cancel()
	start := time.Now()
	code, err := vm.Run(ctx, vm.Config{KernelDir: kernel, MemoryMiB: s.memoryMiB, Timeout: s.timeout, Console: console},
		vm.Job{Args: args, Env: env, Dir: filepath.Join(root, s.pkg), Shares: []string{dir}})
	took := time.Since(start).Round(time.Second)
	out, _ := os.ReadFile(consolePath)
	summary := summarize(out)
	t.Logf("%s in IPVS mode, in the VM: %v, exit %d: %s", s.pkg, took, code, summary.counts())
	switch {
	case err != nil:
		t.Fatalf("the VM: %v\nlast output:\n%s", err, summary.tail)
	case code != 0 || len(summary.failed) > 0:
		for _, f := range summary.failed {
			t.Errorf("FAIL %s", f)
		}
		t.Fatalf("%s exited %d in the VM; the failing tests' output:\n%s", s.pkg, code, summary.failures)
	case summary.passed == 0:
		t.Fatalf("%s ran no test in the VM:\n%s", s.pkg, summary.tail)
	}
}

// result is what a go test -v run printed.
type result struct {
	passed, skipped int
	failed          []string
	failures        string // the output of the failing tests
	tail            string // the last lines
}

func (r result) counts() string {
	return fmt.Sprintf("%d passed, %d skipped, %d failed", r.passed, r.skipped, len(r.failed))
}

var (
	verdict = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)`)
	running = regexp.MustCompile(`^=== (RUN|CONT|PAUSE|NAME)\s+(\S+)`)
)

// summarize reads go test -v output: the verdict of every test and
// subtest, and the output of the failing ones (go test -v prints a test's
// lines after its "=== RUN" line, and the verdicts of subtests only when
// their parent ends).
func summarize(out []byte) result {
	var r result
	lines := map[string][]string{}
	var current string
	var all []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		all = append(all, line)
		if m := running.FindStringSubmatch(line); m != nil {
			current = m[2]
			continue
		}
		m := verdict.FindStringSubmatch(line)
		if m == nil {
			if current != "" && len(lines[current]) < 400 {
				lines[current] = append(lines[current], line)
			}
			continue
		}
		switch m[1] {
		case "PASS":
			r.passed++
		case "SKIP":
			r.skipped++
		case "FAIL":
			r.failed = append(r.failed, m[2])
		}
	}
	var fails strings.Builder
	for _, name := range r.failed {
		if len(lines[name]) > 0 {
			fmt.Fprintf(&fails, "=== %s\n%s\n", name, strings.Join(lines[name], "\n"))
		}
	}
	if len(all) > 60 {
		all = all[len(all)-60:]
	}
	r.failures, r.tail = fails.String(), strings.Join(all, "\n")
	return r
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the VM's suites")
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}
