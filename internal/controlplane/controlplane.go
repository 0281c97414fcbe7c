// Package controlplane runs a real etcd, kube-apiserver and, when asked,
// kube-controller-manager on loopback, for svcproxy's integration tests and
// `make run`. The binaries come from hack/controlplane-bins.sh; everything
// they need (service-account keys, an admin token, kubeconfigs) is generated
// here into a work directory that Stop removes along with the processes.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Options says where the binaries are and what to run.
type Options struct {
	// BinDir holds etcd, kube-apiserver and kube-controller-manager (and
	// kube-proxy and kubectl of the same release, see KubeProxy and
	// Kubectl): the directory hack/controlplane-bins.sh prints.
	BinDir string
	// WorkDir is where the control plane makes a directory of its own for
	// data, keys, logs and kubeconfigs; Stop removes that directory, never
	// WorkDir itself. Empty means os.TempDir().
	WorkDir string
	// WithControllerManager also runs kube-controller-manager with the
	// controllers that turn Pods into EndpointSlices and give namespaces
	// their default ServiceAccount and its tokens.
	WithControllerManager bool
	// ServiceCIDRs is the apiserver's --service-cluster-ip-range: one
	// prefix, or one IPv4 and one IPv6 prefix for a dual-stack cluster.
	// Empty means 10.96.0.0/16.
	ServiceCIDRs []netip.Prefix
	// Log receives the control plane's progress. The programs' own output
	// goes to log files in the work directory (see Processes). Nil means
	// no logging.
	Log *zap.Logger
}

// ControlPlane is a running control plane. Its methods are safe to call
// from several goroutines.
type ControlPlane struct {
	dir             string
	binDir          string
	url             string
	caPEM           []byte
	adminKubeconfig string
	restConfig      *rest.Config
	clientset       *kubernetes.Clientset
	readyAfter      time.Duration
	log             *zap.Logger

	mu               sync.Mutex
	processes        []*process // in start order; Stop ends them in reverse
	tokenKubeconfigs int
	stopped          bool
	stopErr          error
}

// startTimeout bounds a start whose context has no earlier deadline; a cold
// apiserver on a busy two-core machine needs well under a minute.
const startTimeout = 2 * time.Minute

// stopGrace is how long a program gets to end after SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// Start runs the control plane and returns once the apiserver answers
// /readyz, the default namespace exists and, with the controller manager,
// the default ServiceAccount exists. ctx bounds only the start: the
// programs run until Stop.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	began := time.Now()
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(opts.WorkDir, "controlplane-")
	if err != nil {
		return nil, err
	}
	if _, bounded := ctx.Deadline(); !bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}

	cp := &ControlPlane{dir: dir, binDir: opts.BinDir, log: opts.Log}
	if err := cp.start(ctx, opts); err != nil {
		if stopErr := cp.Stop(); stopErr != nil {
			cp.log.Warn("cleaning up after a failed start", zap.Error(stopErr))
		}
		return nil, err
	}
	cp.readyAfter = time.Since(began)
	cp.log.Info("control plane ready", zap.String("url", cp.url),
		zap.Duration("after", cp.readyAfter), zap.String("kubeconfig", cp.adminKubeconfig))
	return cp, nil
}

func (cp *ControlPlane) start(ctx context.Context, opts Options) error {
	creds, err := writeCredentials(cp.dir)
	if err != nil {
		return err
	}
	if err := cp.startStorageAndAPIServer(ctx, opts, creds); err != nil {
		return err
	}
	if err := cp.connect(ctx, creds); err != nil {
		return err
	}
	if opts.WithControllerManager {
		return cp.startControllerManager(ctx, opts, creds)
	}
	return nil
}

// withDefaults fills in the defaults and checks what cannot work.
func (o Options) withDefaults() (Options, error) {
	for _, name := range o.binaries() {
		if _, err := findBinary(o.BinDir, name); err != nil {
			return o, err
		}
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if len(o.ServiceCIDRs) == 0 {
		o.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	}
	switch {
	case len(o.ServiceCIDRs) > 2:
		return o, fmt.Errorf("service CIDRs %v: at most one IPv4 and one IPv6 prefix", o.ServiceCIDRs)
	case len(o.ServiceCIDRs) == 2 && o.ServiceCIDRs[0].Addr().Is4() == o.ServiceCIDRs[1].Addr().Is4():
		return o, fmt.Errorf("service CIDRs %v: a dual-stack cluster needs one IPv4 and one IPv6 prefix", o.ServiceCIDRs)
	}
	for _, p := range o.ServiceCIDRs {
		if !p.IsValid() || p.Masked() != p {
			return o, fmt.Errorf("service CIDR %v is not a network prefix", p)
		}
	}
	return o, nil
}

func (o Options) binaries() []string {
	if o.WithControllerManager {
		return []string{etcdBinary, apiserverBinary, controllerManagerBinary}
	}
	return []string{etcdBinary, apiserverBinary}
}

// findBinary is the path of one of the binaries hack/controlplane-bins.sh
// builds, or an error that says how to build it.
func findBinary(dir, name string) (string, error) {
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("control plane binary %s not found in %q (build it with hack/controlplane-bins.sh): %w", name, dir, err)
	}
	return path, nil
}

