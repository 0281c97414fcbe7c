package sandbox

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/internal/controlplane"
	"github.com/svcproxy/svcproxy/internal/netnstest"
)

// Options describe a sandbox node.
type Options struct {
	ControlPlane *controlplane.ControlPlane
	Pods         int    // pod namespaces behind the node
	NodeName     string // the Node object's name; default "sandbox-node"
	Zone         string // its topology zone label, if any
	Binary       string // the svcproxy binary
	Dir          string // logs and the node's kubeconfig go here
}

// Sandbox is a node namespace wired to the control plane, ready to run
// svcproxy. Everything it made is removed by t's cleanups.
type Sandbox struct {
	Bed    *netnstest.Bed
	Bridge *Bridge
	opts   Options
	// Kubeconfig is the admin kubeconfig as seen from inside the node
	// namespace (through the bridge).
	Kubeconfig string
	// ProxyEnv is added to the environment of every svcproxy started from
	// now on (a PATH with stand-in tools, say).
	ProxyEnv    []string
	proxies     int
	kubeProxies int
}

// APIServerInNode is where the bridge answers inside the node namespace.
const APIServerInNode = "127.0.0.1:6443"

// New builds the bed, bridges the apiserver into the node namespace and
// registers the Node object.
func New(ctx context.Context, t netnstest.TB, opts Options) (*Sandbox, error) {
	if opts.NodeName == "" {
		opts.NodeName = "sandbox-node"
	}
	s := &Sandbox{opts: opts, Bed: netnstest.NewBed(t, opts.Pods)}
	target, err := url.Parse(opts.ControlPlane.URL())
	if err != nil {
		return nil, err
	}
	s.Bridge, err = NewBridge(s.Bed.Node(), APIServerInNode, target.Host)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = s.Bridge.Close() })
	s.Kubeconfig, err = s.KubeconfigInNode(opts.ControlPlane.AdminKubeconfig())
	if err != nil {
		return nil, err
	}
	if err := RegisterNode(ctx, opts.ControlPlane.Clientset(), opts.NodeName, s.Bed, opts.Zone); err != nil {
		return nil, err
	}
	return s, nil
}

// NetnsPath names ns for `nsenter --net=PATH` while this process runs. The
// bed's namespaces have no names (nothing in /run/netns outlives a test);
// this process's file descriptors hold them, and /proc shows those.
func NetnsPath(ns *netnstest.NS) string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns.Handle()))
}

// NodeName is the name of the sandbox's Node.
func (s *Sandbox) NodeName() string { return s.opts.NodeName }

// KubeconfigInNode rewrites a host kubeconfig (say, one for a
// ServiceAccount token) to reach the apiserver through the bridge.
func (s *Sandbox) KubeconfigInNode(hostKubeconfig string) (string, error) {
	dst := filepath.Join(s.opts.Dir, "node-"+filepath.Base(hostKubeconfig))
	return dst, RewriteKubeconfig(hostKubeconfig, dst, "https://"+APIServerInNode)
}

// ProxyArgs are the flags StartProxy always passes: the daemon pointed at
// the bridged apiserver as this node, with the bed's pod ranges.
func (s *Sandbox) ProxyArgs(kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + s.opts.NodeName,
		"--cluster-cidr=" + PodCIDR4.String() + "," + PodCIDR6.String(),
	}
}

// StartProxy runs the svcproxy binary in the node namespace with the
// admin kubeconfig, ProxyArgs and extra flags after them.
func (s *Sandbox) StartProxy(extra ...string) (*Process, error) {
	return s.StartProxyAs(s.Kubeconfig, extra...)
}

// StartProxyAs is StartProxy with another kubeconfig (already rewritten for
// the node, see KubeconfigInNode).
func (s *Sandbox) StartProxyAs(kubeconfig string, extra ...string) (*Process, error) {
	s.proxies++
	log := filepath.Join(s.opts.Dir, fmt.Sprintf("svcproxy-%d.log", s.proxies))
	args := append(s.ProxyArgs(kubeconfig), extra...)
	return StartIn(s.Bed.Node(), log, s.ProxyEnv, s.opts.Binary, args...)
}

// WaitHealthy waits until the daemon has programmed its first sync (its
// metrics show a last sync time; /healthz answers from the start, before
// svcproxy has even heard from the API server) and /healthz answers 200.
func (s *Sandbox) WaitHealthy(p *Process, timeout time.Duration) error {
	return s.waitSynced(p, "svcproxy", "127.0.0.1:10249", "127.0.0.1:10256", timeout)
}

// waitSynced waits until the proxy p serving metrics and /healthz at those
// addresses of the node namespace has synced and is healthy.
func (s *Sandbox) waitSynced(p *Process, name, metricsAddr, healthzAddr string, timeout time.Duration) error {
	c := Client(s.Bed.Node(), time.Second)
	_, err := WaitFor(timeout, func() error {
		if done, exitErr := p.Exited(); done {
			return fmt.Errorf("%s exited (%v):\n%s", name, exitErr, p.Output())
		}
		if err := synced(c, name, metricsAddr); err != nil {
			return err
		}
		_, err := Get(c, "http://"+healthzAddr+"/healthz")
		return err
	})
	return err
}

// synced checks a proxy's metrics for a first successful sync.
func synced(c *http.Client, name, metricsAddr string) error {
	resp, err := c.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if !strings.Contains(string(body), "\nkubeproxy_sync_proxy_rules_last_timestamp_seconds{") {
		return fmt.Errorf("%s has not synced yet", name)
	}
	return nil
}
