package app

import (
	"fmt"
	"slices"
	"strings"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"
	kubeproxy "k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/ipvs"
)

// unusedField is a KubeProxyConfiguration field svcproxy does not read. A
// config file kube-proxy would accept is accepted whole, but a setting
// that changes nothing must say so once, as an ignored flag does.
type unusedField struct {
	name string
	// value renders the field when it asks for something svcproxy does
	// not do; "" when it is unset, kube-proxy's default, or a value that
	// leaves things as svcproxy leaves them.
	value func(*kubeproxy.KubeProxyConfiguration) string
	// why says what svcproxy does instead, when that is not obvious.
	why string
}

const (
	nftablesMode = "svcproxy has no nftables mode"
	windowsOnly  = "a Windows setting"
	logWrites    = "svcproxy writes every log line to standard error at once"
)

// unusedFields lists every field of kube-proxy 1.35's
// KubeProxyConfiguration that svcproxy does not read, with kube-proxy's
// defaults (SetDefaults_KubeProxyConfiguration) counted as unset, so that
// a default configuration, written out in full or not, draws no warning.
func unusedFields() []unusedField {
	type kp = kubeproxy.KubeProxyConfiguration
	return []unusedField{
		{"featureGates", func(c *kp) string { return featureGates(c.FeatureGates) }, "svcproxy has no feature gates"},
		{"clientConnection.acceptContentTypes", func(c *kp) string { return value(c.ClientConnection.AcceptContentTypes, "") }, ""},
		{"logging.flushFrequency", func(c *kp) string {
			return value(c.Logging.FlushFrequency.Duration.Duration, 0, 5*time.Second)
		}, logWrites},
		{"logging.vmodule", func(c *kp) string { return vmodule(c.Logging.VModule) }, ""},
		{"logging.options.text.splitStream", func(c *kp) string { return value(c.Logging.Options.Text.SplitStream, false) }, logWrites},
		{"logging.options.text.infoBufferSize", func(c *kp) string {
			return value(c.Logging.Options.Text.InfoBufferSize.Value(), 0)
		}, logWrites},
		{"logging.options.json.splitStream", func(c *kp) string { return value(c.Logging.Options.JSON.SplitStream, false) }, logWrites},
		{"logging.options.json.infoBufferSize", func(c *kp) string {
			return value(c.Logging.Options.JSON.InfoBufferSize.Value(), 0)
		}, logWrites},
		{"bindAddress", func(c *kp) string { return value(c.BindAddress, "", "0.0.0.0") }, "svcproxy takes the node's IPs from its Node object"},
		{"bindAddressHardFail", func(c *kp) string { return value(c.BindAddressHardFail, false) },
			"svcproxy always exits when it cannot bind its health or metrics address"},
		{"showHiddenMetricsForVersion", func(c *kp) string { return value(c.ShowHiddenMetricsForVersion, "") }, "svcproxy has no hidden metrics"},
		{"nftables.masqueradeBit", func(c *kp) string { return pointer(c.NFTables.MasqueradeBit, 14) }, nftablesMode},
		{"nftables.masqueradeAll", func(c *kp) string { return value(c.NFTables.MasqueradeAll, false) }, nftablesMode},
		{"nftables.syncPeriod", func(c *kp) string { return value(c.NFTables.SyncPeriod.Duration, 0, 30*time.Second) }, nftablesMode},
		{"nftables.minSyncPeriod", func(c *kp) string { return value(c.NFTables.MinSyncPeriod.Duration, 0, time.Second) }, nftablesMode},
		{"winkernel.networkName", func(c *kp) string { return value(c.Winkernel.NetworkName, "") }, windowsOnly},
		{"winkernel.sourceVip", func(c *kp) string { return value(c.Winkernel.SourceVip, "") }, windowsOnly},
		{"winkernel.enableDSR", func(c *kp) string { return value(c.Winkernel.EnableDSR, false) }, windowsOnly},
		{"winkernel.rootHnsEndpointName", func(c *kp) string { return value(c.Winkernel.RootHnsEndpointName, "") }, windowsOnly},
		{"winkernel.forwardHealthCheckVip", func(c *kp) string { return value(c.Winkernel.ForwardHealthCheckVip, false) }, windowsOnly},
		{"windowsRunAsService", func(c *kp) string { return value(c.WindowsRunAsService, false) }, windowsOnly},
		{"oomScoreAdj", func(c *kp) string { return pointer(c.OOMScoreAdj, -999) }, "svcproxy keeps the OOM score its container gets"},
		{"portRange", func(c *kp) string { return value(c.PortRange, "") }, "kube-proxy does not use it either"},
	}
}

// unusedFieldWarnings names each field of c that asks for something
// svcproxy does not do.
func unusedFieldWarnings(c *kubeproxy.KubeProxyConfiguration) []string {
	var warnings []string
	for _, f := range unusedFields() {
		v := f.value(c)
		if v == "" {
			continue
		}
		w := fmt.Sprintf("config field %s: %s is a kube-proxy setting svcproxy does not use; ignored", f.name, v)
		if f.why != "" {
			w += " (" + f.why + ")"
		}
		warnings = append(warnings, w)
	}
	return warnings
}

