// Package daemon_test runs the real svcproxy binary inside a sandbox node
// namespace against a real kube-apiserver and etcd, and checks what an
// operator would: traffic after every API change, health, metrics, RBAC,
// bad invocations and an apiserver outage.
package daemon_test

import (
	"context"
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

func TestMain(m *testing.M) {
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
	svcproxyBin = filepath.Join(dir, "svcproxy")
	build := exec.Command("go", "build", "-o", svcproxyBin, "./cmd/svcproxy")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building svcproxy: %v\n%s", err, out)
	}
	bins := exec.Command(filepath.Join(root, "hack", "controlplane-bins.sh"))
	out, err := bins.Output()
	if err != nil {
		return fmt.Errorf("control plane binaries (run make controlplane): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
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
