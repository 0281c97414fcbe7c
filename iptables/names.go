package iptables

import (
	"net/netip"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// chainNodePorts is the iptables mode's nat chain dispatching by node port.
const chainNodePorts = netfilter.ChainPrefix + "NODEPORTS"

// Prefixes of the chains made per service port and per destination bucket.
// With a 12-character hash every name is at most 25 characters, under
// iptables' limit of 28.
const (
	prefixSVC    = netfilter.ChainPrefix + "SVC-" // cluster-wide endpoints (cluster traffic policy)
	prefixSVI    = netfilter.ChainPrefix + "SVI-" // node-local endpoints for ClusterIP traffic (internalTrafficPolicy Local)
	prefixSVL    = netfilter.ChainPrefix + "SVL-" // node-local endpoints for external traffic (externalTrafficPolicy Local)
	prefixEXT    = netfilter.ChainPrefix + "EXT-" // external traffic under externalTrafficPolicy Local
	prefixFW     = netfilter.ChainPrefix + "FW-"  // loadBalancerSourceRanges
	prefixDST    = netfilter.ChainPrefix + "DST-" // one bucket of destination addresses
	prefixAffine = netfilter.ChainPrefix + "AFF-" // xt_recent list of one endpoint's ClientIP affinity
)

// bucketChain names the dispatch chain of a bucket of destinations.
func bucketChain(p netip.Prefix) string { return prefixDST + netfilter.NameHash(p.String()) }

// affinityList names the xt_recent list that remembers the clients of one
// endpoint of one service port. The lists are shared by the chains of the
// port that balance over the endpoint, so a client keeps its endpoint
// whichever way it reaches the service.
func affinityList(name model.ServicePortName, ep netip.AddrPort) string {
	return prefixAffine + netfilter.NameHash(name.String()+"@"+ep.String())
}
