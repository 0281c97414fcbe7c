package app

import (
	"net/netip"
	"strings"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/netfilter"
)

// routeLocalnet lets packets to 127.0.0.0/8 be routed elsewhere: what a
// connection to 127.0.0.1:<nodePort> DNATed to a pod needs. It belongs to
// the network namespace svcproxy runs in.
const routeLocalnet = "/proc/sys/net/ipv4/conf/all/route_localnet"

// localhostNodePorts reports whether IPv4 node ports answer on loopback,
// as in kube-proxy: in iptables mode, with iptables.localhostNodePorts
// (its default) and --nodeport-addresses letting loopback in. It sets
// route_localnet for that, as kube-proxy does; where it cannot (a
// read-only /proc/sys), loopback is left out with a warning, so that such
// a connection is refused at once rather than DNATed into a hang. With no
// sysctls (the daemon's unit tests) it takes the configuration's word.
func (d *daemon) localhostNodePorts(nodePortAddresses []netip.Prefix) bool {
	if !wantsRouteLocalnet(d.cfg, nodePortAddresses) {
		return false
	}
	if d.sysctls == nil {
		return true
	}
	if err := ensureRouteLocalnet(d.sysctls, d.log); err != nil {
		d.log.Warn("node ports are not served on 127.0.0.1: route_localnet cannot be set "+
			"(make it 1, e.g. with --init-only in a privileged init container, or set iptables.localhostNodePorts false)",
			zap.Error(err))
		return false
	}
	return true
}

// wantsRouteLocalnet: node ports are to answer on IPv4 loopback.
func wantsRouteLocalnet(cfg Config, nodePortAddresses []netip.Prefix) bool {
	return cfg.Mode == modeIPTables && cfg.LocalhostNodePorts && netfilter.LoopbackNodePorts(nodePortAddresses)
}

// ensureRouteLocalnet sets route_localnet to 1 unless it is already.
func ensureRouteLocalnet(files conntrack.Files, log *zap.Logger) error {
	if v, err := files.ReadFile(routeLocalnet); err == nil && strings.TrimSpace(v) == "1" {
		return nil
	}
	log.Info("setting route_localnet=1 to serve node ports on localhost; to change this, set iptables.localhostNodePorts " +
		"(--iptables-localhost-nodeports) false or leave loopback out of nodePortAddresses (--nodeport-addresses)")
	return files.WriteFile(routeLocalnet, "1")
}