func (o Options) serviceClusterIPRange() string {
	parts := make([]string, len(o.ServiceCIDRs))
	for i, p := range o.ServiceCIDRs {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// URL is the apiserver's address, https://127.0.0.1:PORT.
func (cp *ControlPlane) URL() string { return cp.url }

// AdminKubeconfig is the path of a kubeconfig for a user in system:masters
// that trusts the apiserver's serving certificate.
func (cp *ControlPlane) AdminKubeconfig() string { return cp.adminKubeconfig }

// RESTConfig is a copy of the admin's client configuration.
func (cp *ControlPlane) RESTConfig() *rest.Config { return rest.CopyConfig(cp.restConfig) }

// Clientset is an admin client.
func (cp *ControlPlane) Clientset() kubernetes.Interface { return cp.clientset }

// ReadyAfter is how long Start took.
func (cp *ControlPlane) ReadyAfter() time.Duration { return cp.readyAfter }

// KubeProxy is the path of the upstream kube-proxy of the control plane's
// release, built beside it by hack/controlplane-bins.sh: for tests that run
// it next to svcproxy, or before it on the same node. The control plane
// never runs it.
func (cp *ControlPlane) KubeProxy() (string, error) { return findBinary(cp.binDir, kubeProxyBinary) }

// Kubectl is the path of the kubectl of the control plane's release, built
// beside it by hack/controlplane-bins.sh; AdminKubeconfig is its
// --kubeconfig.
func (cp *ControlPlane) Kubectl() (string, error) { return findBinary(cp.binDir, kubectlBinary) }

// Dir is the control plane's work directory; Stop removes it.
func (cp *ControlPlane) Dir() string { return cp.dir }

// Processes lists the programs running for this control plane, in start
// order; empty after Stop.
func (cp *ControlPlane) Processes() []Process {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	out := make([]Process, len(cp.processes))
	for i, p := range cp.processes {
		out[i] = p.Process
	}
	return out
}

// KubeconfigForToken writes a kubeconfig that authenticates with token
// (a ServiceAccount token, say, from the TokenRequest API) and returns its
// path. It lets a test run a program with exactly that account's rights.
func (cp *ControlPlane) KubeconfigForToken(token string) (string, error) {
	cp.mu.Lock()
	cp.tokenKubeconfigs++
	path := filepath.Join(cp.dir, fmt.Sprintf("token-%d.kubeconfig", cp.tokenKubeconfigs))
	cp.mu.Unlock()
	if err := writeKubeconfig(path, cp.url, cp.caPEM, "token", token); err != nil {
		return "", err
	}
	return path, nil
}

// Stop ends every program this control plane started, newest first (only
// those PIDs: SIGTERM, then SIGKILL after a grace period), and removes the
// work directory. Calling it again returns the first call's result.
func (cp *ControlPlane) Stop() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return cp.stopErr
	}
	cp.stopped = true
	stopErr := cp.stopProcessesLocked()
	cp.stopErr = errors.Join(stopErr, os.RemoveAll(cp.dir))
	cp.log.Info("control plane stopped", zap.Error(cp.stopErr))
	return cp.stopErr
}

func (cp *ControlPlane) stopProcessesLocked() error {
	var errs []error
	for i := len(cp.processes) - 1; i >= 0; i-- {
		errs = append(errs, cp.processes[i].stop(stopGrace))
	}
	cp.processes = nil
	return errors.Join(errs...)
}

// launch starts one of the control plane's programs and remembers it for Stop.
func (cp *ControlPlane) launch(bin string, binDir string, args []string) (*process, error) {
	p, err := launch(bin, filepath.Join(binDir, bin), args, cp.dir)
	if err != nil {
		return nil, err
	}
	cp.mu.Lock()
	cp.processes = append(cp.processes, p)
	cp.mu.Unlock()
	cp.log.Info("started", zap.String("program", bin), zap.Int("pid", p.PID), zap.String("log", p.LogPath))
	return p, nil
}
