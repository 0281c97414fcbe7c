package app

import (
	"net"
	"net/netip"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// healthCheckHosts are where the health check node ports listen: where
// kube-proxy's do, on the node port addresses (netfilter.NodePortHosts)
// of this network namespace's addresses as they are at start. If they
// cannot be listed, every address, as kube-proxy falls back to.
func healthCheckHosts(rules netfilter.Config, families []model.Family, log *zap.Logger) []string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		log.Warn("cannot list the node's addresses; health check node ports listen on all of them", zap.Error(err))
		return []string{""}
	}
	var local []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				local = append(local, ip.Unmap())
			}
		}
	}
	hosts := netfilter.NodePortHosts(rules, families, local)
	if len(hosts) != 1 || hosts[0] != "" {
		log.Info("health check node ports listen on the node port addresses", zap.Strings("hosts", hosts))
	}
	return hosts
}
