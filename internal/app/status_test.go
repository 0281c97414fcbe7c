package app

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// The CLI compiles the view the status endpoint sends: what it decodes
// must be the view the daemon compiled, field for field, or `svcproxy
// list` would report drift that is not there.
func TestStatusDocCarriesTheViewWhole(t *testing.T) {
	view := mt.View(model.IPv4,
		mt.Port("default", "web", "http", model.TCP, "10.96.0.10", 80, mt.NodePort(30080), mt.LoadBalancer("198.51.100.10"),
			mt.ExternalIPs("192.0.2.50"), mt.SourceRanges("203.0.113.0/24"), mt.ExternalLocal(32000), mt.Affinity(600),
			mt.Eps("local 10.244.1.5:8080", "10.244.2.5:8080"), mt.Terminating("local 10.244.1.6:8080")),
		mt.Port("default", "cache", "", model.UDP, "10.96.0.21", 53, mt.InternalLocal(), mt.NodePort(30053), mt.Eps("10.244.2.7:53")),
		mt.Port("default", "empty", "", model.SCTP, "10.96.0.22", 80),
	)
	view.Node = model.NodeInfo{Name: "node-a", Zone: "z1", Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10")},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	rules := netfilter.Config{ClusterCIDRs: mt.PodCIDRs, NodeIPs: view.Node.Addresses, MasqueradeBit: 14}
	fam := familyStatusDoc{Family: model.IPv4}
	for _, name := range view.SortedNames() {
		fam.Ports = append(fam.Ports, portStatusDoc{ServicePort: view.Services[name]})
	}
	encoded, err := json.Marshal(&statusDoc{Mode: "iptables", Flavor: netfilter.FlavorNFT, Node: view.Node, Rules: rules, Families: []familyStatusDoc{fam}})
	if err != nil {
		t.Fatal(err)
	}
	var doc statusDoc
	if err := json.Unmarshal(encoded, &doc); err != nil {
		t.Fatal(err)
	}
	got := doc.Families[0].view(doc.Node)
	if len(got.Services) != len(view.Services) {
		t.Fatalf("decoded %d ports, sent %d", len(got.Services), len(view.Services))
	}
	for name, sp := range view.Services {
		if d, ok := got.Services[name]; !ok || !d.Equal(sp) {
			t.Errorf("%v decoded as %+v, sent %+v", name, d, sp)
		}
	}
	want, decoded := iptables.Compile(rules, view, nil), iptables.Compile(doc.Rules, got, nil)
	if string(want.Render(nil)) != string(decoded.Render(nil)) {
		t.Errorf("the decoded view compiles to other rules:\n%s\nwant:\n%s", decoded.Render(nil), want.Render(nil))
	}
}
