package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"

	"github.com/svcproxy/svcproxy/model"
)

// The chains every svcproxy ruleset has, whatever its services: the jump
// rules lead to them, so they must exist before a jump rule is inserted.
const (
	chainServices    = ChainPrefix + "SERVICES"    // nat: dispatch by destination
	chainNodePorts   = ChainPrefix + "NODEPORTS"   // nat: dispatch by node port
	chainPostrouting = ChainPrefix + "POSTROUTING" // nat: masquerade marked packets
	chainMarkMasq    = ChainPrefix + "MARK-MASQ"   // nat: mark a packet for masquerade
	chainHairpin     = ChainPrefix + "HAIRPIN"     // nat: mark pods reaching themselves
	chainFilter      = ChainPrefix + "FILTER"      // filter: reject / drop what has no endpoint
	chainForward     = ChainPrefix + "FORWARD"     // filter: let service traffic be forwarded
	chainHealthCheck = ChainPrefix + "HEALTHCHECK" // filter: open health check node ports
)

// Prefixes of the chains made per service port and per destination bucket.
// With a 12-character hash every name is at most 25 characters, under
// iptables' limit of 28.
const (
	prefixSVC    = ChainPrefix + "SVC-" // cluster-wide endpoints (cluster traffic policy)
	prefixSVI    = ChainPrefix + "SVI-" // node-local endpoints for ClusterIP traffic (internalTrafficPolicy Local)
	prefixSVL    = ChainPrefix + "SVL-" // node-local endpoints for external traffic (externalTrafficPolicy Local)
	prefixEXT    = ChainPrefix + "EXT-" // external traffic under externalTrafficPolicy Local
	prefixFW     = ChainPrefix + "FW-"  // loadBalancerSourceRanges
	prefixDST    = ChainPrefix + "DST-" // one bucket of destination addresses
	prefixAffine = ChainPrefix + "AFF-" // xt_recent list of one endpoint's ClientIP affinity
)

// hashLen is how many base32 characters of a sha256 name a chain: 60 bits,
// so two of 100k names collide with odds about 1 in 10^8.
const hashLen = 12

// nameHash returns a stable, chain-name-safe digest of s.
func nameHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	// 8 bytes encode to 13 characters, enough for hashLen.
	return base32.StdEncoding.EncodeToString(sum[:8])[:hashLen]
}

// bucketChain names the dispatch chain of a bucket of destinations.
func bucketChain(p netip.Prefix) string { return prefixDST + nameHash(p.String()) }

// affinityList names the xt_recent list that remembers the clients of one
// endpoint of one service port. The lists are shared by the chains of the
// port that balance over the endpoint, so a client keeps its endpoint
// whichever way it reaches the service.
func affinityList(name model.ServicePortName, ep netip.AddrPort) string {
	return prefixAffine + nameHash(name.String()+"@"+ep.String())
}

// portLabel is how rule comments name a service port: "ns/name:port", or
// "ns/name" for an unnamed port, as kube-proxy writes them.
func portLabel(name model.ServicePortName) string {
	if name.Port == "" {
		return name.Namespace + "/" + name.Name
	}
	return name.Namespace + "/" + name.Name + ":" + name.Port
}

// maxCommentLen keeps a comment under xt_comment's 256-byte limit.
const maxCommentLen = 240

// quoteComment renders a comment as one iptables-restore token. Kubernetes
// names hold no quotes, spaces or newlines, but views are not validated
// here, so any byte the restore tokenizer could trip on is replaced.
func quoteComment(s string) string {
	if len(s) > maxCommentLen {
		s = s[:maxCommentLen]
	}
	if !commentSafe(s) {
		b := []byte(s)
		for i, c := range b {
			if !commentByteSafe(c) {
				b[i] = '_'
			}
		}
		s = string(b)
	}
	return `"` + s + `"`
}

func commentSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if !commentByteSafe(s[i]) {
			return false
		}
	}
	return true
}

func commentByteSafe(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case ' ', '.', '/', ':', '_', '-', '(', ')', '>', ',':
		return true
	}
	return false
}
