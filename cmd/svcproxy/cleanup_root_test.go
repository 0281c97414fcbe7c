package main_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// oneService is a view with one ClusterIP service port and one endpoint.
func oneService(family model.Family, clusterIP, endpoint string) *model.NodeView {
	name := model.ServicePortName{Namespace: "ns", Name: "web", Port: "http", Protocol: model.TCP}
	return &model.NodeView{Family: family, Services: map[model.ServicePortName]*model.ServicePort{
		name: {Name: name, ClusterIP: netip.MustParseAddr(clusterIP), Port: 80,
			ClusterEndpoints: []model.Endpoint{{Addr: netip.MustParseAddrPort(endpoint), Ready: true, Serving: true}}},
	}}
}

// The built binary, run with --cleanup in a network namespace that holds
// svcproxy's rules in nft IPv4 and legacy IPv6 next to another program's
// chain, leaves none of its own and the other program's intact.
func TestCleanupFlagRemovesEverySvcproxyRuleInTheNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.NewNS(t, "node")
	programmed := []struct {
		flavor netfilter.Flavor
		view   *model.NodeView
	}{
		{netfilter.FlavorNFT, oneService(model.IPv4, "10.96.0.10", "10.244.0.11:8080")},
		{netfilter.FlavorLegacy, oneService(model.IPv6, "fd00:96::10", "[fd00:244::11]:8080")},
	}
	for _, p := range programmed {
		err := ns.Do(func() error {
			b, err := iptables.New(netfilter.Config{}, p.view.Family, p.flavor)
			if err != nil {
				return err
			}
			_, err = b.Sync(context.Background(), p.view, nil)
			return err
		})
		if err != nil {
			t.Fatalf("programming %s %s: %v", p.flavor, p.view.Family, err)
		}
		save := ns.MustRun(p.flavor.Binary(p.view.Family, "-save"))
		if !strings.Contains(save, "SVCPROXY-SERVICES") {
			t.Fatalf("%s %s holds no svcproxy rules before the cleanup:\n%s", p.flavor, p.view.Family, save)
		}
	}
	ns.MustRun("iptables-nft", "-w", "-t", "nat", "-N", "OTHER-PROGRAM")
	ns.MustRun("ip6tables-legacy", "-w", "-t", "filter", "-N", "OTHER-PROGRAM")

	if _, err := ns.Run(bin, "--cleanup"); err != nil {
		t.Fatalf("svcproxy --cleanup: %v", err)
	}

	for _, flavor := range []netfilter.Flavor{netfilter.FlavorNFT, netfilter.FlavorLegacy} {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			save := ns.MustRun(flavor.Binary(family, "-save"))
			if strings.Contains(save, "SVCPROXY") {
				t.Errorf("%s %s still holds svcproxy rules after --cleanup:\n%s", flavor, family, save)
			}
		}
	}
	if !strings.Contains(ns.MustRun("iptables-nft-save", "-t", "nat"), ":OTHER-PROGRAM") ||
		!strings.Contains(ns.MustRun("ip6tables-legacy-save", "-t", "filter"), ":OTHER-PROGRAM") {
		t.Error("--cleanup removed another program's chain")
	}
}
