// Package daemon_test runs the real svcproxy binary inside a sandbox node
// namespace against a real kube-apiserver and etcd, and checks what an
// operator would: traffic after every API change, health, metrics, RBAC,
// bad invocations and an apiserver outage.
package daemon_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/internal/controlplane"
)

// The whole package shares one control plane (it takes seconds to start);
// each test gets its own API namespace and its own sandbox node.
var (
	cp          *controlplane.ControlPlane
	svcproxyBin string
	setupErr    error
)

// The suite runs svcproxy in the mode -svcproxy.mode names: iptables on
// this machine's kernel, ipvs in the VM of e2e/vm, which also stretches the
// suite's waits (everything there runs 5-10 times slower).
var (
	modeFlag  = flag.String("svcproxy.mode", "iptables", "the proxy mode svcproxy runs in: iptables, or ipvs (in a kernel with IPVS: see e2e/vm)")
	timeScale = flag.Int("svcproxy.time-scale", 1, "stretch the suite's waits by this factor")
)

// scaled is d stretched by -svcproxy.time-scale.
func scaled(d time.Duration) time.Duration { return d * time.Duration(max(1, *timeScale)) }

// modeArgs are the flags that put svcproxy in the mode under test.
func modeArgs() []string { return []string{"--proxy-mode=" + *modeFlag} }

// prebuiltEnv names a svcproxy binary to test instead of building one (the
// VM has no writable build cache worth the wait).
const prebuiltEnv = "SVCPROXY_BIN"

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if os.Geteuid() != 0 {
			setupErr = fmt.Errorf("needs root for network namespaces")
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "svcproxy-daemon-test-")
		if err != nil {
			setupErr = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		if setupErr = setup(dir); setupErr != nil {
			return m.Run()
		}
		defer cp.Stop()
		return m.Run()
	}()
	os.Exit(code)
}

func setup(dir string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	if svcproxyBin = os.Getenv(prebuiltEnv); svcproxyBin == "" {
		svcproxyBin = filepath.Join(dir, "svcproxy")
		build := exec.Command("go", "build", "-o", svcproxyBin, "./cmd/svcproxy")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("building svcproxy: %v\n%s", err, out)
		}
	}
	bins := exec.Command(filepath.Join(root, "hack", "controlplane-bins.sh"))
	out, err := bins.Output()
	if err != nil {
		return fmt.Errorf("control plane binaries (run make controlplane): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scaled(3*time.Minute))
	defer cancel()
	cp, err = controlplane.Start(ctx, controlplane.Options{
		BinDir: strings.TrimSpace(string(out)), WorkDir: dir, WithControllerManager: true,
	})
	return err
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// requireSetup skips without root and fails when the shared setup failed.
func requireSetup(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if setupErr != nil {
		t.Fatalf("setup: %v", setupErr)
	}
}
