// Package app assembles the svcproxy daemon: configuration (kube-proxy's
// flags and config file), logging, the informer source, the per-family
// backends, the sync loop, and the health, health-check and metrics
// servers, run until a signal.
package app

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeproxy "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/ipvs"
)

// Config is everything the daemon runs with, resolved and validated.
type Config struct {
	// Mode is the proxy mode: iptables or ipvs.
	Mode string

	// Kubeconfig and Master locate the API server; both empty means the
	// in-cluster configuration.
	Kubeconfig, Master string
	// ContentType, QPS and Burst tune the API client (clientConnection).
	ContentType string
	QPS         float32
	Burst       int32
	// NodeName is the Node this proxy runs on (--hostname-override, else
	// the host name, lowercased).
	NodeName string

	ClusterCIDRs []netip.Prefix // at most one per family
	// DetectLocalMode is how pod traffic is told from the rest
	// (detectLocalMode; ClusterCIDR when unset): by ClusterCIDRs, by the
	// Node's podCIDRs (NodeCIDR), or by the interface it comes in on
	// (BridgeInterface, InterfaceNamePrefix), which PodInterface holds as
	// iptables matches it.
	DetectLocalMode string
	PodInterface    string
	MasqueradeAll   bool
	MasqueradeBit   int
	// LocalhostNodePorts is iptables.localhostNodePorts: in iptables mode,
	// IPv4 node ports answer on 127.0.0.0/8 too (route_localnet).
	LocalhostNodePorts bool
	// NodePortAddresses limits the addresses node ports answer on; empty
	// means every local address. NodePortPrimary asks for the node's
	// primary IP of each family instead, known once the Node is read.
	NodePortAddresses []netip.Prefix
	NodePortPrimary   bool

	// SyncPeriod and MinSyncPeriod are the running mode's own: its
	// iptables or ipvs settings, as kube-proxy's conversion picks them.
	SyncPeriod, MinSyncPeriod time.Duration
	// ConfigSyncPeriod is the informers' resync period.
	ConfigSyncPeriod time.Duration

	// HealthzBindAddress and MetricsBindAddress are host:port; "" turns
	// the server off.
	HealthzBindAddress, MetricsBindAddress string
	// EnableProfiling serves net/http/pprof on the metrics server, as
	// kube-proxy's enableProfiling does.
	EnableProfiling bool

	// IPVS is the IPVS mode's part.
	IPVS IPVSConfig

	// Conntrack is the tuning of the conntrack table at startup (both modes).
	Conntrack conntrack.Tuning

	// Flavor is auto, nft or legacy.
	Flavor string
	// APITimeout bounds the wait at startup for the API server to list
	// Services, EndpointSlices and the Node; NodeTimeout bounds the wait
	// for the Node to have addresses.
	APITimeout, NodeTimeout time.Duration

	Verbosity int
	LogFormat string // "text" or "json"
}

// IPVSConfig is what only the IPVS mode reads, besides its sync periods.
type IPVSConfig struct {
	// Scheduler is the IPVS scheduler of every virtual server; kube-proxy's
	// empty default is rr.
	Scheduler string
	// ExcludeCIDRs hold virtual servers svcproxy never touches: not when
	// it syncs, nor when the iptables mode removes an IPVS run's leftovers.
	ExcludeCIDRs []netip.Prefix
	// StrictARP keeps the node from answering ARP for kube-ipvs0's addresses.
	StrictARP bool
	// TCPTimeout, TCPFinTimeout and UDPTimeout are IPVS's connection
	// timeouts; 0 leaves the kernel's as they are.
	TCPTimeout, TCPFinTimeout, UDPTimeout time.Duration
	// DrainTimeout bounds how long a TCP real server that left waits at
	// weight 0 for its connections to end (svcproxy's --ipvs-drain-timeout;
	// kube-proxy has no bound).
	DrainTimeout time.Duration
}

// The proxy modes svcproxy runs.
const (
	modeIPTables = "iptables"
	modeIPVS     = "ipvs"
)

