package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTinyRunMeasuresEveryFigure runs the harness at a tiny size, svcproxy
// only, and checks that each figure was measured, never its value.
func TestTinyRunMeasuresEveryFigure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	root := repoRoot(t)
	out, err := exec.Command(filepath.Join(root, "hack/controlplane-bins.sh"), "--check").Output()
	if err != nil {
		t.Skipf("control plane binaries not built (make controlplane): %v", err)
	}
	binDir := strings.TrimSpace(string(out))
	svcproxy := filepath.Join(t.TempDir(), "svcproxy")
	if out, err := exec.Command("go", "build", "-o", svcproxy, "github.com/svcproxy/svcproxy/cmd/svcproxy").CombinedOutput(); err != nil {
		t.Fatalf("building svcproxy: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var progress bytes.Buffer
	cfg := Config{BinDir: binDir, Svcproxy: svcproxy, Sizes: []int{5}, Endpoints: 2, Samples: 2,
		Proxies: AllProxies()[:1], WorkDir: t.TempDir(), Timeout: 30 * time.Second, IdleWindow: 2 * time.Second, Progress: &progress}
	results, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	if len(results) != 1 {
		t.Fatalf("%d results, want 1", len(results))
	}
	if results[0].Error != "" {
		t.Fatalf("%s\nprogress:\n%s", results[0].Error, progress.String())
	}
	if missing := results[0].Missing(); len(missing) > 0 {
		t.Errorf("not measured: %v\n%+v", missing, results[0])
	}
	rep := Report{Started: time.Now(), Endpoints: 2, Samples: 2, Results: results}
	var table bytes.Buffer
	WriteTable(&table, rep)
	if !strings.Contains(table.String(), "svcproxy iptables-nft") {
		t.Errorf("table lacks the proxy:\n%s", table.String())
	}
	jsonPath, svgPath, err := Write(t.TempDir(), rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{jsonPath, svgPath} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("%s not written: %v", p, err)
		}
	}
}

func repoRoot(t *testing.T) string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
