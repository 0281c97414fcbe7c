package conntrack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Tuning is kube-proxy's conntrack configuration (its conntrack.* fields,
// its --conntrack-* flags). Zero leaves a setting as the kernel has it.
type Tuning struct {
	// MaxPerCore times the node's CPUs, but at least Min, is
	// nf_conntrack_max; MaxPerCore 0 leaves the limit and ignores Min.
	MaxPerCore, Min int
	// TCPEstablishedTimeout and TCPCloseWaitTimeout are the idle timeouts
	// of established and half-closed TCP connections.
	TCPEstablishedTimeout, TCPCloseWaitTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal to 1 (out-of-window
	// packets are not marked INVALID); false leaves it.
	TCPBeLiberal bool
	// UDPTimeout and UDPStreamTimeout are the timeouts of unreplied and
	// of assured UDP flows.
	UDPTimeout, UDPStreamTimeout time.Duration
}

// The files the tuning reads and writes. nf_conntrack_max is one limit for
// the whole host: outside the host's network namespace the kernel shows it
// read-only. The other sysctls are each network namespace's own.
const (
	sysctlRoot   = "/proc/sys/"
	maxSysctl    = "net/netfilter/nf_conntrack_max"
	hashsizePath = "/sys/module/nf_conntrack/parameters/hashsize"
	cpusOnline   = "/sys/devices/system/cpu/online"
)

// Sysctl is one setting: a file under /proc/sys and its value.
type Sysctl struct {
	Name  string // "net/netfilter/nf_conntrack_tcp_timeout_established"
	Value int
}

// TuningPlan is what Tune sets.
type TuningPlan struct {
	// Max is nf_conntrack_max, 0 to leave it. Setting it also raises the
	// table's hash size to Max/4 when it is smaller, as kube-proxy does.
	Max int
	// Sysctls are the network namespace's own settings, in kube-proxy's order.
	Sysctls []Sysctl
}

// PlanTuning is kube-proxy's reading of its conntrack configuration on a
// node with cpus CPUs: the limit is MaxPerCore×cpus or Min, whichever is
// larger (nothing when MaxPerCore is 0); a timeout of 0 is left alone,
// others are written in whole seconds (truncated, as kube-proxy does);
// TCPBeLiberal is written only to turn it on.
func PlanTuning(t Tuning, cpus int) TuningPlan {
	var p TuningPlan
	if t.MaxPerCore > 0 {
		p.Max = max(t.MaxPerCore*cpus, t.Min)
	}
	timeout := func(name string, d time.Duration) {
		if d > 0 {
			p.Sysctls = append(p.Sysctls, Sysctl{"net/netfilter/" + name, int(d / time.Second)})
		}
	}
	timeout("nf_conntrack_tcp_timeout_established", t.TCPEstablishedTimeout)
	timeout("nf_conntrack_tcp_timeout_close_wait", t.TCPCloseWaitTimeout)
	if t.TCPBeLiberal {
		p.Sysctls = append(p.Sysctls, Sysctl{"net/netfilter/nf_conntrack_tcp_be_liberal", 1})
	}
	timeout("nf_conntrack_udp_timeout", t.UDPTimeout)
	timeout("nf_conntrack_udp_timeout_stream", t.UDPStreamTimeout)
	return p
}

// Files is how the tuning reaches the kernel's settings: files under
// /proc/sys and /sys. Under /proc/sys/net, the kernel answers for the
// network namespace of the thread that asks.
type Files interface {
	ReadFile(path string) (string, error)
	WriteFile(path, value string) error
	// Writable tells whether this process may write path (access(2)).
	Writable(path string) bool
}

// HostFiles is Files on this process's own file system.
type HostFiles struct{}

// ReadFile implements Files.
func (HostFiles) ReadFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// WriteFile implements Files. It never creates a file: a setting the
// kernel does not have is an error, not a new file.
func (HostFiles) WriteFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(value)
	return errors.Join(werr, f.Close())
}

// Writable implements Files.
func (HostFiles) Writable(path string) bool { return unix.Access(path, unix.W_OK) == nil }

// CPUs is the node's CPU count as kube-proxy counts it: every online CPU
// of the machine (not only those this process may run on), else what Go
// sees.
func CPUs(files Files) int {
	if s, err := files.ReadFile(cpusOnline); err == nil {
		if n := countCPUList(strings.TrimSpace(s)); n > 0 {
			return n
		}
	}
	return runtime.NumCPU()
}

