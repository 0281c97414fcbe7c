package app

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	kubeproxy "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/ipvs"
)

// Options is a parsed command line.
type Options struct {
	Config Config
	// Cleanup asks to remove everything svcproxy programmed, then exit.
	Cleanup bool
	// InitOnly is kube-proxy's --init-only: set what needs a writable
	// /proc/sys (the conntrack settings), then exit.
	InitOnly bool
	// CheckBinaries asks to report the binaries the mode needs, then exit.
	CheckBinaries bool
	// WriteConfigTo, if set, asks to write KubeProxy there and exit.
	WriteConfigTo string
	// KubeProxy is the effective kube-proxy configuration.
	KubeProxy kubeproxy.KubeProxyConfiguration
	// Warnings name the flags and config fields that have no effect:
	// kube-proxy flags and fields svcproxy does not use, and flags a
	// --config file overrides.
	Warnings []string
}

// commandLine is the flag set and where its values land. As in kube-proxy,
// the flags that mirror configuration fields write into a defaulted
// KubeProxyConfiguration, which a --config file then replaces whole.
type commandLine struct {
	fs *pflag.FlagSet
	kp kubeproxy.KubeProxyConfiguration

	configFile, master, hostnameOverride, writeConfigTo string
	cleanup, initOnly, checkBinaries                    bool
	healthzPort, metricsPort                            int32
	logFormat                                           string

	// syncPeriod and minSyncPeriod are --sync-period and
	// --min-sync-period: the running mode's.
	syncPeriod, minSyncPeriod time.Duration

	flavor                  string
	apiTimeout, nodeTimeout time.Duration
	drainTimeout            time.Duration

	// fileWins are the flags whose settings a --config file replaces.
	fileWins map[string]bool
	// ignored are kube-proxy's flags that svcproxy accepts and ignores.
	ignored []string
}

func newCommandLine() *commandLine {
	c := &commandLine{
		fs:       pflag.NewFlagSet("svcproxy", pflag.ContinueOnError),
		kp:       DefaultKubeProxyConfiguration(),
		fileWins: map[string]bool{},
	}
	// pflag would print every parse error and the whole usage; the caller
	// prints the error, once, and Parse prints the usage for -h.
	c.fs.SetOutput(io.Discard)
	c.fs.Usage = func() {}
	c.fs.SortFlags = false
	c.addKubeProxyFlags()
	c.addIgnoredKubeProxyFlags()
	c.addSvcproxyFlags()
	return c
}

// config registers a flag that mirrors a configuration field.
func (c *commandLine) config(names ...string) {
	for _, n := range names {
		c.fileWins[n] = true
	}
}

