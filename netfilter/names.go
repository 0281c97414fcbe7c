package netfilter

import (
	"crypto/sha256"
	"encoding/base32"

	"github.com/svcproxy/svcproxy/model"
)

// The chains both modes have, whatever their services: the jump rules lead
// to them, so they must exist before a jump rule is inserted. SERVICES is
// each mode's own (DNAT chains in iptables mode, ipset matches in IPVS
// mode); the others are written alike by both, so a node switched from one
// mode to the other keeps its jump rules.
const (
	ChainServices    = ChainPrefix + "SERVICES"    // nat: each mode's entry for service traffic
	ChainPostrouting = ChainPrefix + "POSTROUTING" // nat: masquerade marked packets
	ChainMarkMasq    = ChainPrefix + "MARK-MASQ"   // nat: mark a packet for masquerade
	ChainHairpin     = ChainPrefix + "HAIRPIN"     // nat: mark pods reaching themselves
	ChainFilter      = ChainPrefix + "FILTER"      // filter: reject / drop what has no endpoint
	ChainForward     = ChainPrefix + "FORWARD"     // filter: let service traffic be forwarded
	ChainHealthCheck = ChainPrefix + "HEALTHCHECK" // filter, every INPUT packet: the localnet filter, then open health check node ports
)

// HashLen is how many base32 characters of a sha256 name a chain or set:
// 60 bits, so two of 100k names collide with odds about 1 in 10^8.
const HashLen = 12

// NameHash returns a stable digest of s, safe in chain and set names.
func NameHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	// 8 bytes encode to 13 characters, enough for HashLen.
	return base32.StdEncoding.EncodeToString(sum[:8])[:HashLen]
}

// PortLabel is how rule comments name a service port: "ns/name:port", or
// "ns/name" for an unnamed port, as kube-proxy writes them.
func PortLabel(name model.ServicePortName) string {
	if name.Port == "" {
		return name.Namespace + "/" + name.Name
	}
	return name.Namespace + "/" + name.Name + ":" + name.Port
}

// maxCommentLen keeps a comment under xt_comment's 256-byte limit.
const maxCommentLen = 240

// QuoteComment renders a comment as one iptables-restore token. Kubernetes
// names hold no quotes, spaces or newlines, but views are not validated
// here, so any byte the restore tokenizer could trip on is replaced.
func QuoteComment(s string) string {
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
