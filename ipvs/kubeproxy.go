package ipvs

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// What kube-proxy's ipvs mode leaves when its DaemonSet is deleted, besides
// its iptables chains (package leftovers): virtual servers, kube-ipvs0
// with the service addresses bound to it, and its ipsets. Its virtual
// servers on kube-ipvs0's addresses are svcproxy's already by owns' first
// rule: the two proxies share the interface. Those on node addresses (node
// ports) are told by their ports in kube-proxy's node-port sets, which
// kube-proxy fills with exactly those. Either way a sync of the IPVS mode
// takes over what a service still wants and removes the rest, and the
// iptables mode's retirement of IPVS state removes them all, gently.

// maxSetName is the longest name ipset takes.
const maxSetName = 31

// kubeProxySetNames are kube-proxy's sets of a family (v1.35 and older),
// by the name its IPv4 sets have; its IPv6 ones are "KUBE-6-...", cut to
// 31 characters.
var kubeProxySetNames = []string{
	"KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
	"KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW",
	"KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR",
	"KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP",
	"KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH", "KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
}

// kubeProxySets names one family's kube-proxy sets.
type kubeProxySets struct {
	all map[string]bool
	// nodePorts maps each set of node ports to its protocol: bitmap:port
	// sets for TCP and UDP, hash:ip,port ones (address and port) for SCTP.
	nodePorts map[string]model.Protocol
}

func newKubeProxySets(family model.Family) kubeProxySets {
	name := func(n string) string {
		if family == model.IPv6 {
			// kube-proxy cuts its IPv6 names to ipset's 31 characters.
			n = strings.Replace(n, "KUBE-", "KUBE-6-", 1)
			return n[:min(len(n), maxSetName)]
		}
		return n
	}
	s := kubeProxySets{all: map[string]bool{}, nodePorts: map[string]model.Protocol{}}
	for _, n := range kubeProxySetNames {
		s.all[name(n)] = true
	}
	for n, proto := range map[string]model.Protocol{
		"KUBE-NODE-PORT-TCP": model.TCP, "KUBE-NODE-PORT-LOCAL-TCP": model.TCP,
		"KUBE-NODE-PORT-UDP": model.UDP, "KUBE-NODE-PORT-LOCAL-UDP": model.UDP,
		"KUBE-NODE-PORT-SCTP-HASH": model.SCTP, "KUBE-NODE-PORT-LOCAL-SCTP-HASH": model.SCTP,
	} {
		s.nodePorts[name(n)] = proto
	}
	return s
}

// recordNodePorts notes the node ports a kube-proxy set holds in o.
func (s kubeProxySets) recordNodePorts(o *observed, l Listing) {
	proto, ok := s.nodePorts[l.Name]
	if !ok {
		return
	}
	for _, e := range l.Entries {
		key := VSKey{Protocol: proto, Port: e.Port}
		if l.Type != BitmapPort {
			key.Addr = e.Addr
		}
		o.kubeProxyNodePorts[key] = true
	}
}

// kubeProxyNodePort reports whether a virtual server is one of kube-proxy's
// node ports.
func (o *observed) kubeProxyNodePort(k VSKey) bool {
	return o.kubeProxyNodePorts[VSKey{Protocol: k.Protocol, Port: k.Port}] || o.kubeProxyNodePorts[k]
}

// RemoveKubeProxySets destroys the sets kube-proxy's ipvs mode left in the
// family and says which it destroyed. The iptables rules naming them must
// be gone (the kernel refuses to destroy a set in use), and so must the
// node-port virtual servers they tell (nothing would know them after).
func (b *Backend) RemoveKubeProxySets(ctx context.Context) ([]string, error) {
	k, err := b.open()
	if err != nil {
		return nil, fmt.Errorf("opening the kernel's IPVS and netlink interfaces: %w", err)
	}
	defer k.Close()
	sets, err := k.ListSets(b.family)
	if err != nil {
		return nil, err
	}
	kp := newKubeProxySets(b.family)
	var destroyed []string
	var errs []error
	for _, s := range sets {
		if !kp.all[s.Name] {
			continue
		}
		if err := k.DestroySet(s.Name); err != nil {
			errs = append(errs, fmt.Errorf("destroying kube-proxy's set %s: %w", s.Name, err))
			continue
		}
		destroyed = append(destroyed, s.Name)
	}
	return destroyed, errors.Join(errs...)
}