// The values kube-proxy fills in for fields a configuration leaves unset
// (its SetDefaults_KubeProxyConfiguration), for the fields svcproxy reads.
const (
	defaultHealthzPort      = 10256
	defaultMetricsPort      = 10249
	defaultSyncPeriod       = 30 * time.Second
	defaultMinSyncPeriod    = time.Second
	defaultConfigSyncPeriod = 15 * time.Minute
	defaultMasqueradeBit    = 14
	defaultConntrackPerCore = 32 * 1024
	defaultConntrackMin     = 128 * 1024
	defaultTCPEstablished   = 24 * time.Hour
	defaultTCPCloseWait     = time.Hour
	defaultContentType      = "application/vnd.kubernetes.protobuf"
	defaultQPS              = 5
	defaultBurst            = 10
	configAPIVersion        = "kubeproxy.config.k8s.io/v1alpha1"
	configKind              = "KubeProxyConfiguration"
)

// setDefaults fills the unset fields kube-proxy would fill.
func setDefaults(c *kubeproxy.KubeProxyConfiguration) {
	c.HealthzBindAddress = withDefaultPort(c.HealthzBindAddress, "0.0.0.0", defaultHealthzPort)
	c.MetricsBindAddress = withDefaultPort(c.MetricsBindAddress, "127.0.0.1", defaultMetricsPort)
	if c.BindAddress == "" {
		c.BindAddress = "0.0.0.0"
	}
	if c.IPTables.LocalhostNodePorts == nil {
		c.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	if c.IPTables.MasqueradeBit == nil {
		bit := int32(defaultMasqueradeBit)
		c.IPTables.MasqueradeBit = &bit
	}
	setDuration(&c.IPTables.SyncPeriod, defaultSyncPeriod)
	setDuration(&c.IPTables.MinSyncPeriod, defaultMinSyncPeriod)
	// kube-proxy leaves ipvs.minSyncPeriod 0 (a sync on every change) where
	// its flags default to 1s; svcproxy takes 1s for both, as for iptables.
	setDuration(&c.IPVS.SyncPeriod, defaultSyncPeriod)
	setDuration(&c.IPVS.MinSyncPeriod, defaultMinSyncPeriod)
	setDuration(&c.ConfigSyncPeriod, defaultConfigSyncPeriod)
	setConntrackDefaults(&c.Conntrack)
	if c.ClientConnection.ContentType == "" {
		c.ClientConnection.ContentType = defaultContentType
	}
	if c.ClientConnection.QPS == 0 {
		c.ClientConnection.QPS = defaultQPS
	}
	if c.ClientConnection.Burst == 0 {
		c.ClientConnection.Burst = defaultBurst
	}
	if c.Logging.Format == "" {
		c.Logging.Format = "text"
	}
}

// setConntrackDefaults fills what kube-proxy fills: an unset field, not
// one set to 0, which leaves the kernel's setting as it is.
func setConntrackDefaults(c *kubeproxy.KubeProxyConntrackConfiguration) {
	if c.MaxPerCore == nil {
		c.MaxPerCore = ptr.To[int32](defaultConntrackPerCore)
	}
	if c.Min == nil {
		c.Min = ptr.To[int32](defaultConntrackMin)
	}
	if c.TCPEstablishedTimeout == nil {
		c.TCPEstablishedTimeout = &metav1.Duration{Duration: defaultTCPEstablished}
	}
	if c.TCPCloseWaitTimeout == nil {
		// kube-proxy's reason: a half-closed connection whose entry
		// expires (60s by default) sends its FIN un-NATed.
		c.TCPCloseWaitTimeout = &metav1.Duration{Duration: defaultTCPCloseWait}
	}
}

func setDuration(d *metav1.Duration, def time.Duration) {
	if d.Duration == 0 {
		d.Duration = def
	}
}

// withDefaultPort is kube-proxy's defaulting of bind addresses: empty
// means host:port, and a bare host gets the default port.
func withDefaultPort(addr, host string, port int) string {
	switch {
	case addr == "":
		return net.JoinHostPort(host, strconv.Itoa(port))
	case net.ParseIP(addr) != nil:
		return net.JoinHostPort(addr, strconv.Itoa(port))
	}
	return addr
}

// DefaultKubeProxyConfiguration is a KubeProxyConfiguration with kube-proxy's
// defaults, the base the flags apply to.
func DefaultKubeProxyConfiguration() kubeproxy.KubeProxyConfiguration {
	c := kubeproxy.KubeProxyConfiguration{TypeMeta: metav1.TypeMeta{APIVersion: configAPIVersion, Kind: configKind}}
	setDefaults(&c)
	return c
}

// LoadConfigFile reads a KubeProxyConfiguration (YAML or JSON). Unlike
// kube-proxy, which falls back to lenient decoding with a warning, an
// unknown or duplicated field is an error that names it: a misspelt field
// silently left at its default is worse than a proxy that does not start.
func LoadConfigFile(path string) (kubeproxy.KubeProxyConfiguration, error) {
	var c kubeproxy.KubeProxyConfiguration
	data, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("reading the config file: %w", err)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return c, fmt.Errorf("config file %s: %w", path, oneLine(err))
	}
	strict, err := sigsjson.UnmarshalStrict(js, &c)
	if err != nil {
		return c, fmt.Errorf("config file %s: %w", path, err)
	}
	if len(strict) > 0 {
		return c, fmt.Errorf("config file %s: %w", path, joinErrors(strict...))
	}
	if c.APIVersion != configAPIVersion || c.Kind != configKind {
		return c, fmt.Errorf("config file %s: apiVersion %q, kind %q: want %s %s",
			path, c.APIVersion, c.Kind, configAPIVersion, configKind)
	}
	setDefaults(&c)
	return c, nil
}

