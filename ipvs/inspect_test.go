package ipvs_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// After a full sync every port of every scenario is in sync; what the
// plan wants is what PortObjects gives the ports, all of it.
func TestInspectAfterSyncIsInSync(t *testing.T) {
	for _, sc := range scenarios() {
		if sc.prev != nil {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			b := newBed(t, sc.cfg)
			b.sync(sc.view, nil)
			got, err := b.backends[sc.view.Family].Inspect(context.Background(), sc.view)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(sc.view.Services) {
				t.Errorf("inspected %d ports, the view has %d", len(got), len(sc.view.Services))
			}
			for name, objs := range got {
				if s := model.PortStatus(objs); s != model.StatusInSync {
					t.Errorf("%v is %s: %+v", name, s, objs)
				}
			}
			want := sc.plan().Want
			servers := 0
			for _, w := range ipvs.PortObjects(sc.cfg, sc.view, hostAddrs(t, b, sc.view.Family)) {
				for _, vs := range w.VirtualServers {
					if _, ok := want.VirtualServers[vs.VSKey]; !ok {
						t.Errorf("port wants %v, the plan does not", vs.VSKey)
					}
					servers++
				}
			}
			if servers < len(want.VirtualServers) {
				t.Errorf("the ports want %d virtual servers, the plan %d", servers, len(want.VirtualServers))
			}
		})
	}
}

func hostAddrs(t *testing.T, b *bed, f model.Family) []netip.Addr {
	addrs, err := b.k.HostAddrs(f, ipvs.DummyName)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

// A real server, a set entry or a filter rule taken away by someone
// else drifts the port that needs it, and only that port.
func TestInspectFindsDrift(t *testing.T) {
	sc := scenarioNamed(t, "no-endpoints")
	b := newBed(t, sc.cfg)
	b.sync(sc.view, nil)
	web := model.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: model.TCP}
	inspect := func() map[model.ServicePortName][]model.KernelObject {
		got, err := b.backends[model.IPv4].Inspect(context.Background(), sc.view)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	var reject string
	for _, r := range ipvs.PortObjects(sc.cfg, sc.view, hostAddrs(t, b, model.IPv4))[web].Rules.Shared {
		if r.Chain.Name == netfilter.ChainFilter {
			reject = r.Text
			break
		}
	}
	if reject == "" {
		t.Fatal("web has no FILTER rule")
	}
	b.nf[model.IPv4].DeleteRule(netfilter.TableFilter, netfilter.ChainFilter, reject)
	for name, objs := range inspect() {
		want := model.StatusInSync
		if name == web {
			want = model.StatusDrifted
		}
		if s := model.PortStatus(objs); s != want {
			t.Errorf("after deleting %q: %v is %s, want %s", reject, name, s, want)
		}
	}
}

func scenarioNamed(t *testing.T, name string) scenario {
	for _, sc := range scenarios() {
		if sc.name == name {
			return sc
		}
	}
	t.Fatalf("no scenario %q", name)
	return scenario{}
}

// A real server deleted behind svcproxy's back drifts its port.
func TestInspectFindsAMissingRealServer(t *testing.T) {
	sc := scenarioNamed(t, "clusterip")
	b := newBed(t, sc.cfg)
	b.sync(sc.view, nil)
	sp := sc.view.SortedNames()[0]
	port := sc.view.Services[sp]
	vs := ipvs.VSKey{Addr: port.ClusterIP, Protocol: port.Protocol(), Port: port.Port}
	if err := b.k.DeleteRealServer(vs, port.ClusterEndpoints[0].Addr); err != nil {
		t.Fatal(err)
	}
	got, err := b.backends[model.IPv4].Inspect(context.Background(), sc.view)
	if err != nil {
		t.Fatal(err)
	}
	if s := model.PortStatus(got[sp]); s != model.StatusDrifted {
		t.Errorf("%v is %s after losing a real server: %+v", sp, s, got[sp])
	}
}
