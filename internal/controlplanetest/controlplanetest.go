// Package controlplanetest gives a test a real etcd and kube-apiserver
// (internal/controlplane) that stop when the test ends.
//
// The binaries come from hack/controlplane-bins.sh, which builds them on
// first use (about ten minutes on two cores; run it before `go test` with a
// short -timeout) and answers from its cache after that. With
// SVCPROXY_SKIP_CONTROLPLANE=1 a test skips instead of building them.
package controlplanetest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/svcproxy/svcproxy/internal/controlplane"
)

// SkipEnv names the variable that makes tests skip, rather than build the
// binaries, when they are not built yet.
const SkipEnv = "SVCPROXY_SKIP_CONTROLPLANE"

// Start runs etcd and kube-apiserver for t and stops them when t ends.
func Start(t testing.TB) *controlplane.ControlPlane {
	t.Helper()
	return StartWith(t, controlplane.Options{})
}

// StartWith is Start with options. An empty BinDir, WorkDir or Log is
// filled in: the built binaries, a directory of t's, t's log.
func StartWith(t testing.TB, opts controlplane.Options) *controlplane.ControlPlane {
	t.Helper()
	if opts.BinDir == "" {
		opts.BinDir = BinDir(t)
	}
	if opts.WorkDir == "" {
		opts.WorkDir = t.TempDir()
	}
	if opts.Log == nil {
		opts.Log = zaptest.NewLogger(t)
	}
	cp, err := controlplane.Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logProcessOutput(t, cp)
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	return cp
}

// BinDir returns the directory holding the control-plane binaries, building
// them first if needed, or skips t when they are not built and SkipEnv is 1.
func BinDir(t testing.TB) string {
	t.Helper()
	script := filepath.Join(repoRoot(t), "hack", "controlplane-bins.sh")
	args := []string{}
	if os.Getenv(SkipEnv) == "1" {
		args = append(args, "--check")
	}
	var stderr bytes.Buffer
	cmd := exec.Command(script, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	switch {
	case err != nil && len(args) > 0:
		t.Skipf("control-plane binaries are not built and %s=1: build them with %s", SkipEnv, script)
	case err != nil:
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("%s: %s", script, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// repoRoot is the nearest directory above the test's working directory
// that holds the control-plane script.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack", "controlplane-bins.sh")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no hack/controlplane-bins.sh in any directory above the test's")
		}
		dir = parent
	}
}

// logProcessOutput shows the end of each program's log: after a failure
// it is usually where the reason is, and Stop is about to delete it.
func logProcessOutput(t testing.TB, cp *controlplane.ControlPlane) {
	for _, p := range cp.Processes() {
		data, err := os.ReadFile(p.LogPath)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("last lines of %s (pid %d):\n%s", p.Name, p.PID, strings.Join(lines, "\n"))
	}
}
