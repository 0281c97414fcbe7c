package ipvs_test

import (
	"context"
	"strings"
	"testing"

	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// In a real kernel, after a full sync every object of every port of every
// scenario is in place as Inspect reads it back: the virtual servers with
// their real servers, the addresses, the set entries, and the rules as
// iptables-save prints them (in both flavors). This needs IPVS: it runs
// in the VM (see kernel_linux_test.go) and skips elsewhere. Each scenario
// runs in a network namespace of its own.
func TestKernelIPVSInspectAfterSync(t *testing.T) {
	netnstest.RequireRoot(t)
	if err := ipvs.CheckSupport("rr"); err != nil {
		if strings.Contains(err.Error(), "no IPVS") {
			t.Skipf("needs IPVS (run it in the VM): %v", err)
		}
		t.Fatal(err)
	}
	for _, flavor := range []netfilter.Flavor{netfilter.FlavorNFT, netfilter.FlavorLegacy} {
		for _, sc := range scenarios() {
			if sc.prev != nil {
				continue
			}
			t.Run(string(flavor)+"/"+sc.name, func(t *testing.T) {
				ns := netnstest.NewNS(t, "inspect")
				rules, err := netfilter.NewApplier(ipvs.RulesConfig(sc.view.Family, flavor))
				if err != nil {
					t.Fatal(err)
				}
				b := ipvs.NewBackend(sc.cfg, sc.view.Family, rules, ipvs.OpenKernel, clock.RealClock{})
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