// resolve validates a KubeProxyConfiguration and turns it into a Config;
// the fields that do not come from it are left for the caller.
func resolve(kp *kubeproxy.KubeProxyConfiguration) (Config, error) {
	c := Config{
		Mode:               effectiveMode(kp),
		Kubeconfig:         kp.ClientConnection.Kubeconfig,
		ContentType:        kp.ClientConnection.ContentType,
		QPS:                kp.ClientConnection.QPS,
		Burst:              kp.ClientConnection.Burst,
		NodeName:           kp.HostnameOverride,
		MasqueradeAll:      kp.IPTables.MasqueradeAll,
		MasqueradeBit:      int(*kp.IPTables.MasqueradeBit),
		LocalhostNodePorts: *kp.IPTables.LocalhostNodePorts,
		SyncPeriod:         kp.IPTables.SyncPeriod.Duration,
		MinSyncPeriod:      kp.IPTables.MinSyncPeriod.Duration,
		ConfigSyncPeriod:   kp.ConfigSyncPeriod.Duration,
		HealthzBindAddress: kp.HealthzBindAddress,
		MetricsBindAddress: kp.MetricsBindAddress,
		EnableProfiling:    kp.EnableProfiling,
		Verbosity:          int(kp.Logging.Verbosity),
		LogFormat:          kp.Logging.Format,
	}
	if c.Mode == modeIPVS {
		c.SyncPeriod, c.MinSyncPeriod = kp.IPVS.SyncPeriod.Duration, kp.IPVS.MinSyncPeriod.Duration
	}
	var cidrErr, nodePortErr, ipvsErr, conntrackErr error
	c.ClusterCIDRs, cidrErr = parseClusterCIDRs(kp.ClusterCIDR)
	var detectErr error
	c.DetectLocalMode, c.PodInterface, detectErr = resolveDetectLocal(kp)
	c.NodePortAddresses, c.NodePortPrimary, nodePortErr = parseNodePortAddresses(kp.NodePortAddresses)
	c.IPVS, ipvsErr = resolveIPVS(&kp.IPVS)
	c.Conntrack, conntrackErr = resolveConntrack(&kp.Conntrack)
	return c, joinErrors(checkMode(string(kp.Mode)), cidrErr, detectErr, nodePortErr, ipvsErr, conntrackErr, c.validate())
}

