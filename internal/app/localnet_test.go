package app

import (
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/model"
)

// As kube-proxy: the iptables mode serves IPv4 node ports on loopback by
// default and sets route_localnet for it; the opt-out, the IPVS mode and
// --nodeport-addresses without loopback leave both alone; a
// route_localnet that cannot be set leaves loopback out.
func TestLocalhostNodePortsSetRouteLocalnet(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       Config
		now       string
		readOnly  bool
		want      bool
		wantWrite bool
	}{
		{"default", Config{Mode: modeIPTables, LocalhostNodePorts: true}, "0", false, true, true},
		{"already set", Config{Mode: modeIPTables, LocalhostNodePorts: true}, "1", false, true, false},
		{"opt-out", Config{Mode: modeIPTables}, "0", false, false, false},
		{"ipvs mode", Config{Mode: modeIPVS, LocalhostNodePorts: true}, "0", false, false, false},
		{"nodeport addresses without loopback", Config{Mode: modeIPTables, LocalhostNodePorts: true,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}}, "0", false, false, false},
		{"nodeport addresses with loopback", Config{Mode: modeIPTables, LocalhostNodePorts: true,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, "0", false, true, true},
		{"only IPv6 nodeport addresses", Config{Mode: modeIPTables, LocalhostNodePorts: true,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}}, "0", false, true, true},
		{"read-only /proc/sys", Config{Mode: modeIPTables, LocalhostNodePorts: true}, "0", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := &conntrack.FakeFiles{Files: map[string]string{routeLocalnet: tc.now}, Errs: map[string]error{}}
			if tc.readOnly {
				files.Errs[routeLocalnet] = syscall.EROFS
			}
			tc.cfg.MasqueradeBit = 14
			d := &daemon{cfg: tc.cfg, log: zap.NewNop(), sysctls: files}
			if got := d.iptablesConfig(model.NodeInfo{}).LocalhostNodePorts; got != tc.want {
				t.Errorf("localhost node ports %v, want %v", got, tc.want)
			}
			if wrote := slices.Contains(files.Writes, routeLocalnet+"=1"); wrote != tc.wantWrite {
				t.Errorf("writes %q; want route_localnet=1 written: %v", files.Writes, tc.wantWrite)
			}
		})
	}
}

// --init-only sets route_localnet as kube-proxy's does, for the daemon
// running without a writable /proc/sys.
func TestInitOnlySetsRouteLocalnet(t *testing.T) {
	files := &conntrack.FakeFiles{Files: map[string]string{routeLocalnet: "0"}}
	initOnly(Config{Mode: modeIPTables, LocalhostNodePorts: true}, files, zap.NewNop())
	if !slices.Contains(files.Writes, routeLocalnet+"=1") {
		t.Errorf("writes %q, want route_localnet=1", files.Writes)
	}
	files = &conntrack.FakeFiles{Files: map[string]string{routeLocalnet: "0"}}
	initOnly(Config{Mode: modeIPTables}, files, zap.NewNop())
	if len(files.Writes) != 0 {
		t.Errorf("opt-out: writes %q, want none", files.Writes)
	}
}
