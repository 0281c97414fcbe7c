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
		{[]string{"--proxy-mode=ipvs"}, `svcproxy: proxy mode "ipvs" is not implemented yet; use iptables`},
		{[]string{"--mode=bogus"}, `svcproxy: unknown proxy mode "bogus"; svcproxy supports iptables`},
		{[]string{"--config=" + badConfig}, `svcproxy: config file ` + badConfig + `: unknown field "iptables.syncPerod"`},
		{[]string{"--kubeconfig=" + filepath.Join(dir, "missing")}, `svcproxy: kubeconfig "` + filepath.Join(dir, "missing") + `": stat`},
		{[]string{"--no-such-flag"}, "svcproxy: unknown flag: --no-such-flag"},
	}
	for _, c := range cases {
		code, _, stderr := runSvcproxy(t, c.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		last := lines[len(lines)-1]
		if code != 1 || !strings.HasPrefix(last, c.want) {
			t.Errorf("svcproxy %q: exit %d, last line %q; want exit 1 and a line starting %q", c.args, code, last, c.want)
		}
		for _, l := range lines[:len(lines)-1] {
			if strings.Contains(l, "svcproxy:") {
				t.Errorf("svcproxy %q: more than one error line: %q", c.args, stderr)
			}
		}
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
	if code, _, stderr := runSvcproxy(t, "--init-only", "--oom-score-adj=-999"); code != 0 || !strings.Contains(stderr, "--oom-score-adj") {
		t.Errorf("--init-only: exit %d, stderr %q; want 0 and the ignored flag named", code, stderr)
	}
}
