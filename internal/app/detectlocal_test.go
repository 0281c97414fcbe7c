package app

import (
	"strings"
	"testing"
)

// --detect-local-mode and its interfaces, from the flags and from a
// config file, validated as kube-proxy validates them.
func TestParseDetectLocal(t *testing.T) {
	for _, tc := range []struct {
		name               string
		args               []string
		mode, podInterface string
	}{
		{"default", nil, "ClusterCIDR", ""},
		{"node CIDR", []string{"--detect-local-mode=NodeCIDR"}, "NodeCIDR", ""},
		{"bridge", []string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"}, "BridgeInterface", "cbr0"},
		{"prefix", []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"}, "InterfaceNamePrefix", "veth+"},
		{"config file", []string{"--config=" + writeFile(t, "config.yaml", configHead+
			"detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: cali\n")}, "InterfaceNamePrefix", "cali+"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := parse(t, tc.args...)
			if c := opts.Config; c.DetectLocalMode != tc.mode || c.PodInterface != tc.podInterface {
				t.Errorf("mode %q, interface %q; want %q, %q", c.DetectLocalMode, c.PodInterface, tc.mode, tc.podInterface)
			}
			for _, w := range opts.Warnings {
				if strings.Contains(w, "detect") || strings.Contains(w, "interface") {
					t.Errorf("warning %q: the setting is used", w)
				}
			}
		})
	}
	for _, args := range [][]string{
		{"--detect-local-mode=Bridge"},
		{"--detect-local-mode=BridgeInterface"},
		{"--detect-local-mode=InterfaceNamePrefix", "--pod-bridge-interface=cbr0"},
	} {
		if _, err := Parse(args, nil); err == nil || !strings.Contains(err.Error(), "detectLocalMode") {
			t.Errorf("%q: error %v, want one naming detectLocalMode", args, err)
		}
	}
}

// The shipped ConfigMap carries no pod range of its own, which would
// masquerade every connection from a pod to a service on a cluster whose
// pods are elsewhere: it tells pods by the node's own podCIDRs.
func TestShippedConfigTellsPodsByTheNodesRange(t *testing.T) {
	c := parse(t, "--config="+writeFile(t, "config.yaml", manifestConfig(t))).Config
	if c.DetectLocalMode != "NodeCIDR" || len(c.ClusterCIDRs) != 0 {
		t.Errorf("detectLocalMode %q, cluster CIDRs %v; want NodeCIDR and none", c.DetectLocalMode, c.ClusterCIDRs)
	}
}