// effectiveMode is the mode a configuration runs: kube-proxy's default
// on Linux is iptables.
func effectiveMode(kp *kubeproxy.KubeProxyConfiguration) string {
	if kp.Mode == "" {
		return modeIPTables
	}
	return string(kp.Mode)
}

// resolveIPVS reads the IPVS settings, whatever the mode: a bad value is
// an error in iptables mode too, so that switching the mode never reveals
// it (and the exclude CIDRs guard the removal of IPVS leftovers there).
func resolveIPVS(kp *kubeproxy.KubeProxyIPVSConfiguration) (IPVSConfig, error) {
	c := IPVSConfig{Scheduler: kp.Scheduler, StrictARP: kp.StrictARP, TCPTimeout: kp.TCPTimeout.Duration,
		TCPFinTimeout: kp.TCPFinTimeout.Duration, UDPTimeout: kp.UDPTimeout.Duration}
	if c.Scheduler == "" {
		c.Scheduler = ipvs.DefaultScheduler
	}
	var errs []error
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{"tcp", c.TCPTimeout}, {"tcpfin", c.TCPFinTimeout}, {"udp", c.UDPTimeout}} {
		if t.d < 0 {
			errs = append(errs, fmt.Errorf("ipvs %s timeout %v: must not be negative (0 leaves the kernel's)", t.name, t.d))
		}
	}
	for _, s := range kp.ExcludeCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs exclude CIDRs %q: %q is not a CIDR", strings.Join(kp.ExcludeCIDRs, ","), s))
			break
		}
		c.ExcludeCIDRs = append(c.ExcludeCIDRs, p.Masked())
	}
	return c, joinErrors(errs...)
}

// resolveConntrack reads the conntrack settings, with kube-proxy's
// validation: nothing negative (0 leaves the kernel's).
func resolveConntrack(kp *kubeproxy.KubeProxyConntrackConfiguration) (conntrack.Tuning, error) {
	deref := func(d *metav1.Duration) time.Duration {
		if d == nil {
			return 0
		}
		return d.Duration
	}
	t := conntrack.Tuning{TCPEstablishedTimeout: deref(kp.TCPEstablishedTimeout), TCPCloseWaitTimeout: deref(kp.TCPCloseWaitTimeout),
		TCPBeLiberal: kp.TCPBeLiberal, UDPTimeout: kp.UDPTimeout.Duration, UDPStreamTimeout: kp.UDPStreamTimeout.Duration}
	if kp.MaxPerCore != nil {
		t.MaxPerCore = int(*kp.MaxPerCore)
	}
	if kp.Min != nil {
		t.Min = int(*kp.Min)
	}
	var errs []error
	for _, n := range []struct {
		name string
		v    int
	}{{"maxPerCore", t.MaxPerCore}, {"min", t.Min}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("conntrack %s %d: must not be negative (maxPerCore 0 leaves the kernel's limit)", n.name, n.v))
		}
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"tcpEstablishedTimeout", t.TCPEstablishedTimeout}, {"tcpCloseWaitTimeout", t.TCPCloseWaitTimeout},
		{"udpTimeout", t.UDPTimeout}, {"udpStreamTimeout", t.UDPStreamTimeout}} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("conntrack %s %v: must not be negative (0 leaves the kernel's)", d.name, d.d))
		}
	}
	return t, joinErrors(errs...)
}

// joinErrors joins errors on one line: bad input gets one clear line.
func joinErrors(errs ...error) error {
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}

// oneLine flattens a multi-line error message (YAML's lists its problems
// one per line).
func oneLine(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return errors.New(strings.Join(lines, " "))
}

// checkMode accepts iptables (kube-proxy's default on Linux) and ipvs.
func checkMode(mode string) error {
	switch mode {
	case "", modeIPTables, modeIPVS:
		return nil
	case "nftables":
		return errors.New(`proxy mode "nftables" is not supported by svcproxy; use iptables`)
	}
	return fmt.Errorf("unknown proxy mode %q; svcproxy supports iptables and ipvs", mode)
}

