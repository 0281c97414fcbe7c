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
	cache := t.TempDir()
	t.Setenv("SVCPROXY_CACHE", cache)
	calls := fakeGo(t)

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
	if data, _ := os.ReadFile(calls); strings.Count("\n"+string(data), "\nbuild ") != len(binaries) {
		t.Errorf("go was run as:\n%s\nwant %d builds (one per binary), once", data, len(binaries))
	}
	if leftovers, _ := filepath.Glob(filepath.Join(cache, "controlplane", ".build.*")); len(leftovers) != 0 {
		t.Errorf("temporary build directories left behind: %v", leftovers)
	}
}

// TestBinariesScriptBuildsOnlyWhatAnOlderCacheLacks starts from the cache
// an older script left (the control plane only, stamped): only kube-proxy
// and kubectl are built, with the version ldflags, and nothing that was
// there is rebuilt or rewritten.
func TestBinariesScriptBuildsOnlyWhatAnOlderCacheLacks(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("SVCPROXY_CACHE", cache)
	calls := fakeGo(t)
	dir := fakeBuiltBinaries(t, cache, pinnedVersions(t))
	for _, name := range []string{"kube-proxy", "kubectl"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]os.FileInfo{}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "VERSIONS"} {
		before[name] = stat(t, filepath.Join(dir, name))
	}
	if err := exec.Command(script(t), "--check").Run(); err == nil {
		t.Errorf("--check accepted a cache without kube-proxy and kubectl")
	}

	out, err := exec.Command(script(t)).Output()
	if err != nil {
		t.Fatalf("script: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != dir {
		t.Errorf("script printed %q, want %q", got, dir)
	}
	data, _ := os.ReadFile(calls)
	built := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(built) != 2 || !strings.HasSuffix(built[0], " k8s.io/kubernetes/cmd/kube-proxy") || !strings.HasSuffix(built[1], " k8s.io/kubernetes/cmd/kubectl") {
		t.Fatalf("go was run as:\n%s\nwant kube-proxy and kubectl built, nothing else", data)
	}
	version := pinnedVersions(t)["k8s.io/kubernetes"]
	for _, call := range built {
		for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
			if !strings.Contains(call, " -X "+pkg+".gitVersion="+version+" ") {
				t.Errorf("go %s: want %s.gitVersion=%s in the ldflags", call, pkg, version)
			}
		}
	}
	for name, was := range before {
		if now := stat(t, filepath.Join(dir, name)); !os.SameFile(was, now) || !now.ModTime().Equal(was.ModTime()) {
			t.Errorf("%s was replaced or rewritten", name)
		}
	}
	if err := exec.Command(script(t), "--check").Run(); err != nil {
		t.Errorf("--check after the build: %v", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(cache, "controlplane", ".build.*")); len(leftovers) != 0 {
		t.Errorf("temporary build directories left behind: %v", leftovers)
	}
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// fakeGo puts on PATH a `go` that takes a moment to "build" an executable
// wherever -o says, and returns the file that records its arguments, a
// line per call.
func fakeGo(t *testing.T) string {
	t.Helper()
	fakeBin := t.TempDir()
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
	t.Setenv("PATH", fakeBin+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_GO_CALLS", calls)
	return calls
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

// binaries are what hack/controlplane-bins.sh builds.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy", "kubectl"}

// fakeBuiltBinaries lays out what a finished build leaves in the cache.
func fakeBuiltBinaries(t *testing.T, cache string, versions map[string]string) string {
	t.Helper()
	k8s, etcd := versions["k8s.io/kubernetes"], versions["go.etcd.io/etcd/server/v3"]
	dir := filepath.Join(cache, "controlplane", "k8s-"+k8s+"_etcd-"+etcd)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range binaries {
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
