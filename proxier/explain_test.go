package proxier

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// explained feeds a service and its endpoints through a tracker and
// explains its http port's endpoints, by address.
func explained(t *testing.T, svcOpts []pt.ServiceOption, eps ...pt.Endpoint) map[string]EndpointUse {
	t.Helper()
	tr, _, _ := newTestTracker()
	tr.SetNode(testNode)
	tr.UpsertService(webService(svcOpts...))
	tr.UpsertEndpointSlice(pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(eps...)))
	snap := tr.Snapshot()
	sp := webPort(Compute(snap, model.IPv4), t)
	out := map[string]EndpointUse{}
	for _, u := range ExplainEndpoints(snap, sp, model.IPv4) {
		out[u.Addr.Addr().String()] = u
	}
	return out
}

func TestExplainEndpointsSaysWhatDecided(t *testing.T) {
	a1 := pt.Ready("10.0.0.1", "node-a").InZone("z1")
	c2 := pt.Ready("10.0.0.3", "node-c").InZone("z2")
	tests := []struct {
		name    string
		svcOpts []pt.ServiceOption
		eps     []pt.Endpoint
		// want, by address: the scopes, then a piece of the reason.
		want map[string][2]string
	}{
		{
			name: "conditions",
			eps:  []pt.Endpoint{readyRemote, notReady, termLocal},
			want: map[string][2]string{
				"10.0.0.2": {"cluster", "ready"},
				"10.0.0.6": {"", "not serving"},
				"10.0.0.3": {"", "used only when no ready endpoint is left"},
			},
		},
		{
			name: "terminating fallback",
			eps:  []pt.Endpoint{termRemote, termNotServing},
			want: map[string][2]string{
				"10.0.0.4": {"cluster", "used because no endpoint is ready"},
				"10.0.0.5": {"", "not serving"},
			},
		},
		{
			name:    "internalTrafficPolicy Local",
			svcOpts: []pt.ServiceOption{pt.InternalLocal()},
			eps:     []pt.Endpoint{readyLocal, readyRemote},
			want: map[string][2]string{
				"10.0.0.1": {"cluster", "ready"},
				"10.0.0.2": {"", "internalTrafficPolicy is Local"},
			},
		},
		{
			name:    "externalTrafficPolicy Local",
			svcOpts: []pt.ServiceOption{pt.NodePort("http", 30080), pt.ExternalLocal(32000)},
			eps:     []pt.Endpoint{readyLocal, readyRemote},
			want: map[string][2]string{
				"10.0.0.1": {"cluster,local", "ready"},
				"10.0.0.2": {"cluster", "external traffic keeps to this node's endpoints"},
			},
		},
		{
			name: "zone hints",
			eps:  []pt.Endpoint{a1.HintZones("z1"), c2.HintZones("z2")},
			want: map[string][2]string{
				"10.0.0.1": {"cluster", "topology lets this node use it (hints for zones z1)"},
				"10.0.0.3": {"", "topology keeps it from this node (hints for zones z2)"},
			},
		},
		{
			name:    "PreferSameNode without hints",
			svcOpts: []pt.ServiceOption{pt.Distribution("PreferSameNode")},
			eps:     []pt.Endpoint{a1, c2},
			want: map[string][2]string{
				"10.0.0.1": {"cluster", "topology lets this node use it (trafficDistribution PreferSameNode, endpoint on node-a)"},
				"10.0.0.3": {"", "topology keeps it from this node (trafficDistribution PreferSameNode, endpoint on node-c)"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := explained(t, tt.svcOpts, tt.eps...)
			if len(got) != len(tt.want) {
				t.Errorf("explained %d endpoints, want %d: %+v", len(got), len(tt.want), got)
			}
			for addr, want := range tt.want {
				u, ok := got[addr]
				if !ok {
					t.Errorf("%s not explained", addr)
					continue
				}
				if scopes := strings.Join(u.Scopes, ","); scopes != want[0] || !strings.Contains(u.Why, want[1]) {
					t.Errorf("%s: used for %q because %q; want %q because ...%q...", addr, scopes, u.Why, want[0], want[1])
				}
			}
		})
	}
}

// The recorder keeps, per port, the last sync that changed it, with how
// long its service's change waited; a failed sync changes no port's
// record but says it failed.
func TestStatusRecorderKeepsWhatProgrammedEachPort(t *testing.T) {
	tr, clock, _ := newTestTracker()
	tr.SetNode(testNode)
	var rec StatusRecorder
	sync := func(after time.Duration, err error) *Status {
		snap := tr.Snapshot()
		view := Compute(snap, model.IPv4)
		rec.Observe(&SyncReport{Start: clock.Now().Add(after), Duration: 10 * time.Millisecond, Snapshot: snap,
			Families: []FamilyReport{{Family: model.IPv4, View: view, Err: err, Duration: 10 * time.Millisecond}}})
		return rec.Current()
	}
	if rec.Current() != nil {
		t.Fatal("a status before any sync")
	}
	tr.UpsertService(webService())
	tr.UpsertEndpointSlice(pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(readyRemote)))
	first := sync(40*time.Millisecond, nil)
	web := model.ServicePortName{Namespace: "ns", Name: "web", Port: "http", Protocol: model.TCP}
	got, ok := first.Families[0].Programmed.Get(web)
	if !ok || got.Waited != 50*time.Millisecond {
		t.Fatalf("after the first sync: %+v (%v), want it programmed 50ms after its change", got, ok)
	}

	tr.UpsertService(webService(pt.Affinity(60)))
	failed := sync(0, errors.New("iptables-restore: refused"))
	if f := failed.Families[0]; f.LastError == "" || f.Programmed != first.Families[0].Programmed {
		t.Errorf("after a failed sync: error %q, programmed %+v; want the error and the record of the first", f.LastError, f.Programmed)
	}
	if first.Families[0].LastError != "" {
		t.Error("the published status was modified")
	}
	clock.Advance(time.Second)
	tr.UpsertService(webService(pt.Affinity(60)))
	again := sync(0, nil)
	if p, _ := again.Families[0].Programmed.Get(web); !p.At.After(got.At) {
		t.Errorf("after the retry the port is programmed at %v, no later than the first %v", p.At, got.At)
	}
}

