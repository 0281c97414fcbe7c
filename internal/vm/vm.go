// Package vm runs a program as root inside a qemu VM that boots Debian's stock
// kernel over this machine's own root file system.
//
// It exists because this machine's kernel has no IPVS and no dummy interface
// driver (and no modules at all), while Debian's kernel has both as modules: the
// project's IPVS tests run unchanged inside the VM, with the host's binaries,
// iptables, ipset and Go test binaries, at the host's paths.
//
// hack/vm-kernel.sh prepares the kernel, its modules and the initramfs; the
// comment at its top describes the VM's side of the protocol this package
// speaks. Everything in the VM runs 5-10 times slower than on the host (it is
// emulated: KVM guests hang on this machine), and a boot takes about five
// seconds, so callers boot one VM per test package, not one per test.
package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// KernelDir returns the ready kernel directory, running hack/vm-kernel.sh
// (found by walking up from the working directory, so that it works from any
// package's tests) to prepare it if needed. A cold run installs qemu and
// friends with apt and downloads the kernel package (about 70 MB); a warm one
// takes milliseconds.
func KernelDir() (string, error) {
	script, err := findScript()
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stdout = &stdout
	// Progress of a cold run is worth seeing as it happens.
	cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("vm: %s: %w: %s", script, err, strings.TrimSpace(stderr.String()))
	}
	dir := strings.TrimSpace(stdout.String())
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("vm: %s printed %q, not a directory", script, dir)
	}
	return dir, nil
}

func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("vm: %w", err)
	}
	for {
		p := filepath.Join(dir, "hack", "vm-kernel.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("vm: hack/vm-kernel.sh not found in the working directory or above it")
		}
		dir = parent
	}
}

// Job is what runs inside the VM, as root, in this machine's file system seen
// through a tmpfs overlay: it may write anywhere, but what it writes is lost
// with the VM, except inside Shares.
type Job struct {
	// Args is the program and its arguments; its stdin is /dev/null and its
	// stdout and stderr go to the console. A relative Args[0] is looked up
	// in PATH inside the VM. The VM has fresh, empty /tmp and /run, so a
	// program there (go test's binaries live in /tmp) must be inside one of
	// Shares.
	Args []string
	// Env is added to the environment, after PATH, HOME and TERM=dumb, so it
	// can override them.
	Env []string
	// Dir is the working directory; "" means /.
	Dir string
	// Shares are host directories mounted read-write at the same paths in the
	// VM, for results the job writes and for files under /tmp that the job
	// needs. Writes reach the host at once.
	Shares []string
}

// Config is how the VM is run.
type Config struct {
	// KernelDir is the result of KernelDir; "" calls it.
	KernelDir string
	// MemoryMiB is the VM's memory; 0 means 2048.
	MemoryMiB int
	// Timeout bounds the whole VM, boot to poweroff; 0 means ten minutes.
	Timeout time.Duration
	// Console receives everything the VM prints on its serial console as it
	// comes: the kernel's warnings, the init's progress lines (prefixed
	// "svcproxy-vm:") and the job's stdout and stderr. nil discards it.
	Console io.Writer
}

const (
	defaultMemoryMiB = 2048
	defaultTimeout   = 10 * time.Minute
	// consoleTailLines is how much of the console an error quotes.
	consoleTailLines = 40
)

// The emulated CPU: with x86-64-v2's SSE4.2 and POPCNT a boot to the job took
// 5.5 s here against 7.5 s with plain qemu64 (the init's modprobe of a hundred
// modules most of the difference). No AVX: its emulation is new in qemu 7.2,
// and "max" was no faster.
const cpuModel = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt"

