package app

import (
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const configHead = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

// configWarnings parses a command line whose --config file holds body.
func configWarnings(t *testing.T, body string) []string {
	t.Helper()
	return parse(t, "--config="+writeFile(t, "config.yaml", body)).Warnings
}

func TestConfigFieldSvcproxyIgnoresIsNamedOnce(t *testing.T) {
	got := configWarnings(t, configHead+"clusterCIDR: 10.244.0.0/16\noomScoreAdj: -500\n")
	want := "config field oomScoreAdj: -500 is a kube-proxy setting svcproxy does not use; ignored " +
		"(svcproxy keeps the OOM score its container gets)"
	if len(got) != 1 || got[0] != want {
		t.Errorf("warnings %q, want exactly %q", got, want)
	}
}

func TestEveryIgnoredConfigFieldIsNamed(t *testing.T) {
	got := configWarnings(t, configHead+`featureGates:
  NFTablesProxyMode: true
clientConnection:
  acceptContentTypes: application/json
logging:
  flushFrequency: 1s
  vmodule:
  - filePattern: proxier
    verbosity: 4
  options:
    text:
      splitStream: true
      infoBufferSize: 1Mi
bindAddress: 192.168.50.1
bindAddressHardFail: true
showHiddenMetricsForVersion: "1.34"
nftables:
  masqueradeBit: 15
winkernel:
  enableDSR: true
oomScoreAdj: -500
portRange: 30000-32767
`)
	want := []string{
		"featureGates: NFTablesProxyMode=true", "clientConnection.acceptContentTypes: application/json",
		"logging.flushFrequency: 1s", "logging.vmodule: proxier=4", "logging.options.text.splitStream: true",
		"logging.options.text.infoBufferSize: 1048576", "bindAddress: 192.168.50.1", "bindAddressHardFail: true",
		"showHiddenMetricsForVersion: 1.34",
		"nftables.masqueradeBit: 15",
		"winkernel.enableDSR: true",
		"oomScoreAdj: -500", "portRange: 30000-32767",
	}
	if len(got) != len(want) {
		t.Errorf("%d warnings, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if i < len(got) && !strings.HasPrefix(got[i], "config field "+w+" is a kube-proxy setting svcproxy does not use; ignored") {
			t.Errorf("warning %d: %q, want it to name %s", i, got[i], w)
		}
	}
	for _, w := range got {
		if strings.HasPrefix(w, "config field iptables.localhostNodePorts") && !strings.Contains(w, "does not serve NodePorts on 127.0.0.1") {
			t.Errorf("%q does not say svcproxy does not serve NodePorts on 127.0.0.1", w)
		}
	}
}

func TestDefaultConfigsDrawNoWarning(t *testing.T) {
	cases := map[string]string{
		// kubeadm's kube-proxy ConfigMap: every field, left unset.
		"unset": configHead + `bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`,
		// The same with kube-proxy's defaults written out.
		"kube-proxy's defaults": configHead + `featureGates: {}
logging:
  flushFrequency: 5s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
detectLocalMode: ClusterCIDR
ipvs:
  syncPeriod: 30s
nftables:
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
iptables:
  localhostNodePorts: false
oomScoreAdj: -999
`,
		// svcproxy tunes conntrack as kube-proxy does: no setting of it is
		// ignored, 0 (leave the kernel's) or not.
		"conntrack left alone": configHead + "conntrack:\n  maxPerCore: 0\n  min: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n",
		"conntrack tuned": configHead + "conntrack:\n  maxPerCore: 65536\n  tcpEstablishedTimeout: 1h\n  tcpBeLiberal: true\n" +
			"  udpTimeout: 30s\n  udpStreamTimeout: 2m\n",
		"manifests/configmap.yaml": manifestConfig(t),
	}
	for name, body := range cases {
		if got := configWarnings(t, body); len(got) != 0 {
			t.Errorf("%s: warnings %q, want none", name, got)
		}
	}
}

// manifestConfig is the KubeProxyConfiguration the shipped ConfigMap holds.
func manifestConfig(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../manifests/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct{ Data map[string]string }
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	config := cm.Data["config.conf"]
	if !strings.Contains(config, "kind: KubeProxyConfiguration") {
		t.Fatalf("manifests/configmap.yaml holds no KubeProxyConfiguration in config.conf:\n%s", data)
	}
	return config
}

func TestOtherModesConfigFieldsAreNamedOnce(t *testing.T) {
	got := configWarnings(t, configHead+`mode: iptables
ipvs:
  syncPeriod: 10s
  minSyncPeriod: 2s
  scheduler: lc
  strictARP: true
  excludeCIDRs: [10.0.0.0/8]
  tcpTimeout: 1m
  tcpFinTimeout: 10s
  udpTimeout: 5s
`)
	want := []string{
		"config field ipvs.syncPeriod: 10s applies only in ipvs mode; ignored in iptables mode",
		"config field ipvs.minSyncPeriod: 2s applies only in ipvs mode; ignored in iptables mode",
		"config field ipvs.scheduler: lc applies only in ipvs mode; ignored in iptables mode",
		"config field ipvs.strictARP: true applies only in ipvs mode; ignored in iptables mode",
		"config field ipvs.tcpTimeout: 1m0s applies only in ipvs mode; ignored in iptables mode",
		"config field ipvs.tcpFinTimeout: 10s applies only in ipvs mode; ignored in iptables mode",
		"config field ipvs.udpTimeout: 5s applies only in ipvs mode; ignored in iptables mode",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("iptables mode: warnings\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Both modes write iptables rules: the masquerade settings apply in ipvs mode.
	got = configWarnings(t, configHead+"mode: ipvs\niptables:\n  masqueradeAll: true\n  masqueradeBit: 12\n  minSyncPeriod: 5s\n")
	want = []string{"config field iptables.minSyncPeriod: 5s applies only in iptables mode; ignored in ipvs mode"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ipvs mode: warnings %q, want %q", got, want)
	}
	// The shipped ConfigMap switched to ipvs draws none.
	if got := configWarnings(t, strings.Replace(manifestConfig(t), "mode: iptables", "mode: ipvs", 1)); len(got) != 0 {
		t.Errorf("the ConfigMap in ipvs mode: warnings %q, want none", got)
	}
}