// countCPUList counts the CPUs of a kernel CPU list ("0-3,6,8-9"); 0 if
// it cannot be read.
func countCPUList(s string) int {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		a, errA := strconv.Atoi(lo)
		b, errB := strconv.Atoi(hi)
		if errA != nil || errB != nil || a < 0 || b < a {
			return 0
		}
		n += b - a + 1
	}
	return n
}

// Tune makes the plan's settings, leaving alone those already right, and
// logs each one it changes. A setting it cannot make is a warning, logged
// and returned, never a reason to stop: svcproxy programs traffic the same
// either way, and a container whose /proc/sys is read-only (one that is
// not privileged) or a network namespace other than the host's (where
// nf_conntrack_max is read-only) is a normal place to run. The failures
// are returned in the plan's order.
func Tune(files Files, plan TuningPlan, log *zap.Logger) []error {
	var errs []error
	if plan.Max > 0 {
		if err := setMax(files, plan.Max, log); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range plan.Sysctls {
		if err := set(files, s, log); err != nil {
			errs = append(errs, err)
		}
	}
	for _, err := range errs {
		log.Warn("conntrack setting left as the kernel has it", zap.Error(err))
	}
	return errs
}

// set writes one sysctl unless it already has its value.
func set(files Files, s Sysctl, log *zap.Logger) error {
	p := sysctlRoot + s.Name
	want := strconv.Itoa(s.Value)
	was, err := files.ReadFile(p)
	was = strings.TrimSpace(was)
	if err == nil && was == want {
		log.Debug("sysctl already set", zap.String("sysctl", s.Name), zap.Int("value", s.Value))
		return nil
	}
	if err := files.WriteFile(p, want); err != nil {
		return fmt.Errorf("%s=%d: %s%w", s.Name, s.Value, hint(s.Name, err), err)
	}
	log.Info("set sysctl", zap.String("sysctl", s.Name), zap.Int("value", s.Value), zap.String("was", was))
	return nil
}

// hint says why a write failed where the reason is a known one.
func hint(name string, err error) string {
	switch {
	case errors.Is(err, syscall.EROFS):
		return "/proc/sys is read-only here (a container that is not privileged; " +
			"`svcproxy --init-only` in a privileged init container sets it; 0 leaves it alone): "
	case name == maxSysctl && errors.Is(err, fs.ErrPermission):
		return "read-only outside the host's network namespace " +
			"(--conntrack-max-per-core=0 leaves it alone; kube-proxy would exit here): "
	case errors.Is(err, fs.ErrNotExist):
		return "the kernel has no such setting (nf_conntrack not loaded?): "
	}
	return ""
}

// setMax sets nf_conntrack_max, then raises the hash size to a quarter of
// it when it is smaller, as kube-proxy does. The hash size is a parameter
// of the whole host's conntrack module, so it is raised only where
// nf_conntrack_max, its companion, may be written: never from another
// network namespace. A read-only /sys keeps it as it is, with a warning,
// as in kube-proxy (kubernetes#134108).
func setMax(files Files, limit int, log *zap.Logger) error {
	if err := set(files, Sysctl{maxSysctl, limit}, log); err != nil {
		return err
	}
	s, err := files.ReadFile(hashsizePath)
	if err != nil {
		return fmt.Errorf("reading the conntrack hash size: %w", err)
	}
	size, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("reading the conntrack hash size %s: %q: %w", hashsizePath, s, err)
	}
	want := limit / 4
	switch {
	case size >= want:
		return nil
	case !files.Writable(sysctlRoot + maxSysctl):
		return fmt.Errorf("conntrack hash size %d is below nf_conntrack_max/4 = %d; not raised from "+
			"outside the host's network namespace", size, want)
	case !files.Writable(hashsizePath):
		return fmt.Errorf("conntrack hash size %d is below nf_conntrack_max/4 = %d; not raised: /sys is read-only", size, want)
	}
	if err := files.WriteFile(hashsizePath, strconv.Itoa(want)); err != nil {
		return fmt.Errorf("raising the conntrack hash size from %d to %d: %w", size, want, err)
	}
	log.Info("raised the conntrack hash size", zap.Int("hashsize", want), zap.Int("was", size))
	return nil
}