// Run boots a VM, runs job in it and returns the job's exit status (128+n
// when a signal n ended it). An error means there is no exit status: the VM
// did not reach the job, died while it ran, timed out or ctx ended; it says
// which and quotes the last console lines. qemu is killed (by its PID) and
// waited for before Run returns, whatever happens.
func Run(ctx context.Context, cfg Config, job Job) (exitCode int, err error) {
	if err := job.validate(); err != nil {
		return -1, err
	}
	kernelDir := cfg.KernelDir
	if kernelDir == "" {
		if kernelDir, err = KernelDir(); err != nil {
			return -1, err
		}
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return -1, fmt.Errorf("vm: %w (hack/vm-kernel.sh installs it)", err)
	}
	mem := cfg.MemoryMiB
	if mem <= 0 {
		mem = defaultMemoryMiB
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}

	// The job reaches the VM as files in a directory of its own, shared
	// with it: the kernel command line cannot carry much ("Too many boot init
	// vars"), and the same directory brings back the exit status.
	jobDir, err := os.MkdirTemp("", "svcproxy-vm-job-")
	if err != nil {
		return -1, fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(jobDir)
	shares := job.shares()
	if err := writeJob(jobDir, job, shares); err != nil {
		return -1, err
	}

	args := []string{
		"-M", "q35", "-accel", "tcg", "-cpu", cpuModel, "-smp", "1",
		"-m", strconv.Itoa(mem),
		// No graphics, no default devices (NIC included): the serial
		// console on stdout is the only output. -display none rather than
		// -nographic keeps SeaBIOS's terminal escapes off the console.
		"-display", "none", "-nodefaults", "-serial", "stdio", "-monitor", "none",
		// A kernel panic or triple fault ends qemu instead of looping.
		"-no-reboot",
		"-kernel", filepath.Join(kernelDir, "kernel"),
		"-initrd", filepath.Join(kernelDir, "initramfs.cpio"),
		"-append", "console=ttyS0 panic=-1 quiet mitigations=off i8042.noaux i8042.nokbd",
		// Entropy, so that getrandom does not wait in a VM with no devices.
		"-device", "virtio-rng-pci",
		"-virtfs", virtfs("/", "hostroot", true),
		"-virtfs", virtfs(filepath.Join(kernelDir, "lib", "modules"), "kmod", true),
		"-virtfs", virtfs(jobDir, "job", false),
	}
	for i, s := range shares {
		args = append(args, "-virtfs", virtfs(s, shareTag(i), false))
	}

	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tail := &lineTail{max: consoleTailLines}
	console := cfg.Console
	if console == nil {
		console = io.Discard
	}
	out := &crlfWriter{w: consoleWriter{tail: tail, console: console}}
	cmd := exec.CommandContext(runCtx, qemu, args...)
	cmd.Stdout = out
	cmd.Stderr = out // the same writer: exec then never writes to it concurrently
	// qemu dies with this process too, should it be killed before it can
	// kill qemu (a test binary's time-out, say).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// qemu has no children that could hold its output open, but if it ever
	// did, Wait must not hang on them.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked the child ends, not
		// the process, and the runtime ends the threads of goroutines that
		// exit locked (as netnstest's do); an ordinary thread may be handed
		// to such a goroutine later. A thread of its own, alive exactly as
		// long as qemu, is the only safe parent. Never unlocked.
		runtime.LockOSThread()
		done <- cmd.Run()
	}()
	runErr := <-done
	elapsed := time.Since(start).Round(100 * time.Millisecond)

	if code, ok := readExit(jobDir); ok {
		return code, nil
	}
	var what string
	var cause error
	switch {
	case ctx.Err() != nil:
		cause = ctx.Err()
		what = fmt.Sprintf("stopped after %v", elapsed)
		if c := context.Cause(ctx); c != cause {
			what += " (" + c.Error() + ")"
		}
	case runCtx.Err() != nil:
		what = fmt.Sprintf("timed out after %v", timeout)
	case runErr != nil:
		what = fmt.Sprintf("qemu failed after %v: %v", elapsed, runErr)
	default:
		// A kernel panic (qemu ends on it, see -no-reboot) or the
		// init failing to set the VM up.
		what = fmt.Sprintf("VM ended after %v without an exit status", elapsed)
	}
	if _, err := os.Stat(filepath.Join(jobDir, "started")); err == nil {
		what += " while the job ran"
	} else {
		what += " before the job started"
	}
	if cause != nil {
		return -1, fmt.Errorf("vm: %s: %w; last console lines:\n%s", what, cause, tail)
	}
	return -1, fmt.Errorf("vm: %s; last console lines:\n%s", what, tail)
}

