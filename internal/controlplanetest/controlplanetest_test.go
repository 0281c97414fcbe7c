package controlplanetest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests run hack/controlplane-bins.sh against a cache of their own,
// so they never build anything and never touch the real cache.

func TestBinariesScriptAnswersFromACompleteCache(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("SVCPROXY_CACHE", cache)
	want := fakeBuiltBinaries(t, cache, pinnedVersions(t))

	began := time.Now()
	out, err := exec.Command(script(t)).Output()
	took := time.Since(began)
	if err != nil {
		t.Fatalf("script with a complete cache: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("script printed %q, want %q", got, want)
	}
	if took > time.Second {
		t.Errorf("script with a complete cache took %v, want well under a second", took)
	}
}

func TestBinariesScriptCheckRefusesAnIncompleteCache(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("SVCPROXY_CACHE", cache)
	if err := exec.Command(script(t), "--check").Run(); err == nil {
		t.Errorf("--check with an empty cache succeeded")
	}
	if left, _ := os.ReadDir(cache); len(left) != 0 {
		t.Errorf("--check created %v", left)
	}

	dir := fakeBuiltBinaries(t, cache, pinnedVersions(t))
	if err := os.WriteFile(filepath.Join(dir, "VERSIONS"), []byte("kubernetes v1.0.0 etcd v3.0.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(script(t), "--check").Run(); err == nil {
		t.Errorf("--check accepted binaries stamped with other versions")
	}
}

// TestBinariesScriptBuildsOnceForTwoRacingCallers replaces `go` with a
// fake that takes a moment to "build", and starts two callers at once.
func TestBinariesScriptBuildsOnceForTwoRacingCallers(t *testing.T) {
	cache, fakeBin := t.TempDir(), t.TempDir()
	calls := filepath.Join(t.TempDir(), "go-calls")
	fakeGo := `#!/bin/bash
echo "$*" >>"$FAKE_GO_CALLS"
while [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done
sleep 0.3
printf '#!/bin/false\n' >"$out" && chmod +x "$out"
`
	if err := os.WriteFile(filepath.Join(fakeBin, "go"), []byte(fakeGo), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SVCPROXY_CACHE", cache)
	t.Setenv("PATH", fakeBin+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_GO_CALLS", calls)

	var outs [2]strings.Builder
	var callers [2]*exec.Cmd
	for i := range callers {
		callers[i] = exec.Command(script(t))
		callers[i].Stdout = &outs[i]
		if err := callers[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range callers {
		if err := c.Wait(); err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}

	if outs[0].String() != outs[1].String() || outs[0].Len() == 0 {
		t.Errorf("callers printed %q and %q, want the same directory", outs[0].String(), outs[1].String())
	}
	if data, _ := os.ReadFile(calls); strings.Count("\n"+string(data), "\nbuild ") != 3 {
		t.Errorf("go was run as:\n%s\nwant three builds (one per binary), once", data)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(cache, "controlplane", ".build.*")); len(leftovers) != 0 {
		t.Errorf("temporary build directories left behind: %v", leftovers)
	}
}

func TestBinDirSkipsWhenAskedAndNotBuilt(t *testing.T) {
	t.Setenv("SVCPROXY_CACHE", t.TempDir())
	t.Setenv(SkipEnv, "1")
	var skipped bool
	t.Run("needs the control plane", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		BinDir(t)
	})
	if !skipped {
		t.Errorf("BinDir did not skip with %s=1 and nothing built", SkipEnv)
	}
}

func script(t *testing.T) string {
	return filepath.Join(repoRoot(t), "hack", "controlplane-bins.sh")
}

// pinnedVersions reads the versions hack/tools/go.mod requires, which name
// the cache directory.
func pinnedVersions(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "hack", "tools", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	versions := map[string]string{}
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) >= 2 && (fields[0] == "k8s.io/kubernetes" || fields[0] == "go.etcd.io/etcd/server/v3") {
			versions[fields[0]] = fields[1]
		}
	}
	if len(versions) != 2 {
		t.Fatalf("hack/tools/go.mod pins %v, want kubernetes and etcd", versions)
	}
	return versions
}

// fakeBuiltBinaries lays out what a finished build leaves in the cache.
func fakeBuiltBinaries(t *testing.T, cache string, versions map[string]string) string {
	t.Helper()
	k8s, etcd := versions["k8s.io/kubernetes"], versions["go.etcd.io/etcd/server/v3"]
	dir := filepath.Join(cache, "controlplane", "k8s-"+k8s+"_etcd-"+etcd)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/false\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stamp := "kubernetes " + k8s + " etcd " + etcd + "\n"
	if err := os.WriteFile(filepath.Join(dir, "VERSIONS"), []byte(stamp), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