// modeSetting is a setting only one proxy mode reads: in the other it
// changes nothing, and says so once.
type modeSetting struct {
	mode string
	// field is its KubeProxyConfiguration field; "" for svcproxy's own
	// flags, which a config file does not replace.
	field string
	// value renders the field when it is set to something other than
	// kube-proxy's default, as in unusedField.
	value func(*kubeproxy.KubeProxyConfiguration) string
	flag  string
}

// modeSettings lists the settings of one mode only. Both modes write
// iptables rules, so iptables.masqueradeBit and iptables.masqueradeAll
// apply in ipvs mode too (as in kube-proxy), and --ipvs-exclude-cidrs in
// iptables mode keeps those virtual servers from the removal of an IPVS
// run's leftovers.
func modeSettings() []modeSetting {
	type kp = kubeproxy.KubeProxyConfiguration
	return []modeSetting{
		{modeIPVS, "ipvs.syncPeriod", func(c *kp) string {
			return value(c.IPVS.SyncPeriod.Duration, 0, defaultSyncPeriod)
		}, "ipvs-sync-period"},
		{modeIPVS, "ipvs.minSyncPeriod", func(c *kp) string {
			return value(c.IPVS.MinSyncPeriod.Duration, 0, defaultMinSyncPeriod)
		}, "ipvs-min-sync-period"},
		{modeIPVS, "ipvs.scheduler", func(c *kp) string { return value(c.IPVS.Scheduler, "", ipvs.DefaultScheduler) }, "ipvs-scheduler"},
		{modeIPVS, "ipvs.strictARP", func(c *kp) string { return value(c.IPVS.StrictARP, false) }, "ipvs-strict-arp"},
		{modeIPVS, "ipvs.tcpTimeout", func(c *kp) string { return value(c.IPVS.TCPTimeout.Duration, 0) }, "ipvs-tcp-timeout"},
		{modeIPVS, "ipvs.tcpFinTimeout", func(c *kp) string { return value(c.IPVS.TCPFinTimeout.Duration, 0) }, "ipvs-tcpfin-timeout"},
		{modeIPVS, "ipvs.udpTimeout", func(c *kp) string { return value(c.IPVS.UDPTimeout.Duration, 0) }, "ipvs-udp-timeout"},
		{modeIPVS, "", nil, "ipvs-drain-timeout"},
		{modeIPTables, "iptables.syncPeriod", func(c *kp) string {
			return value(c.IPTables.SyncPeriod.Duration, 0, defaultSyncPeriod)
		}, "iptables-sync-period"},
		{modeIPTables, "iptables.minSyncPeriod", func(c *kp) string {
			return value(c.IPTables.MinSyncPeriod.Duration, 0, defaultMinSyncPeriod)
		}, "iptables-min-sync-period"},
		{modeIPTables, "iptables.localhostNodePorts", func(c *kp) string { return pointer(c.IPTables.LocalhostNodePorts, true) },
			"iptables-localhost-nodeports"},
	}
}

// modeWarnings names each setting of the other mode that c asks for:
// the fields of a config file, or, without one, the flags given (with
// one, they are named as overridden already); svcproxy's own flags
// either way.
func (c *commandLine) modeWarnings(kp *kubeproxy.KubeProxyConfiguration) []string {
	mode := effectiveMode(kp)
	var warnings []string
	for _, s := range modeSettings() {
		if s.mode == mode {
			continue
		}
		if s.field != "" && c.configFile != "" {
			if v := s.value(kp); v != "" {
				warnings = append(warnings, fmt.Sprintf("config field %s: %s applies only in %s mode; ignored in %s mode", s.field, v, s.mode, mode))
			}
			continue
		}
		if c.fs.Changed(s.flag) {
			warnings = append(warnings, fmt.Sprintf("flag --%s applies only in %s mode; ignored in %s mode", s.flag, s.mode, mode))
		}
	}
	return warnings
}

// value renders v, or "" when it is one of the values that ask for nothing.
func value[T comparable](v T, unset ...T) string {
	if slices.Contains(unset, v) {
		return ""
	}
	return fmt.Sprint(v)
}

// pointer is value for a field whose nil means kube-proxy's default.
func pointer[T comparable](p *T, unset ...T) string {
	if p == nil {
		return ""
	}
	return value(*p, unset...)
}

func vmodule(items logsapi.VModuleConfiguration) string {
	var set []string
	for _, item := range items {
		set = append(set, fmt.Sprintf("%s=%d", item.FilePattern, item.Verbosity))
	}
	return strings.Join(set, ",")
}

func featureGates(gates map[string]bool) string {
	var set []string
	for name, on := range gates {
		set = append(set, fmt.Sprintf("%s=%t", name, on))
	}
	slices.Sort(set)
	return strings.Join(set, ",")
}
