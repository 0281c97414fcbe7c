package sandbox

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// KubeProxy says how to run the upstream kube-proxy in the node namespace:
// the peer svcproxy replaces, for tests that take a node over from it and
// for side-by-side measurements.
type KubeProxy struct {
	// Binary is kube-proxy (controlplane.ControlPlane.KubeProxy).
	Binary string
	// Mode is its --proxy-mode: iptables, nftables or ipvs.
	Mode string
	// Flavor is the iptables kube-proxy runs in the iptables and ipvs
	// modes (and to clean up after them in the nftables mode); empty means
	// nft. See StartKubeProxy.
	Flavor netfilter.Flavor
	// Kubeconfig is a kubeconfig for inside the node (KubeconfigInNode);
	// empty means the admin's.
	Kubeconfig string
	// MetricsAddr and HealthzAddr are its --metrics-bind-address and
	// --healthz-bind-address; empty means kube-proxy's (and svcproxy's)
	// defaults, 127.0.0.1:10249 and 0.0.0.0:10256.
	MetricsAddr, HealthzAddr string
	// Extra flags go after the others, so they win.
	Extra []string
}

// withDefaults fills in the defaults and refuses what cannot work.
func (kp KubeProxy) withDefaults(s *Sandbox) (KubeProxy, error) {
	if kp.Binary == "" {
		return kp, errors.New("kube-proxy: no binary given")
	}
	switch kp.Mode {
	case "iptables", "nftables", "ipvs":
	default:
		return kp, fmt.Errorf("kube-proxy mode %q: want iptables, nftables or ipvs", kp.Mode)
	}
	if kp.Flavor == "" {
		kp.Flavor = netfilter.FlavorNFT
	}
	if _, err := netfilter.ParseFlavor(string(kp.Flavor)); err != nil {
		return kp, err
	}
	if kp.Kubeconfig == "" {
		kp.Kubeconfig = s.Kubeconfig
	}
	if kp.MetricsAddr == "" {
		kp.MetricsAddr = "127.0.0.1:10249"
	}
	if kp.HealthzAddr == "" {
		kp.HealthzAddr = "0.0.0.0:10256"
	}
	return kp, nil
}

// Args are kube-proxy's flags: this node, the bridged apiserver, the bed's
// pod ranges, and no conntrack table size (nf_conntrack_max can be set only
// from the host's own namespace; kube-proxy exits when the write fails).
func (kp KubeProxy) args(s *Sandbox) []string {
	args := []string{
		"--proxy-mode=" + kp.Mode,
		"--kubeconfig=" + kp.Kubeconfig,
		"--hostname-override=" + s.opts.NodeName,
		"--cluster-cidr=" + PodCIDR4.String() + "," + PodCIDR6.String(),
		"--conntrack-max-per-core=0",
		"--metrics-bind-address=" + kp.MetricsAddr,
		"--healthz-bind-address=" + kp.HealthzAddr,
		"--v=2",
	}
	return append(args, kp.Extra...)
}

// StartKubeProxy runs the upstream kube-proxy in the node namespace.
//
// kube-proxy runs whatever `iptables`, `iptables-save`, `iptables-restore`
// and their ip6tables kin PATH finds (the flavor detection is in its
// container image's iptables-wrapper, not in the binary), so it gets a PATH
// whose first directory holds those names for kp.Flavor. Before it starts,
// the chain KUBE-IPTABLES-HINT is made in that flavor's mangle table, both
// families, as kubelet does: it tells flavor-detecting programs which
// flavor the node uses.
//
// kube-proxy leaves its rules behind when it ends, as on a real node; they
// go with the namespace.
func (s *Sandbox) StartKubeProxy(kp KubeProxy) (*Process, error) {
	kp, err := kp.withDefaults(s)
	if err != nil {
		return nil, err
	}
	toolDir, err := s.iptablesTools(kp.Flavor)
	if err != nil {
		return nil, err
	}
	if err := s.markIPTablesFlavor(kp.Flavor); err != nil {
		return nil, err
	}
	s.kubeProxies++
	log := filepath.Join(s.opts.Dir, fmt.Sprintf("kube-proxy-%d.log", s.kubeProxies))
	env := []string{"PATH=" + toolDir + ":" + os.Getenv("PATH")}
	return StartIn(s.Bed.Node(), log, env, kp.Binary, kp.args(s)...)
}

// iptablesTools makes (once per flavor) a directory whose iptables,
// iptables-save, iptables-restore and ip6tables kin run the flavor's
// binaries.
func (s *Sandbox) iptablesTools(flavor netfilter.Flavor) (string, error) {
	dir := filepath.Join(s.opts.Dir, "iptables-"+string(flavor))
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(s.opts.Dir, ".iptables-")
	if err != nil {
		return "", err
	}
	if err := writeIPTablesTools(tmp, flavor); err != nil {
		return "", errors.Join(err, os.RemoveAll(tmp))
	}
	return dir, os.Rename(tmp, dir)
}

func writeIPTablesTools(dir string, flavor netfilter.Flavor) error {
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		for _, tool := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(flavor.Binary(family, tool))
			if err != nil {
				return err
			}
			name := strings.Replace(flavor.Binary(family, tool), "-"+string(flavor), "", 1)
			// A script, not a symlink: the multi-call binaries choose what
			// to be from argv[0], which must keep the flavor's name.
			script := "#!/bin/sh\nexec " + target + " \"$@\"\n"
			if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
				return err
			}
		}
	}
	return nil
}

// markIPTablesFlavor creates KUBE-IPTABLES-HINT in the flavor's mangle
// table of both families in the node namespace, unless it is there.
func (s *Sandbox) markIPTablesFlavor(flavor netfilter.Flavor) error {
	const hint = "KUBE-IPTABLES-HINT"
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		bin := flavor.Binary(family, "")
		if _, err := s.Bed.Node().Run(bin, "-w", "-t", "mangle", "-S", hint); err == nil {
			continue
		}
		if _, err := s.Bed.Node().Run(bin, "-w", "-t", "mangle", "-N", hint); err != nil {
			return err
		}
	}
	return nil
}

// WaitKubeProxySynced waits until kube-proxy has programmed its first sync
// (its metrics show a last sync time) and its /healthz answers 200.
func (s *Sandbox) WaitKubeProxySynced(p *Process, kp KubeProxy, timeout time.Duration) error {
	kp, err := kp.withDefaults(s)
	if err != nil {
		return err
	}
	return s.waitSynced(p, "kube-proxy", reachable(kp.MetricsAddr), reachable(kp.HealthzAddr), timeout)
}

// reachable turns a bind address into one to connect to: a wildcard host
// becomes loopback.
func reachable(bind string) string {
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return bind
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