func (c *Config) validate() error {
	var errs []error
	if c.SyncPeriod <= 0 {
		errs = append(errs, fmt.Errorf("%s sync period %v: must be greater than 0", c.Mode, c.SyncPeriod))
	}
	if c.MinSyncPeriod < 0 || c.MinSyncPeriod > c.SyncPeriod {
		errs = append(errs, fmt.Errorf("%s min sync period %v: must be between 0 and the sync period %v", c.Mode, c.MinSyncPeriod, c.SyncPeriod))
	}
	if c.ConfigSyncPeriod <= 0 {
		errs = append(errs, fmt.Errorf("config sync period %v: must be greater than 0", c.ConfigSyncPeriod))
	}
	if c.MasqueradeBit < 0 || c.MasqueradeBit > 31 {
		errs = append(errs, fmt.Errorf("iptables masquerade bit %d: must be within [0, 31]", c.MasqueradeBit))
	}
	if err := checkHostPort(c.HealthzBindAddress); err != nil {
		errs = append(errs, fmt.Errorf("healthz bind address %q: %w", c.HealthzBindAddress, err))
	}
	if err := checkHostPort(c.MetricsBindAddress); err != nil {
		errs = append(errs, fmt.Errorf("metrics bind address %q: %w", c.MetricsBindAddress, err))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("logging format %q: want text or json", c.LogFormat))
	}
	return joinErrors(errs...)
}

func checkHostPort(addr string) error {
	if addr == "" {
		return nil // the server is off
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host != "" && net.ParseIP(host) == nil {
		return errors.New("not an IP address and port")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return errors.New("port must be within [1, 65535]")
	}
	return nil
}

// parseClusterCIDRs reads --cluster-cidr: one CIDR, or a dual-stack pair.
func parseClusterCIDRs(s string) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("cluster CIDR %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	if len(out) > 2 || (len(out) == 2 && out[0].Addr().Is4() == out[1].Addr().Is4()) {
		return nil, fmt.Errorf("cluster CIDR %q: want one CIDR or one of each IP family", s)
	}
	return out, nil
}

// The ways of telling pod traffic from the rest (kube-proxy's LocalMode).
const (
	localModeClusterCIDR         = "ClusterCIDR"
	localModeNodeCIDR            = "NodeCIDR"
	localModeBridgeInterface     = "BridgeInterface"
	localModeInterfaceNamePrefix = "InterfaceNamePrefix"
)

// resolveDetectLocal reads detectLocalMode and detectLocal, validated as
// kube-proxy does: a known mode, and the interface it names not empty.
func resolveDetectLocal(kp *kubeproxy.KubeProxyConfiguration) (mode, podInterface string, err error) {
	switch mode = string(kp.DetectLocalMode); mode {
	case "", localModeClusterCIDR:
		return localModeClusterCIDR, "", nil
	case localModeNodeCIDR:
		return mode, "", nil
	case localModeBridgeInterface:
		if kp.DetectLocal.BridgeInterface == "" {
			return "", "", errors.New("detectLocalMode BridgeInterface: detectLocal.bridgeInterface (--pod-bridge-interface) must not be empty")
		}
		return mode, kp.DetectLocal.BridgeInterface, nil
	case localModeInterfaceNamePrefix:
		if kp.DetectLocal.InterfaceNamePrefix == "" {
			return "", "", errors.New("detectLocalMode InterfaceNamePrefix: detectLocal.interfaceNamePrefix (--pod-interface-name-prefix) must not be empty")
		}
		return mode, kp.DetectLocal.InterfaceNamePrefix + "+", nil
	}
	return "", "", fmt.Errorf("detectLocalMode %q: want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix", mode)
}

// parseNodePortAddresses reads --nodeport-addresses: CIDRs, or "primary".
func parseNodePortAddresses(list []string) ([]netip.Prefix, bool, error) {
	if len(list) == 1 && list[0] == "primary" {
		return nil, true, nil
	}
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, false, fmt.Errorf(`nodeport addresses %q: want CIDRs or "primary": %w`, strings.Join(list, ","), err)
		}
		out = append(out, p.Masked())
	}
	return out, false, nil
}