func (c *commandLine) addKubeProxyFlags() {
	fs, kp := c.fs, &c.kp
	fs.StringVar(&c.configFile, "config", "", "The path to the configuration file (a KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1, YAML or JSON). As in kube-proxy, it overrides the flags that mirror its fields.")
	fs.StringVar(&c.writeConfigTo, "write-config-to", "", "If set, write the effective configuration to this file and exit.")
	fs.BoolVar(&c.cleanup, "cleanup", false, "If true, remove everything svcproxy programmed in either mode (iptables rules of both IP families and both flavors; IPVS virtual servers, kube-ipvs0 and ipsets where IPVS is loaded) and exit.")
	fs.BoolVar(&c.initOnly, "init-only", false, "If true, make the settings that need full root privileges (the conntrack ones, under /proc/sys), then exit; svcproxy can then run with NET_ADMIN and NET_RAW only.")
	fs.StringVar(&kp.ClientConnection.Kubeconfig, "kubeconfig", "", "Path to a kubeconfig file. With neither --kubeconfig nor --master, the in-cluster configuration is used.")
	fs.StringVar(&c.master, "master", "", "The address of the Kubernetes API server (overrides any value in kubeconfig).")
	fs.StringVar(&kp.ClientConnection.ContentType, "kube-api-content-type", kp.ClientConnection.ContentType, "Content type of requests sent to the API server.")
	fs.Int32Var(&kp.ClientConnection.Burst, "kube-api-burst", kp.ClientConnection.Burst, "Burst to use while talking with the API server.")
	fs.Float32Var(&kp.ClientConnection.QPS, "kube-api-qps", kp.ClientConnection.QPS, "QPS to use while talking with the API server.")
	fs.StringVar(&c.hostnameOverride, "hostname-override", "", "The name of this node's Node object; default the host name. Takes precedence over the config file.")
	fs.StringVar((*string)(&kp.Mode), "proxy-mode", "", "Which proxy mode to use: iptables (the default) or ipvs.")
	fs.StringVar((*string)(&kp.Mode), "mode", "", "Same as --proxy-mode.")
	fs.StringVar(&kp.HealthzBindAddress, "healthz-bind-address", kp.HealthzBindAddress, "The IP address and port for the health server (/healthz, /livez); empty to disable.")
	fs.StringVar(&kp.MetricsBindAddress, "metrics-bind-address", kp.MetricsBindAddress, "The IP address and port for the metrics server (/metrics); empty to disable.")
	fs.BoolVar(&kp.EnableProfiling, "profiling", false, "Serve Go's profiles on the metrics server at /debug/pprof/.")
	fs.Int32Var(&c.healthzPort, "healthz-port", defaultHealthzPort, "Deprecated: 0 disables the health server; use --healthz-bind-address.")
	fs.Int32Var(&c.metricsPort, "metrics-port", defaultMetricsPort, "Deprecated: 0 disables the metrics server; use --metrics-bind-address.")
	fs.StringVar(&kp.ClusterCIDR, "cluster-cidr", "", "The CIDR range of the pods in the cluster, or a comma-separated dual-stack pair. With --detect-local-mode=ClusterCIDR, traffic to a ClusterIP from outside it is masqueraded.")
	fs.BoolVar(&kp.IPTables.MasqueradeAll, "masquerade-all", false, "SNAT all traffic sent via Service cluster IPs.")
	fs.Int32Var(kp.IPTables.MasqueradeBit, "iptables-masquerade-bit", *kp.IPTables.MasqueradeBit, "The bit of the fwmark space that marks packets to SNAT, within [0, 31].")
	fs.StringVar((*string)(&kp.DetectLocalMode), "detect-local-mode", "", "How traffic from pods is told from the rest: ClusterCIDR (the default: by --cluster-cidr), NodeCIDR (by the Node's pod CIDRs), BridgeInterface or InterfaceNamePrefix (by the interface it comes in on).")
	fs.StringVar(&kp.DetectLocal.BridgeInterface, "pod-bridge-interface", "", "With --detect-local-mode=BridgeInterface, the bridge traffic from pods comes in on.")
	fs.StringVar(&kp.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", "", "With --detect-local-mode=InterfaceNamePrefix, the prefix of the names of the interfaces traffic from pods comes in on.")
	fs.BoolVar(kp.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", true, "In iptables mode, IPv4 node ports answer on 127.0.0.0/8 too (svcproxy sets route_localnet, and drops what that would let in from outside); false turns that off.")
	fs.StringSliceVar(&kp.NodePortAddresses, "nodeport-addresses", nil, "CIDR ranges of the node IPs NodePorts accept connections on, or 'primary' for the Node's primary IPs; default every local IP.")
	fs.DurationVar(&kp.IPTables.SyncPeriod.Duration, "iptables-sync-period", kp.IPTables.SyncPeriod.Duration, "In iptables mode, the longest a failed sync waits for its retry; a change waiting twice as long fails /healthz. Full syncs come hourly, and after a failure or drift.")
	fs.DurationVar(&kp.IPTables.MinSyncPeriod.Duration, "iptables-min-sync-period", kp.IPTables.MinSyncPeriod.Duration, "In iptables mode, syncs start at most once per this period on average (two back to back after a quiet one); 0 syncs on every change.")
	fs.DurationVar(&kp.IPVS.SyncPeriod.Duration, "ipvs-sync-period", kp.IPVS.SyncPeriod.Duration, "In ipvs mode, the longest a failed sync waits for its retry; a change waiting twice as long fails /healthz. Full syncs come hourly, and after a failure or drift.")
	fs.DurationVar(&kp.IPVS.MinSyncPeriod.Duration, "ipvs-min-sync-period", kp.IPVS.MinSyncPeriod.Duration, "In ipvs mode, syncs start at most once per this period on average (two back to back after a quiet one); 0 syncs on every change.")
	fs.DurationVar(&c.syncPeriod, "sync-period", defaultSyncPeriod, "The running mode's --iptables-sync-period or --ipvs-sync-period (which wins if given too).")
	fs.DurationVar(&c.minSyncPeriod, "min-sync-period", defaultMinSyncPeriod, "The running mode's --iptables-min-sync-period or --ipvs-min-sync-period (which wins if given too).")
	fs.StringVar(&kp.IPVS.Scheduler, "ipvs-scheduler", "", "In ipvs mode, the IPVS scheduler of every virtual server (rr if empty; wrr, lc, sh... if the kernel has the module).")
	fs.StringSliceVar(&kp.IPVS.ExcludeCIDRs, "ipvs-exclude-cidrs", nil, "CIDRs whose IPVS virtual servers svcproxy never touches, in ipvs mode and when iptables mode removes an IPVS-mode run's leftovers.")
	fs.BoolVar(&kp.IPVS.StrictARP, "ipvs-strict-arp", false, "In ipvs mode, set arp_ignore=1 and arp_announce=2, so the node does not answer ARP for the service addresses on kube-ipvs0.")
	fs.DurationVar(&kp.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", 0, "In ipvs mode, the timeout of idle IPVS TCP connections; 0 leaves the kernel's.")
	fs.DurationVar(&kp.IPVS.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", 0, "In ipvs mode, the timeout of IPVS TCP connections after a FIN; 0 leaves the kernel's.")
	fs.DurationVar(&kp.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", 0, "In ipvs mode, the timeout of IPVS UDP flows; 0 leaves the kernel's.")
	fs.Int32Var(kp.Conntrack.MaxPerCore, "conntrack-max-per-core", *kp.Conntrack.MaxPerCore, "Maximum number of NAT connections to track per CPU core: nf_conntrack_max is this times the CPUs, at least --conntrack-min (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(kp.Conntrack.Min, "conntrack-min", *kp.Conntrack.Min, "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	fs.DurationVar(&kp.Conntrack.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", kp.Conntrack.TCPEstablishedTimeout.Duration, "Idle timeout for established TCP connections (0 to leave as-is).")
	fs.DurationVar(&kp.Conntrack.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", kp.Conntrack.TCPCloseWaitTimeout.Duration, "NAT timeout for TCP connections in the CLOSE_WAIT state (0 to leave as-is).")
	fs.BoolVar(&kp.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", false, "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1.")
	fs.DurationVar(&kp.Conntrack.UDPTimeout.Duration, "conntrack-udp-timeout", 0, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is).")
	fs.DurationVar(&kp.Conntrack.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", 0, "Idle timeout for ASSURED UDP connections (0 to leave as-is).")
	fs.DurationVar(&kp.ConfigSyncPeriod.Duration, "config-sync-period", kp.ConfigSyncPeriod.Duration, "How often the informers resync from their caches.")
	fs.Uint32VarP((*uint32)(&kp.Logging.Verbosity), "v", "v", 0, "Log verbosity: 0 info, 1 and above debug, higher for client-go's detail.")
	fs.StringVar(&kp.Logging.Format, "logging-format", kp.Logging.Format, "Log format: text or json.")
	c.config("kubeconfig", "kube-api-content-type", "kube-api-burst", "kube-api-qps", "proxy-mode", "mode",
		"healthz-bind-address", "metrics-bind-address", "profiling", "healthz-port", "metrics-port", "cluster-cidr",
		"detect-local-mode", "pod-bridge-interface", "pod-interface-name-prefix", "iptables-localhost-nodeports",
		"masquerade-all", "iptables-masquerade-bit", "nodeport-addresses", "iptables-sync-period", "sync-period",
		"iptables-min-sync-period", "min-sync-period", "ipvs-sync-period", "ipvs-min-sync-period", "ipvs-scheduler",
		"ipvs-exclude-cidrs", "ipvs-strict-arp", "ipvs-tcp-timeout", "ipvs-tcpfin-timeout", "ipvs-udp-timeout",
		"conntrack-max-per-core", "conntrack-min", "conntrack-tcp-timeout-established", "conntrack-tcp-timeout-close-wait",
		"conntrack-tcp-be-liberal", "conntrack-udp-timeout", "conntrack-udp-timeout-stream", "config-sync-period")
}

// addIgnoredKubeProxyFlags accepts kube-proxy's other flags (those of
// Kubernetes 1.35, the logging ones, and a few older ones still found in
// manifests), so a kube-proxy DaemonSet's arguments work unchanged.
func (c *commandLine) addIgnoredKubeProxyFlags() {
	bools := []string{"bind-address-hard-fail",
		"log-json-split-stream", "log-text-split-stream", "logtostderr", "alsologtostderr", "add-dir-header",
		"skip-headers", "skip-log-headers", "one-output"}
	values := []string{"feature-gates", "bind-address", "show-hidden-metrics-for-version", "oom-score-adj", "log-flush-frequency", "vmodule", "log-json-info-buffer-size", "log-text-info-buffer-size",
		"proxy-port-range", "udp-timeout", "boot-id-file", "machine-id-file", "log-dir", "log-file",
		"log-file-max-size", "stderrthreshold", "log-backtrace-at"}
	for _, name := range bools {
		c.fs.String(name, "", "kube-proxy flag, accepted and ignored.")
		c.fs.Lookup(name).NoOptDefVal = "true"
	}
	for _, name := range values {
		c.fs.String(name, "", "kube-proxy flag, accepted and ignored.")
	}
	c.ignored = slices.Concat(bools, values)
}

func (c *commandLine) addSvcproxyFlags() {
	c.fs.StringVar(&c.flavor, "iptables-flavor", "auto", "svcproxy: iptables implementation, nft, legacy, or auto (the one the host's rules already use).")
	c.fs.BoolVar(&c.checkBinaries, "check-binaries", false, "svcproxy: look up every program the mode runs with --iptables-flavor (both flavors for auto) in PATH, print where each is, and exit; fails naming any required one missing. svcproxy checks the same at start.")
	c.fs.StringVar(&c.logFormat, "log-format", "", "svcproxy: log format, console (same as text) or json; overrides --logging-format.")
	c.fs.DurationVar(&c.apiTimeout, "api-timeout", 30*time.Second, "svcproxy: how long to wait at startup for the API server to list Services, EndpointSlices and the Node before giving up when a list failed or the server does not answer /version; while it answers, slow lists are waited for, with a warning every --api-timeout.")
	c.fs.DurationVar(&c.nodeTimeout, "node-timeout", 30*time.Second, "svcproxy: how long to wait at startup for this node's Node object to have addresses; after that svcproxy runs without node information.")
	c.fs.DurationVar(&c.drainTimeout, "ipvs-drain-timeout", ipvs.DefaultDrainTimeout, "svcproxy: in ipvs mode, how long a TCP real server that left waits at weight 0 for its connections to end before it is removed (kube-proxy waits without bound).")
}

// Parse reads the command line (without the program name). With -h it
// prints the usage to out and returns pflag.ErrHelp.
func Parse(args []string, out io.Writer) (*Options, error) {
	c := newCommandLine()
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			c.usage(out)
		}
		return nil, err
	}
	if c.fs.NArg() > 0 {
		return nil, fmt.Errorf("svcproxy takes no arguments, got %q", c.fs.Args())
	}
	opts := &Options{Cleanup: c.cleanup, InitOnly: c.initOnly, CheckBinaries: c.checkBinaries, WriteConfigTo: c.writeConfigTo}
	opts.Warnings = c.ignoredWarnings()
	kp, warnings, err := c.effectiveConfiguration()
	if err != nil {
		return nil, err
	}
	opts.Warnings = append(opts.Warnings, warnings...)
	opts.Warnings = append(opts.Warnings, unusedFieldWarnings(&kp)...)
	opts.Warnings = append(opts.Warnings, c.modeWarnings(&kp)...)
	opts.KubeProxy = kp
	if opts.Config, err = resolve(&kp); err != nil {
		return nil, err
	}
	if err := c.applySvcproxyFlags(&opts.Config); err != nil {
		return nil, err
	}
	return opts, nil
}

func (c *commandLine) ignoredWarnings() []string {
	var w []string
	for _, name := range c.ignored {
		if c.fs.Changed(name) {
			w = append(w, fmt.Sprintf("flag --%s is a kube-proxy flag svcproxy does not use; ignored", name))
		}
	}
	return w
}

// effectiveConfiguration is kube-proxy's precedence: without --config the
// flags apply over the defaults; with it the file replaces them all,
// except the logging flags and --hostname-override, which still win.
func (c *commandLine) effectiveConfiguration() (kubeproxy.KubeProxyConfiguration, []string, error) {
	kp := c.kp
	var warnings []string
	if c.configFile == "" {
		c.applyDeprecatedPorts(&kp)
		c.applySyncPeriods(&kp)
	} else {
		file, err := LoadConfigFile(c.configFile)
		if err != nil {
			return kp, nil, err
		}
		c.fs.Visit(func(f *pflag.Flag) {
			if c.fileWins[f.Name] {
				warnings = append(warnings, fmt.Sprintf("flag --%s is ignored: --config is given and, as in kube-proxy, the file wins", f.Name))
			}
		})
		if c.fs.Changed("v") {
			file.Logging.Verbosity = kp.Logging.Verbosity
		}
		if c.fs.Changed("logging-format") {
			file.Logging.Format = kp.Logging.Format
		}
		kp = file
	}
	if c.fs.Changed("hostname-override") {
		name := strings.ToLower(strings.TrimSpace(c.hostnameOverride))
		if name == "" {
			return kp, nil, errors.New("empty --hostname-override is invalid")
		}
		kp.HostnameOverride = name
	}
	return kp, warnings, nil
}

// applyDeprecatedPorts is kube-proxy's reading of --healthz-port and
// --metrics-port: 0 turns the server off.
func (c *commandLine) applyDeprecatedPorts(kp *kubeproxy.KubeProxyConfiguration) {
	if c.healthzPort == 0 {
		kp.HealthzBindAddress = ""
	}
	if c.metricsPort == 0 {
		kp.MetricsBindAddress = ""
	}
}

// applySyncPeriods reads --sync-period and --min-sync-period into the
// running mode's settings, unless the mode's own flag is given too.
func (c *commandLine) applySyncPeriods(kp *kubeproxy.KubeProxyConfiguration) {
	own, sync, minSync := "iptables", &kp.IPTables.SyncPeriod, &kp.IPTables.MinSyncPeriod
	if effectiveMode(kp) == modeIPVS {
		own, sync, minSync = "ipvs", &kp.IPVS.SyncPeriod, &kp.IPVS.MinSyncPeriod
	}
	if c.fs.Changed("sync-period") && !c.fs.Changed(own+"-sync-period") {
		sync.Duration = c.syncPeriod
	}
	if c.fs.Changed("min-sync-period") && !c.fs.Changed(own+"-min-sync-period") {
		minSync.Duration = c.minSyncPeriod
	}
}

func (c *commandLine) applySvcproxyFlags(cfg *Config) error {
	cfg.Master = c.master
	switch c.flavor {
	case "auto", "nft", "legacy":
		cfg.Flavor = c.flavor
	default:
		return fmt.Errorf("--iptables-flavor %q: want auto, nft or legacy", c.flavor)
	}
	switch c.logFormat {
	case "":
	case "console", "text":
		cfg.LogFormat = "text"
	case "json":
		cfg.LogFormat = "json"
	default:
		return fmt.Errorf("--log-format %q: want console or json", c.logFormat)
	}
	if c.apiTimeout <= 0 || c.nodeTimeout < 0 {
		return fmt.Errorf("--api-timeout %v must be positive and --node-timeout %v not negative", c.apiTimeout, c.nodeTimeout)
	}
	cfg.APITimeout, cfg.NodeTimeout = c.apiTimeout, c.nodeTimeout
	if c.drainTimeout <= 0 {
		return fmt.Errorf("--ipvs-drain-timeout %v: must be greater than 0", c.drainTimeout)
	}
	cfg.IPVS.DrainTimeout = c.drainTimeout
	return nil
}

// WriteConfig writes a KubeProxyConfiguration as YAML (--write-config-to).
func WriteConfig(kp kubeproxy.KubeProxyConfiguration, w io.Writer) error {
	out, err := yaml.Marshal(kp)
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}

func (c *commandLine) usage(out io.Writer) {
	fmt.Fprint(out, "Usage: svcproxy [flags]\n       svcproxy list [-o wide|json]             (on a node: every service port, and whether the kernel holds it)\n"+
		"       svcproxy explain NAMESPACE/NAME [-o json] (one service: its endpoints and kernel objects, explained)\n\n"+
		"svcproxy replaces kube-proxy: it takes kube-proxy's flags and config file.\n\nFlags:\n")
	fmt.Fprint(out, c.fs.FlagUsages())
}
