package ipvs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// modprobeTimeout bounds one modprobe run.
const modprobeTimeout = 30 * time.Second

// CheckSupport tells, at startup and before anything is written, whether
// this kernel can run the IPVS mode with the scheduler ("" is "rr"): nil
// when IPVS, the scheduler and the dummy interface driver are usable, else
// one error naming everything missing and pointing to --mode=iptables (it
// wraps ErrNoDummy when the dummy driver is what is missing).
//
// It writes nothing to the network configuration. It loads modules the way
// kube-proxy does: where modprobe exists it runs `modprobe ip_vs`,
// `modprobe ip_vs_<scheduler>` and `modprobe dummy` (modprobe's absence or
// failure alone proves nothing). IPVS is detected by its generic netlink
// family; the scheduler and the dummy driver by /sys/module/<module> (a
// loaded module), the kernel's modules.builtin (built in), or a successful
// modprobe. Where none of these can tell (no /lib/modules/<release> and no
// /sys/module entry: a built-in driver without parameters on a machine
// without its modules folder), the scheduler or the driver is assumed
// present, and the kernel's own error at the first sync says otherwise.
func CheckSupport(scheduler string) error {
	if scheduler == "" {
		scheduler = "rr"
	}
	var problems []string
	var errs []error
	if !validModuleName(scheduler) {
		return fmt.Errorf("IPVS scheduler %q is not a valid name: pick another --ipvs-scheduler or use --mode=iptables", scheduler)
	}
	runModprobe("ip_vs")
	if err := ipvsFamily(); err != nil {
		problems = append(problems, "the kernel has no IPVS (module ip_vs): load it or use --mode=iptables")
		errs = append(errs, err)
	} else if mod := "ip_vs_" + scheduler; moduleAvailable(mod) == moduleMissing {
		problems = append(problems, fmt.Sprintf("IPVS scheduler %q is not available (no module %s): pick another --ipvs-scheduler or use --mode=iptables", scheduler, mod))
	}
	if moduleAvailable("dummy") == moduleMissing {
		problems = append(problems, "the kernel has no dummy interface driver (module dummy) for "+DummyName+": load it or use --mode=iptables")
		errs = append(errs, ErrNoDummy)
	}
	if len(problems) == 0 {
		return nil
	}
	return &supportError{msg: strings.Join(problems, "; "), errs: errs}
}

// supportError is CheckSupport's one error: every missing piece in its
// message, ErrNoDummy and the kernel's answers wrapped.
type supportError struct {
	msg  string
	errs []error
}

func (e *supportError) Error() string   { return e.msg }
func (e *supportError) Unwrap() []error { return e.errs }

func validModuleName(name string) bool {
	return regexp.MustCompile(`^[a-z0-9_]+$`).MatchString(name)
}

// runModprobe loads a module where modprobe exists, and reports whether it
// succeeded (false also when there is no modprobe).
func runModprobe(module string) bool {
	path, err := exec.LookPath("modprobe")
	if err != nil {
		for _, p := range []string{"/usr/sbin/modprobe", "/sbin/modprobe"} {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
		if path == "" {
			return false
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), modprobeTimeout)
	defer cancel()
	return exec.CommandContext(ctx, path, "-q", module).Run() == nil
}

type moduleState int

const (
	moduleUnknown moduleState = iota // nothing can tell
	moduleMissing
	modulePresent
)

// moduleAvailable tells whether a kernel module (by its name with
// underscores, as in /sys/module) is loaded, built in, or loadable, trying
// in that order; missing only when the machine's modules folder exists to
// say so. (A built-in module shows in /sys/module only if it has
// parameters visible there or a version: neither the dummy driver nor the
// schedulers do.)
func moduleAvailable(module string) moduleState {
	if _, err := os.Stat(filepath.Join("/sys/module", module)); err == nil {
		return modulePresent
	}
	dir := ""
	if release, err := kernelRelease(); err == nil {
		dir = filepath.Join("/lib/modules", release)
		if builtin, _ := builtinModule(filepath.Join(dir, "modules.builtin"), module); builtin {
			return modulePresent
		}
	}
	if runModprobe(module) {
		return modulePresent
	}
	if dir != "" {
		if _, err := os.Stat(dir); err == nil {
			return moduleMissing
		}
	}
	return moduleUnknown
}

// builtinModule reports whether modules.builtin lists the module
// ("kernel/net/netfilter/ipvs/ip_vs_rr.ko"); modules' file names may spell
// '_' as '-'.
func builtinModule(path, module string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		base := strings.TrimSuffix(filepath.Base(strings.TrimSpace(sc.Text())), ".ko")
		if strings.ReplaceAll(base, "-", "_") == module {
			return true, nil
		}
	}
	return false, sc.Err()
}

// kernelRelease is uname -r.
func kernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// ConnReuseFixed reports whether the running kernel is 5.9 or later, where
// IPVS's conn_reuse_mode=1 no longer stalls connections that reuse a
// source port of an old one (kube-proxy sets conn_reuse_mode=0 only on
// older kernels).
func ConnReuseFixed() (bool, error) {
	release, err := kernelRelease()
	if err != nil {
		return false, err
	}
	major, minor, err := parseRelease(release)
	if err != nil {
		return false, err
	}
	return major > 5 || (major == 5 && minor >= 9), nil
}

// parseRelease reads major and minor of a kernel release such as
// "6.1.0-18-amd64" or "5.10.0".
func parseRelease(release string) (major, minor int, err error) {
	m := regexp.MustCompile(`^(\d+)\.(\d+)`).FindStringSubmatch(release)
	if m == nil {
		return 0, 0, fmt.Errorf("cannot read kernel release %q", release)
	}
	major, err1 := strconv.Atoi(m[1])
	minor, err2 := strconv.Atoi(m[2])
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("cannot read kernel release %q: %w", release, err)
	}
	return major, minor, nil
}
