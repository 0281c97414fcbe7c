package app

import (
	"net/netip"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/model"
)

// PodTraffic is how the rules of a node tell traffic from pods under
// cfg's detect-local mode, as kube-proxy's local traffic detectors do: by
// the cluster's pod ranges, by the node's own (read once, at start), or by
// the interface it comes in on (the netfilter.Config fields ClusterCIDRs
// and PodInterface). Where nothing tells pods apart, nothing is
// masqueraded on the way to a ClusterIP, and pods are held to
// externalTrafficPolicy Local like outside clients.
func PodTraffic(cfg Config, node model.NodeInfo, log *zap.Logger) (ranges []netip.Prefix, podInterface string) {
	switch cfg.DetectLocalMode {
	case localModeNodeCIDR:
		if len(node.PodCIDRs) == 0 {
			log.Warn("detectLocalMode NodeCIDR: the Node has no podCIDRs; traffic from pods cannot be told from the rest",
				zap.String("node", node.Name))
		}
		return node.PodCIDRs, ""
	case localModeBridgeInterface, localModeInterfaceNamePrefix:
		return nil, cfg.PodInterface
	}
	if len(cfg.ClusterCIDRs) == 0 {
		log.Info("detectLocalMode ClusterCIDR without a cluster CIDR: traffic from pods cannot be told from the rest")
	}
	return cfg.ClusterCIDRs, ""
}
