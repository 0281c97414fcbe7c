// Package image_test checks svcproxy's container image: its file system,
// built here without a container engine by hack/image-rootfs.sh from the
// package list the Dockerfile installs, holds every program svcproxy runs,
// in both modes and both iptables flavors, and svcproxy starts there.
package image_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dockerPath is the PATH a container gets when its image sets none.
const dockerPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// rootfs builds (or finds, and puts this tree's svcproxy into) the image's
// file system: a minute or two from Debian's mirror the first time,
// seconds after.
func rootfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: debootstrap and chroot")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "hack", "image-rootfs.sh"))
	// Its own process group, so that a timeout ends debootstrap too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/image-rootfs.sh: %v\n%s", err, stderr.String())
	}
	dir := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(dir, "usr/local/bin/svcproxy")); err != nil {
		t.Fatalf("no svcproxy in the image's file system: %v", err)
	}
	return dir
}

// inImage runs svcproxy in the file system as the container would: chroot,
// an empty environment but the default PATH. It touches no network and
// mounts nothing: these flags only look programs up.
func inImage(t *testing.T, root string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("chroot", append([]string{root, "/usr/local/bin/svcproxy"}, args...)...)
	cmd.Env = []string{"PATH=" + dockerPath}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// listedPath is a line of --check-binaries: FLAVOR BINARY PATH FOR...
var listedPath = regexp.MustCompile(`^(\S+)\s+(\S+)\s+(/\S+|\(missing, optional\)|\(MISSING\))\s`)

func TestImageHoldsEveryProgramSvcproxyRuns(t *testing.T) {
	root := rootfs(t)
	if out, err := inImage(t, root, "--help"); err != nil {
		t.Fatalf("svcproxy --help in the image: %v\n%s", err, out)
	}
	for _, mode := range []string{"iptables", "ipvs"} {
		for _, flavor := range []string{"nft", "legacy"} {
			t.Run(mode+"/"+flavor, func(t *testing.T) {
				out, err := inImage(t, root, "--check-binaries", "--proxy-mode="+mode, "--iptables-flavor="+flavor)
				if err != nil {
					t.Fatalf("svcproxy --check-binaries in the image: %v\n%s", err, out)
				}
				if !strings.Contains(out, "proxy mode "+mode+": every required binary found") {
					t.Errorf("--check-binaries does not say every required binary is there:\n%s", out)
				}
				found := 0
				for _, line := range strings.Split(out, "\n") {
					m := listedPath.FindStringSubmatch(line)
					if m == nil || m[1] != flavor {
						continue
					}
					if m[3] == "(MISSING)" {
						t.Errorf("%s is missing from the image", m[2])
						continue
					}
					if strings.HasPrefix(m[3], "/") {
						if _, err := os.Stat(filepath.Join(root, m[3])); err != nil {
							t.Errorf("%s is listed at %s, which the image's file system does not hold: %v", m[2], m[3], err)
						}
						found++
					}
				}
				if found < 6 { // the flavor's iptables, -save, -restore, for both families, at least
					t.Errorf("only %d programs found in the image:\n%s", found, out)
				}
			})
		}
	}
}

// The Dockerfile installs the very list the file system is built from,
// and starts what the DaemonSet runs.
func TestDockerfileMatchesTheImageAndTheManifests(t *testing.T) {
	root := repoRoot(t)
	read := func(path string) string {
		b, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	dockerfile, daemonset := read("Dockerfile"), read("manifests/daemonset.yaml")
	if !strings.Contains(dockerfile, "COPY hack/image-packages.txt") {
		t.Error("the Dockerfile does not install hack/image-packages.txt, the list hack/image-rootfs.sh builds from")
	}
	if !strings.Contains(dockerfile, `ENTRYPOINT ["/usr/local/bin/svcproxy"]`) ||
		!strings.Contains(daemonset, `command: ["/usr/local/bin/svcproxy"]`) {
		t.Error("the Dockerfile's entrypoint and the DaemonSet's command differ")
	}
	if !strings.Contains(dockerfile, "CGO_ENABLED=0") {
		t.Error("svcproxy is not built static: the slim base has no Go toolchain's C libraries to match")
	}
}
