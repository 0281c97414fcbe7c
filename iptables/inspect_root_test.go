package iptables_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Every rule the compiler writes reads back from iptables-save as the same
// text, in both flavors: after a real sync, each port of every scenario
// is in sync. `svcproxy list` compares the kernel by that text, so a rule
// written in another order of options than iptables-save prints would
// show as drift where there is none. Each scenario runs in a network
// namespace of its own.
func TestKernelRulesReadBackAsWritten(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, flavor := range []netfilter.Flavor{netfilter.FlavorNFT, netfilter.FlavorLegacy} {
		for _, sc := range append(scenarios(), manyEndpoints()) {
			if sc.prev != nil {
				continue
			}
			t.Run(string(flavor)+"/"+sc.name, func(t *testing.T) {
				ns := netnstest.NewNS(t, "readback")
				b, err := iptables.New(sc.cfg, sc.view.Family, flavor)
				if err != nil {
					t.Fatal(err)
				}
				var got map[model.ServicePortName][]model.KernelObject
				if err := ns.Do(func() error {
					if _, err := b.Sync(context.Background(), sc.view, nil); err != nil {
						return err
					}
					got, err = b.Inspect(context.Background(), sc.view)
					return err
				}); err != nil {
					t.Fatal(err)
				}
				for name, objs := range got {
					for _, o := range objs {
						if o.State != model.InPlace {
							t.Errorf("%v: %s %s is %s %s", name, o.Kind, o.Name, o.State, o.Detail)
						}
					}
				}
			})
		}
	}
}

// manyEndpoints balances over 64 endpoints: every probability from 1/64
// to 1/2, each of which must read back as written.
func manyEndpoints() scenario {
	var eps []string
	for i := range 64 {
		eps = append(eps, fmt.Sprintf("10.244.%d.%d:8080", 2+i/200, 1+i%200))
	}
	return scenario{name: "many-endpoints", cfg: testCfg, view: mt.View(model.IPv4, web(mt.Eps(eps...)))}
}
