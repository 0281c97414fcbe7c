package netfilter

import (
	"net/netip"
	"slices"

	"github.com/svcproxy/svcproxy/model"
)

// NodePortHosts are the hosts a server answering on the node port
// addresses listens on (the health check node ports), given the node's
// local addresses: where kube-proxy's health check servers listen. When
// every family serves its node ports on every address, that is "", every
// address of both families. Otherwise each family on its own: "0.0.0.0"
// or "::" (every address of that family only) for a family no CIDR of
// --nodeport-addresses is of, else each local address of the family
// within its CIDRs, fixed at start as in kube-proxy. (kube-proxy's two
// family proxiers there race for the port, which one of them fails to
// bind; svcproxy answers in each family where its node ports do.)
func NodePortHosts(cfg Config, families []model.Family, local []netip.Addr) []string {
	limited := slices.ContainsFunc(families, func(f model.Family) bool {
		return len(nodePortPrefixes(cfg.NodePortAddresses, f)) > 0
	})
	if !limited {
		return []string{""}
	}
	var hosts []string
	for _, f := range families {
		prefixes := nodePortPrefixes(cfg.NodePortAddresses, f)
		if len(prefixes) == 0 {
			hosts = append(hosts, map[model.Family]string{model.IPv4: "0.0.0.0", model.IPv6: "::"}[f])
			continue
		}
		var addrs []netip.Addr
		for _, a := range local {
			a = a.Unmap()
			if a.IsValid() && model.FamilyOf(a) == f && slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) }) {
				addrs = append(addrs, a)
			}
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		for _, a := range slices.Compact(addrs) {
			hosts = append(hosts, a.String())
		}
	}
	return hosts
}