// A sync that changes one port of many copies one shard of the record:
// the rest is shared with the published one, which stays as it was.
func TestProgrammedCopiesOnlyTheChangedShard(t *testing.T) {
	view := &model.NodeView{Family: model.IPv4, Services: map[model.ServicePortName]*model.ServicePort{}}
	for i := range 1000 {
		name := model.ServicePortName{Namespace: "ns", Name: fmt.Sprintf("svc-%d", i), Port: "http", Protocol: model.TCP}
		view.Services[name] = &model.ServicePort{Port: 80}
	}
	t0 := time.Unix(1000, 0)
	first := programmed(nil, nil, view, SyncInfo{At: t0}, &Snapshot{})
	if recorded(first) != 1000 {
		t.Fatalf("%d ports recorded, want 1000", recorded(first))
	}

	next := &model.NodeView{Family: model.IPv4, Services: maps.Clone(view.Services)}
	moved := model.ServicePortName{Namespace: "ns", Name: "svc-7", Port: "http", Protocol: model.TCP}
	gone := model.ServicePortName{Namespace: "ns", Name: "svc-8", Port: "http", Protocol: model.TCP}
	next.Services[moved] = &model.ServicePort{Port: 81}
	delete(next.Services, gone)
	second := programmed(first, view, next, SyncInfo{At: t0.Add(time.Second)}, &Snapshot{})

	if info, ok := second.Get(moved); !ok || !info.At.Equal(t0.Add(time.Second)) {
		t.Errorf("the changed port: %+v, %v", info, ok)
	}
	if _, ok := second.Get(gone); ok || recorded(second) != 999 {
		t.Errorf("the deleted port still recorded, or %d ports, want 999", recorded(second))
	}
	if info, _ := first.Get(moved); !info.At.Equal(t0) || recorded(first) != 1000 {
		t.Error("the published record was modified")
	}
	shared := 0
	for i := range portShards {
		if reflect.ValueOf(first.shards[i]).UnsafePointer() == reflect.ValueOf(second.shards[i]).UnsafePointer() {
			shared++
		}
	}
	changedShards := map[int]bool{portShard(moved): true, portShard(gone): true}
	if shared != portShards-len(changedShards) {
		t.Errorf("%d of %d shards shared, want all but the %d holding a change", shared, portShards, len(changedShards))
	}
	if programmed(second, next, next, SyncInfo{At: t0.Add(2 * time.Second)}, &Snapshot{}) != second {
		t.Error("a sync that changed nothing made a new record")
	}
}

// recorded is how many ports a record holds.
func recorded(p *PortSyncs) int {
	n := 0
	for _, s := range p.shards {
		n += len(s)
	}
	return n
}
