package app

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/svcproxy/svcproxy/conntrack"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func parse(t *testing.T, args ...string) *Options {
	t.Helper()
	opts, err := Parse(args, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return opts
}

func parseErr(t *testing.T, args ...string) string {
	t.Helper()
	_, err := Parse(args, &bytes.Buffer{})
	if err == nil {
		t.Fatalf("Parse(%q) succeeded, want an error", args)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("Parse(%q): error %q spans lines; want one line", args, err)
	}
	return err.Error()
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeProxyConntrack is kube-proxy's default conntrack tuning.
var kubeProxyConntrack = conntrack.Tuning{MaxPerCore: 32768, Min: 131072,
	TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}

func TestParseDefaultsAreKubeProxys(t *testing.T) {
	got := parse(t).Config
	want := Config{
		Mode:        "iptables",
		ContentType: "application/vnd.kubernetes.protobuf", QPS: 5, Burst: 10,
		DetectLocalMode: "ClusterCIDR", MasqueradeBit: 14, LocalhostNodePorts: true, SyncPeriod: 30 * time.Second, MinSyncPeriod: time.Second,
		ConfigSyncPeriod: 15 * time.Minute, HealthzBindAddress: "0.0.0.0:10256",
		MetricsBindAddress: "127.0.0.1:10249", Flavor: "auto", APITimeout: 30 * time.Second,
		NodeTimeout: 30 * time.Second, LogFormat: "text",
		IPVS:      IPVSConfig{Scheduler: "rr", DrainTimeout: 15 * time.Minute},
		Conntrack: kubeProxyConntrack,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestParseKubeProxyFlags(t *testing.T) {
	opts := parse(t, "--kubeconfig=/etc/kube/config", "--master=https://10.0.0.1:6443", "--proxy-mode=iptables",
		"--hostname-override= Node-A ", "--cluster-cidr=10.244.0.0/16,fd00:244::/56", "--masquerade-all",
		"--nodeport-addresses=192.168.50.0/24,fd00:50::1/64", "--iptables-sync-period=10s", "--min-sync-period=0",
		"--iptables-masquerade-bit=15", "--metrics-bind-address=0.0.0.0:9249", "--healthz-bind-address=[::]:10256",
		"-v=3", "--iptables-flavor=legacy", "--log-format=json", "--api-timeout=5s", "--node-timeout=0s")
	got := opts.Config
	want := Config{
		Mode:       "iptables",
		Kubeconfig: "/etc/kube/config", Master: "https://10.0.0.1:6443",
		ContentType: "application/vnd.kubernetes.protobuf", QPS: 5, Burst: 10, NodeName: "node-a",
		ClusterCIDRs: prefixes("10.244.0.0/16", "fd00:244::/56"), DetectLocalMode: "ClusterCIDR", MasqueradeAll: true, MasqueradeBit: 15, LocalhostNodePorts: true,
		NodePortAddresses: prefixes("192.168.50.0/24", "fd00:50::/64"),
		SyncPeriod:        10 * time.Second, MinSyncPeriod: 0, ConfigSyncPeriod: 15 * time.Minute,
		HealthzBindAddress: "[::]:10256", MetricsBindAddress: "0.0.0.0:9249",
		Flavor: "legacy", APITimeout: 5 * time.Second, NodeTimeout: 0, Verbosity: 3, LogFormat: "json",
		IPVS:      IPVSConfig{Scheduler: "rr", DrainTimeout: 15 * time.Minute},
		Conntrack: kubeProxyConntrack,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("flags:\n got %+v\nwant %+v", got, want)
	}
	if len(opts.Warnings) != 0 {
		t.Errorf("warnings %q, want none", opts.Warnings)
	}
	if c := parse(t, "--mode=iptables", "--nodeport-addresses=primary").Config; !c.NodePortPrimary || c.NodePortAddresses != nil {
		t.Errorf("--nodeport-addresses=primary: %+v", c)
	}
	if c := parse(t, "--healthz-port=0", "--metrics-port=0").Config; c.HealthzBindAddress != "" || c.MetricsBindAddress != "" {
		t.Errorf("--healthz-port=0 --metrics-port=0 leave servers at %q and %q, want both off", c.HealthzBindAddress, c.MetricsBindAddress)
	}
}

func TestParseWarnsOnceForEachUnusedKubeProxyFlag(t *testing.T) {
	// Arguments of a typical kube-proxy DaemonSet.
	opts := parse(t, "--conntrack-max-per-core=0", "--bind-address-hard-fail", "--feature-gates=A=true,B=false",
		"--oom-score-adj", "-999", "--v=2", "--proxy-port-range=30000-32767", "--cluster-cidr=10.244.0.0/16")
	want := []string{
		"flag --bind-address-hard-fail is a kube-proxy flag svcproxy does not use; ignored",
		"flag --feature-gates is a kube-proxy flag svcproxy does not use; ignored",
		"flag --proxy-port-range is a kube-proxy flag svcproxy does not use; ignored",
		"flag --oom-score-adj is a kube-proxy flag svcproxy does not use; ignored",
	}
	if !slices.Equal(sorted(opts.Warnings), sorted(want)) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(opts.Warnings, "\n"), strings.Join(want, "\n"))
	}
	if opts.Config.Verbosity != 2 {
		t.Errorf("--v=2 gave verbosity %d", opts.Config.Verbosity)
	}
	if opts.Config.Conntrack.MaxPerCore != 0 {
		t.Errorf("--conntrack-max-per-core=0 gave %d", opts.Config.Conntrack.MaxPerCore)
	}
}

func TestParseConntrackFlags(t *testing.T) {
	opts := parse(t, "--conntrack-max-per-core=65536", "--conntrack-min=1000", "--conntrack-tcp-timeout-established=2h",
		"--conntrack-tcp-timeout-close-wait=10m", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=30s",
		"--conntrack-udp-timeout-stream=2m")
	want := conntrack.Tuning{MaxPerCore: 65536, Min: 1000, TCPEstablishedTimeout: 2 * time.Hour,
		TCPCloseWaitTimeout: 10 * time.Minute, TCPBeLiberal: true, UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute}
	if opts.Config.Conntrack != want || len(opts.Warnings) != 0 {
		t.Errorf("conntrack flags: %+v, warnings %q; want %+v and none", opts.Config.Conntrack, opts.Warnings, want)
	}
	// 0 leaves each setting as the kernel has it.
	zero := parse(t, "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0").Config
	if zero.Conntrack != (conntrack.Tuning{Min: 131072}) {
		t.Errorf("conntrack flags at 0: %+v", zero.Conntrack)
	}
	// A config file wins, its unset fields take kube-proxy's defaults and
	// 0 stays 0.
	file := writeFile(t, "config.yaml", configHead+"conntrack:\n  maxPerCore: 0\n  tcpCloseWaitTimeout: 0s\n  tcpBeLiberal: true\n  udpStreamTimeout: 1m\n")
	opts = parse(t, "--config="+file, "--conntrack-min=5")
	want = conntrack.Tuning{Min: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPBeLiberal: true, UDPStreamTimeout: time.Minute}
	if opts.Config.Conntrack != want {
		t.Errorf("conntrack from the file: %+v, want %+v", opts.Config.Conntrack, want)
	}
	if w := "flag --conntrack-min is ignored: --config is given and, as in kube-proxy, the file wins"; !slices.Equal(opts.Warnings, []string{w}) {
		t.Errorf("warnings %q, want %q", opts.Warnings, w)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

func TestParseRejectsBadInputInOneLine(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--proxy-mode=nftables"}, `proxy mode "nftables" is not supported by svcproxy; use iptables`},
		{[]string{"--mode=userspace"}, `unknown proxy mode "userspace"; svcproxy supports iptables and ipvs`},
		{[]string{"--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"--iptables-masquerade-bit=32"}, "masquerade bit 32"},
		{[]string{"--cluster-cidr=10.0.0.0/8,10.1.0.0/16"}, "one of each IP family"},
		{[]string{"--cluster-cidr=10.0.0.0"}, `cluster CIDR "10.0.0.0"`},
		{[]string{"--nodeport-addresses=primary,10.0.0.0/8"}, `want CIDRs or "primary"`},
		{[]string{"--iptables-sync-period=0"}, "iptables sync period 0s: must be greater than 0"},
		{[]string{"--min-sync-period=1m"}, "iptables min sync period 1m0s"},
		{[]string{"--mode=ipvs", "--ipvs-sync-period=0"}, "ipvs sync period 0s: must be greater than 0"},
		{[]string{"--mode=ipvs", "--ipvs-min-sync-period=1m"}, "ipvs min sync period 1m0s: must be between 0 and the sync period 30s"},
		{[]string{"--mode=ipvs", "--ipvs-exclude-cidrs=10.0.0.0/8,10.1.0.0/33"}, `ipvs exclude CIDRs "10.0.0.0/8,10.1.0.0/33": "10.1.0.0/33" is not a CIDR`},
		{[]string{"--ipvs-exclude-cidrs=192.168.1.1"}, `"192.168.1.1" is not a CIDR`},
		{[]string{"--mode=ipvs", "--ipvs-tcp-timeout=-1s"}, "ipvs tcp timeout -1s: must not be negative"},
		{[]string{"--mode=ipvs", "--ipvs-tcpfin-timeout=-1s"}, "ipvs tcpfin timeout -1s: must not be negative"},
		{[]string{"--mode=ipvs", "--ipvs-udp-timeout=-1s"}, "ipvs udp timeout -1s: must not be negative"},
		{[]string{"--mode=ipvs", "--ipvs-drain-timeout=0"}, "--ipvs-drain-timeout 0s: must be greater than 0"},
		{[]string{"--mode=ipvs", "--ipvs-tcp-timeout=soon"}, `invalid argument "soon" for "--ipvs-tcp-timeout"`},
		{[]string{"--conntrack-max-per-core=-1"}, "conntrack maxPerCore -1: must not be negative"},
		{[]string{"--conntrack-min=-1"}, "conntrack min -1: must not be negative"},
		{[]string{"--conntrack-tcp-timeout-established=-1s"}, "conntrack tcpEstablishedTimeout -1s: must not be negative"},
		{[]string{"--conntrack-tcp-timeout-close-wait=-1s"}, "conntrack tcpCloseWaitTimeout -1s: must not be negative"},
		{[]string{"--conntrack-udp-timeout=-1s"}, "conntrack udpTimeout -1s: must not be negative"},
		{[]string{"--conntrack-udp-timeout-stream=-1s"}, "conntrack udpStreamTimeout -1s: must not be negative"},
		{[]string{"--metrics-bind-address=localhost:10249"}, `metrics bind address "localhost:10249"`},
		{[]string{"--iptables-flavor=xtables"}, `--iptables-flavor "xtables"`},
		{[]string{"--log-format=xml"}, `--log-format "xml"`},
		{[]string{"--hostname-override=  "}, "empty --hostname-override"},
		{[]string{"stray"}, `takes no arguments, got ["stray"]`},
	}
	for _, c := range cases {
		if got := parseErr(t, c.args...); !strings.Contains(got, c.want) {
			t.Errorf("Parse(%q): %q, want it to contain %q", c.args, got, c.want)
		}
	}
}

func TestParseHelp(t *testing.T) {
	var out bytes.Buffer
	if _, err := Parse([]string{"-h"}, &out); !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("-h: %v, want pflag.ErrHelp", err)
	}
	if !strings.Contains(out.String(), "--iptables-sync-period") {
		t.Errorf("usage does not list --iptables-sync-period:\n%s", out.String())
	}
}

const configYAML = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
hostnameOverride: file-node
mode: iptables
clusterCIDR: 10.244.0.0/16
iptables:
  masqueradeAll: true
  syncPeriod: 45s
logging:
  verbosity: 1
`

func TestConfigFileWinsOverFlagsExceptLoggingAndHostname(t *testing.T) {
	path := writeFile(t, "config.yaml", configYAML)
	opts := parse(t, "--config="+path, "--iptables-sync-period=5s", "--kubeconfig=/other", "--hostname-override=flag-node",
		"-v=4", "--iptables-flavor=nft")
	c := opts.Config
	if c.SyncPeriod != 45*time.Second || c.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || !c.MasqueradeAll ||
		!slices.Equal(c.ClusterCIDRs, prefixes("10.244.0.0/16")) {
		t.Errorf("the file's values must win: %+v", c)
	}
	if c.MinSyncPeriod != time.Second || c.HealthzBindAddress != "0.0.0.0:10256" || c.MasqueradeBit != 14 {
		t.Errorf("fields the file leaves out must take kube-proxy's defaults: %+v", c)
	}
	if c.NodeName != "flag-node" || c.Verbosity != 4 || c.Flavor != "nft" {
		t.Errorf("--hostname-override, -v and svcproxy's own flags must win over the file: %+v", c)
	}
	want := []string{
		"flag --iptables-sync-period is ignored: --config is given and, as in kube-proxy, the file wins",
		"flag --kubeconfig is ignored: --config is given and, as in kube-proxy, the file wins",
	}
	if !slices.Equal(sorted(opts.Warnings), want) {
		t.Errorf("warnings %q, want %q", opts.Warnings, want)
	}
	if c := parse(t, "--config="+path).Config; c.NodeName != "file-node" || c.Verbosity != 1 {
		t.Errorf("without flags the file's hostnameOverride and verbosity apply: %+v", c)
	}
}

func TestConfigFileJSON(t *testing.T) {
	path := writeFile(t, "config.json", `{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration","iptables":{"minSyncPeriod":"3s"},"nodePortAddresses":["primary"]}`)
	c := parse(t, "--config="+path).Config
	if c.MinSyncPeriod != 3*time.Second || !c.NodePortPrimary {
		t.Errorf("JSON config: %+v", c)
	}
}

func TestConfigFileIsDecodedStrictly(t *testing.T) {
	head := "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
	cases := []struct{ name, text, want string }{
		{"unknown field", head + "masqueradeAl: true\n", `unknown field "masqueradeAl"`},
		{"unknown nested field", head + "iptables:\n  syncPerod: 5s\n", `unknown field "iptables.syncPerod"`},
		{"duplicate key", head + "mode: iptables\nmode: ipvs\n", `"mode"`},
		{"wrong kind", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n", `kind "KubeletConfiguration"`},
		{"not YAML", "mode: [iptables\n", "config file"},
		{"bad value", head + "iptables:\n  syncPeriod: soon\n", "config file"},
		{"unsupported mode", head + "mode: nftables\n", `proxy mode "nftables" is not supported by svcproxy`},
		{"bad exclude CIDR", head + "mode: ipvs\nipvs:\n  excludeCIDRs: [10.0.0.0/8, bogus]\n", `ipvs exclude CIDRs "10.0.0.0/8,bogus": "bogus" is not a CIDR`},
		{"negative IPVS timeout", head + "mode: ipvs\nipvs:\n  udpTimeout: -5s\n", "ipvs udp timeout -5s: must not be negative"},
	}
	for _, c := range cases {
		path := writeFile(t, "config.yaml", c.text)
		if got := parseErr(t, "--config="+path); !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want it to contain %q", c.name, got, c.want)
		}
	}
	if got := parseErr(t, "--config=/no/such/file"); !strings.Contains(got, "no such file") {
		t.Errorf("missing file: %q", got)
	}
}

func TestWriteConfigRoundTrips(t *testing.T) {
	opts := parse(t, "--iptables-sync-period=7s", "--cluster-cidr=10.244.0.0/16", "--conntrack-max-per-core=0",
		"--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=20s")
	var out bytes.Buffer
	if err := WriteConfig(opts.KubeProxy, &out); err != nil {
		t.Fatal(err)
	}
	back := parse(t, "--config="+writeFile(t, "written.yaml", out.String())).Config
	if !reflect.DeepEqual(back, opts.Config) {
		t.Errorf("written config reads back as\n%+v\nwant\n%+v\n%s", back, opts.Config, out.String())
	}
}

func TestParseIPVSFlags(t *testing.T) {
	opts := parse(t, "--proxy-mode=ipvs", "--ipvs-scheduler=lc", "--ipvs-exclude-cidrs=10.0.0.0/8,fd00:1::/64",
		"--ipvs-strict-arp", "--ipvs-tcp-timeout=2m", "--ipvs-tcpfin-timeout=30s", "--ipvs-udp-timeout=10s",
		"--ipvs-sync-period=20s", "--ipvs-min-sync-period=2s", "--ipvs-drain-timeout=5m", "--masquerade-all",
		"--iptables-masquerade-bit=12")
	c := opts.Config
	want := IPVSConfig{Scheduler: "lc", ExcludeCIDRs: prefixes("10.0.0.0/8", "fd00:1::/64"), StrictARP: true,
		TCPTimeout: 2 * time.Minute, TCPFinTimeout: 30 * time.Second, UDPTimeout: 10 * time.Second, DrainTimeout: 5 * time.Minute}
	if c.Mode != "ipvs" || !reflect.DeepEqual(c.IPVS, want) {
		t.Errorf("ipvs flags: mode %q, %+v; want ipvs, %+v", c.Mode, c.IPVS, want)
	}
	if c.SyncPeriod != 20*time.Second || c.MinSyncPeriod != 2*time.Second {
		t.Errorf("ipvs mode syncs every %v at most every %v; want the --ipvs-* periods 20s and 2s", c.SyncPeriod, c.MinSyncPeriod)
	}
	// The IPVS mode writes iptables rules too: their settings apply.
	if !c.MasqueradeAll || c.MasqueradeBit != 12 {
		t.Errorf("ipvs mode must keep --masquerade-all and --iptables-masquerade-bit: %+v", c)
	}
	if len(opts.Warnings) != 0 {
		t.Errorf("warnings %q, want none", opts.Warnings)
	}
}

// As in kube-proxy, each mode syncs by its own periods; --sync-period and
// --min-sync-period are the running mode's, unless its own flag is given.
func TestSyncPeriodsAreTheRunningModes(t *testing.T) {
	cases := []struct {
		args          []string
		sync, minSync time.Duration
	}{
		{[]string{"--mode=ipvs"}, 30 * time.Second, time.Second},
		{[]string{"--mode=ipvs", "--iptables-sync-period=5s", "--iptables-min-sync-period=0"}, 30 * time.Second, time.Second},
		{[]string{"--mode=iptables", "--ipvs-sync-period=5s", "--ipvs-min-sync-period=0"}, 30 * time.Second, time.Second},
		{[]string{"--mode=ipvs", "--sync-period=10s", "--min-sync-period=0"}, 10 * time.Second, 0},
		{[]string{"--sync-period=10s", "--min-sync-period=0"}, 10 * time.Second, 0},
		{[]string{"--mode=ipvs", "--sync-period=10s", "--ipvs-sync-period=20s"}, 20 * time.Second, time.Second},
		{[]string{"--sync-period=10s", "--iptables-sync-period=20s"}, 20 * time.Second, time.Second},
	}
	for _, c := range cases {
		got := parse(t, c.args...).Config
		if got.SyncPeriod != c.sync || got.MinSyncPeriod != c.minSync {
			t.Errorf("%q: sync period %v, min %v; want %v, %v", c.args, got.SyncPeriod, got.MinSyncPeriod, c.sync, c.minSync)
		}
	}
}

func TestOtherModesFlagsAreNamedOnce(t *testing.T) {
	opts := parse(t, "--ipvs-scheduler=lc", "--ipvs-strict-arp", "--ipvs-sync-period=5s", "--ipvs-drain-timeout=1m",
		"--ipvs-exclude-cidrs=10.0.0.0/8", "--iptables-sync-period=10s")
	want := []string{
		"flag --ipvs-drain-timeout applies only in ipvs mode; ignored in iptables mode",
		"flag --ipvs-scheduler applies only in ipvs mode; ignored in iptables mode",
		"flag --ipvs-strict-arp applies only in ipvs mode; ignored in iptables mode",
		"flag --ipvs-sync-period applies only in ipvs mode; ignored in iptables mode",
	}
	if !slices.Equal(sorted(opts.Warnings), want) {
		t.Errorf("iptables mode: warnings\n%s\nwant\n%s", strings.Join(opts.Warnings, "\n"), strings.Join(want, "\n"))
	}
	// --ipvs-exclude-cidrs also guards the removal of an IPVS run's leftovers.
	if !slices.Equal(opts.Config.IPVS.ExcludeCIDRs, prefixes("10.0.0.0/8")) {
		t.Errorf("iptables mode: exclude CIDRs %v", opts.Config.IPVS.ExcludeCIDRs)
	}
	opts = parse(t, "--mode=ipvs", "--iptables-sync-period=10s", "--iptables-min-sync-period=0", "--masquerade-all", "--iptables-masquerade-bit=12")
	want = []string{
		"flag --iptables-min-sync-period applies only in iptables mode; ignored in ipvs mode",
		"flag --iptables-sync-period applies only in iptables mode; ignored in ipvs mode",
	}
	if !slices.Equal(sorted(opts.Warnings), want) {
		t.Errorf("ipvs mode: warnings\n%s\nwant\n%s", strings.Join(opts.Warnings, "\n"), strings.Join(want, "\n"))
	}
}

const ipvsConfigYAML = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
iptables:
  masqueradeBit: 12
  syncPeriod: 10s
ipvs:
  scheduler: wrr
  syncPeriod: 45s
  excludeCIDRs: [192.168.100.0/24]
  strictARP: true
  tcpTimeout: 15m
  udpTimeout: 1m
`

func TestIPVSConfigFileWinsOverFlags(t *testing.T) {
	path := writeFile(t, "config.yaml", ipvsConfigYAML)
	opts := parse(t, "--config="+path, "--ipvs-scheduler=lc", "--ipvs-sync-period=5s", "--mode=iptables", "--ipvs-drain-timeout=2m")
	c := opts.Config
	want := IPVSConfig{Scheduler: "wrr", ExcludeCIDRs: prefixes("192.168.100.0/24"), StrictARP: true,
		TCPTimeout: 15 * time.Minute, UDPTimeout: time.Minute, DrainTimeout: 2 * time.Minute}
	if c.Mode != "ipvs" || !reflect.DeepEqual(c.IPVS, want) {
		t.Errorf("the file's ipvs settings must win, svcproxy's --ipvs-drain-timeout too: mode %q, %+v; want ipvs, %+v", c.Mode, c.IPVS, want)
	}
	// minSyncPeriod left out (or 0) is the default, as for iptables.
	if c.SyncPeriod != 45*time.Second || c.MinSyncPeriod != time.Second || c.MasqueradeBit != 12 {
		t.Errorf("ipvs mode from the file: sync %v, min %v, masquerade bit %d; want 45s, 1s, 12", c.SyncPeriod, c.MinSyncPeriod, c.MasqueradeBit)
	}
	want2 := []string{
		"config field iptables.syncPeriod: 10s applies only in iptables mode; ignored in ipvs mode",
		"flag --ipvs-scheduler is ignored: --config is given and, as in kube-proxy, the file wins",
		"flag --ipvs-sync-period is ignored: --config is given and, as in kube-proxy, the file wins",
		"flag --mode is ignored: --config is given and, as in kube-proxy, the file wins",
	}
	if !slices.Equal(sorted(opts.Warnings), want2) {
		t.Errorf("warnings\n%s\nwant\n%s", strings.Join(sorted(opts.Warnings), "\n"), strings.Join(want2, "\n"))
	}
}

func TestWriteConfigRoundTripsIPVS(t *testing.T) {
	opts := parse(t, "--proxy-mode=ipvs", "--ipvs-scheduler=sh", "--ipvs-exclude-cidrs=10.0.0.0/8", "--ipvs-strict-arp",
		"--ipvs-tcp-timeout=2m", "--ipvs-tcpfin-timeout=20s", "--ipvs-udp-timeout=9s", "--ipvs-sync-period=7s",
		"--ipvs-min-sync-period=3s")
	var out bytes.Buffer
	if err := WriteConfig(opts.KubeProxy, &out); err != nil {
		t.Fatal(err)
	}
	back := parse(t, "--config="+writeFile(t, "written.yaml", out.String()))
	if !reflect.DeepEqual(back.Config, opts.Config) {
		t.Errorf("written config reads back as\n%+v\nwant\n%+v\n%s", back.Config, opts.Config, out.String())
	}
	if len(back.Warnings) != 0 {
		t.Errorf("the written config draws warnings %q", back.Warnings)
	}
	for _, want := range []string{"mode: ipvs", "scheduler: sh", "strictARP: true", "syncPeriod: 7s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("written config lacks %q:\n%s", want, out.String())
		}
	}
}