func (j Job) validate() error {
	if len(j.Args) == 0 || j.Args[0] == "" {
		return errors.New("vm: job has no program")
	}
	for _, s := range j.Shares {
		if !filepath.IsAbs(s) {
			return fmt.Errorf("vm: share %q is not an absolute path", s)
		}
		clean := filepath.Clean(s)
		for _, bad := range []string{"/", "/proc", "/sys", "/dev", "/run/svcproxy-vm"} {
			if clean == bad || (bad != "/" && strings.HasPrefix(clean, bad+"/")) {
				return fmt.Errorf("vm: share %q: the VM's init owns %s", s, bad)
			}
		}
		if strings.ContainsAny(clean, "\n,") {
			// One share a line in the job's list, and qemu splits -virtfs
			// options at commas.
			return fmt.Errorf("vm: share %q: newlines and commas are not supported", s)
		}
		if fi, err := os.Stat(clean); err != nil || !fi.IsDir() {
			return fmt.Errorf("vm: share %q is not a directory", s)
		}
	}
	if p := j.Args[0]; filepath.IsAbs(p) && fresh(p) && !j.inShare(p) {
		return fmt.Errorf("vm: %s: /tmp and /run are empty in the VM; put the program in one of Shares", p)
	}
	return nil
}

// fresh tells whether path is in a directory the VM mounts empty.
func fresh(path string) bool {
	for _, d := range []string{"/tmp", "/run"} {
		if path == d || strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

func (j Job) inShare(path string) bool {
	for _, s := range j.Shares {
		if rel, err := filepath.Rel(filepath.Clean(s), path); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return true
		}
	}
	return false
}

// shares returns the job's shares cleaned, without duplicates, parents
// before children so that mounting them in order nests them right.
func (j Job) shares() []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range j.Shares {
		c := filepath.Clean(s)
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out
}

func shareTag(i int) string { return "share" + strconv.Itoa(i) }

func virtfs(path, tag string, readonly bool) string {
	// remap: a share spanning several file systems (/ does) would otherwise
	// give clashing inode numbers.
	s := "local,path=" + path + ",mount_tag=" + tag + ",security_model=none,multidevs=remap"
	if readonly {
		s += ",readonly=on"
	}
	return s
}

// writeJob writes the files the VM's init reads from the job directory.
func writeJob(dir string, job Job, shares []string) error {
	var list strings.Builder
	for i, s := range shares {
		fmt.Fprintf(&list, "%s %s\n", shareTag(i), s)
	}
	if err := os.WriteFile(filepath.Join(dir, "shares"), []byte(list.String()), 0o644); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	wd := job.Dir
	if wd == "" {
		wd = "/"
	}
	var b strings.Builder
	b.WriteString("# Written by internal/vm; run by the VM's init with /bin/sh.\n")
	fmt.Fprintf(&b, "cd %s || exit 125\n", shQuote(wd))
	env := append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"TERM=dumb",
	}, job.Env...)
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !validEnvName(k) {
			return fmt.Errorf("vm: environment entry %q is not NAME=value", kv)
		}
		fmt.Fprintf(&b, "export %s\n", shQuote(kv))
	}
	b.WriteString("exec")
	for _, a := range job.Args {
		b.WriteString(" " + shQuote(a))
	}
	b.WriteString("\n")
	if err := os.WriteFile(filepath.Join(dir, "job.sh"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	return nil
}

func validEnvName(k string) bool {
	if k == "" || (k[0] >= '0' && k[0] <= '9') {
		return false
	}
	for _, c := range k {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// readExit reads the status the VM's init writes (by rename, so it is whole)
// just before powering off.
func readExit(jobDir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(jobDir, "exit"))
	if err != nil {
		return 0, false
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, false
	}
	return code, true
}
