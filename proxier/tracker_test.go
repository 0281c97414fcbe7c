package proxier

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// fakeClock is a settable clock for a tracker.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newTestTracker() (*Tracker, *fakeClock, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	clock := &fakeClock{now: t0}
	return NewTracker(zap.New(core), clock.Now), clock, logs
}

func webService(opts ...pt.ServiceOption) *v1.Service {
	return pt.Service("ns", "web", []string{"10.96.0.10"}, append([]pt.ServiceOption{pt.Port("http", "TCP", 80)}, opts...)...)
}

func webSlice(name string, ips ...string) *discoveryv1.EndpointSlice {
	var eps []pt.Endpoint
	for _, ip := range ips {
		eps = append(eps, pt.Ready(ip, "node-a"))
	}
	return pt.Slice("ns", name, "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(eps...))
}

var web = ServiceName{"ns", "web"}

func signalled(tr *Tracker) bool {
	select {
	case <-tr.Changed():
		return true
	default:
		return false
	}
}

func sliceAddrs(snap *Snapshot, name ServiceName) []string {
	var out []string
	for _, es := range snap.EndpointSlices(name) {
		for _, e := range es.Endpoints {
			out = append(out, es.Name+"="+e.Addr.String())
		}
	}
	return out
}

func TestTrackerServiceLifecycle(t *testing.T) {
	tr, clock, _ := newTestTracker()
	if signalled(tr) {
		t.Fatal("a new tracker is signalled")
	}
	tr.UpsertService(webService())
	if !signalled(tr) {
		t.Fatal("adding a service did not signal")
	}
	clock.Advance(time.Second)
	snap := tr.Snapshot()
	if _, ok := snap.Service(web); !ok || !slices.Equal(snap.ChangedServices, []ServiceName{web}) {
		t.Fatalf("after add: service present %v, changed %v", ok, snap.ChangedServices)
	}
	if !snap.OldestChange.Equal(t0) {
		t.Errorf("OldestChange = %v, want the time of the add %v", snap.OldestChange, t0)
	}

	if snap := tr.Snapshot(); len(snap.ChangedServices) != 0 || !snap.OldestChange.IsZero() || snap.NumServices() != 1 {
		t.Errorf("second snapshot: changed %v, oldest %v, %d services; want no changes, still 1 service",
			snap.ChangedServices, snap.OldestChange, snap.NumServices())
	}

	tr.DeleteService("ns", "web")
	snap = tr.Snapshot()
	if _, ok := snap.Service(web); ok || !slices.Equal(snap.ChangedServices, []ServiceName{web}) {
		t.Errorf("after delete: service present %v, changed %v", ok, snap.ChangedServices)
	}
}

func TestTrackerIdenticalUpdateIsNoChange(t *testing.T) {
	tr, _, _ := newTestTracker()
	tr.UpsertService(webService())
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
	tr.Snapshot()
	if signalled(tr) {
		t.Fatal("the signal for changes a snapshot took is still pending")
	}

	again := webService()
	again.ResourceVersion = "2" // a resync or a status-only update
	tr.UpsertService(again)
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
	tr.DeleteService("ns", "ghost")
	tr.DeleteEndpointSlice("ns", "ghost-1")
	if signalled(tr) {
		t.Error("identical updates and deletes of unknown objects signalled a change")
	}
	if _, pending := tr.OldestPending(); pending {
		t.Error("identical updates left a change pending")
	}
	if snap := tr.Snapshot(); len(snap.ChangedServices) != 0 {
		t.Errorf("changed %v, want none", snap.ChangedServices)
	}
}

func TestTrackerSlices(t *testing.T) {
	tests := []struct {
		name    string
		steps   func(tr *Tracker)
		want    map[ServiceName][]string
		changed []ServiceName
	}{
		{
			name: "several slices per service, kept in name order",
			steps: func(tr *Tracker) {
				tr.UpsertService(webService())
				tr.UpsertEndpointSlice(webSlice("web-2", "10.0.0.2"))
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
			},
			want:    map[ServiceName][]string{web: {"web-1=10.0.0.1", "web-2=10.0.0.2"}},
			changed: []ServiceName{web},
		},
		{
			name: "a slice arriving before its service",
			steps: func(tr *Tracker) {
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
			},
			want:    map[ServiceName][]string{web: {"web-1=10.0.0.1"}},
			changed: []ServiceName{web},
		},
		{
			name: "a slice updated",
			steps: func(tr *Tracker) {
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
				tr.Snapshot()
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1", "10.0.0.3"))
			},
			want:    map[ServiceName][]string{web: {"web-1=10.0.0.1", "web-1=10.0.0.3"}},
			changed: []ServiceName{web},
		},
		{
			name: "a slice moving to another service",
			steps: func(tr *Tracker) {
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
				tr.UpsertEndpointSlice(webSlice("web-2", "10.0.0.2"))
				tr.Snapshot()
				moved := webSlice("web-1", "10.0.0.1")
				moved.Labels["kubernetes.io/service-name"] = "api"
				tr.UpsertEndpointSlice(moved)
			},
			want: map[ServiceName][]string{
				web:           {"web-2=10.0.0.2"},
				{"ns", "api"}: {"web-1=10.0.0.1"},
			},
			changed: []ServiceName{{"ns", "api"}, web},
		},
		{
			name: "a slice losing its service label is removed",
			steps: func(tr *Tracker) {
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
				tr.Snapshot()
				orphan := webSlice("web-1", "10.0.0.1")
				delete(orphan.Labels, "kubernetes.io/service-name")
				tr.UpsertEndpointSlice(orphan)
			},
			want:    map[ServiceName][]string{},
			changed: []ServiceName{web},
		},
		{
			name: "a slice deleted",
			steps: func(tr *Tracker) {
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
				tr.UpsertEndpointSlice(webSlice("web-2", "10.0.0.2"))
				tr.Snapshot()
				tr.DeleteEndpointSlice("ns", "web-1")
			},
			want:    map[ServiceName][]string{web: {"web-2=10.0.0.2"}},
			changed: []ServiceName{web},
		},
		{
			name: "a service deleted keeps its slices (they are deleted separately)",
			steps: func(tr *Tracker) {
				tr.UpsertService(webService())
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
				tr.Snapshot()
				tr.DeleteService("ns", "web")
			},
			want:    map[ServiceName][]string{web: {"web-1=10.0.0.1"}},
			changed: []ServiceName{web},
		},
		{
			name: "a burst that ends where it started is no change",
			steps: func(tr *Tracker) {
				tr.UpsertService(webService())
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
				tr.Snapshot()
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.9"))
				tr.DeleteService("ns", "web")
				tr.UpsertService(webService())
				tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
			},
			want: map[ServiceName][]string{web: {"web-1=10.0.0.1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, _, _ := newTestTracker()
			tt.steps(tr)
			snap := tr.Snapshot()
			for name, want := range tt.want {
				if got := sliceAddrs(snap, name); !slices.Equal(got, want) {
					t.Errorf("slices of %v = %v, want %v", name, got, want)
				}
			}
			if got := sliceAddrs(snap, web); len(tt.want[web]) == 0 && len(got) != 0 {
				t.Errorf("slices of %v = %v, want none", web, got)
			}
			if !slices.Equal(snap.ChangedServices, tt.changed) {
				t.Errorf("changed = %v, want %v", snap.ChangedServices, tt.changed)
			}
		})
	}
}

func TestTrackerBurstIsOneChange(t *testing.T) {
	tr, clock, _ := newTestTracker()
	tr.UpsertService(webService())
	for i := range 100 {
		clock.Advance(time.Millisecond)
		tr.UpsertEndpointSlice(webSlice("web-1", fmt.Sprintf("10.0.0.%d", i+1)))
	}
	if oldest, ok := tr.OldestPending(); !ok || !oldest.Equal(t0) {
		t.Errorf("OldestPending = %v, %v; want the first change at %v", oldest, ok, t0)
	}
	snap := tr.Snapshot()
	if !slices.Equal(snap.ChangedServices, []ServiceName{web}) {
		t.Errorf("changed = %v, want one entry for %v", snap.ChangedServices, web)
	}
	if got := sliceAddrs(snap, web); !slices.Equal(got, []string{"web-1=10.0.0.100"}) {
		t.Errorf("slices = %v, want only the last update", got)
	}
	if _, ok := tr.OldestPending(); ok {
		t.Error("a change is still pending after Snapshot")
	}
}

func TestTrackerInvalidUpdateDropsService(t *testing.T) {
	tr, _, logs := newTestTracker()
	tr.UpsertService(webService(pt.ExternalIPs("192.0.2.1")))
	tr.Snapshot()

	tr.UpsertService(webService(pt.ExternalIPs("192.0.2.1", "not-an-ip")))
	snap := tr.Snapshot()
	if _, ok := snap.Service(web); ok {
		t.Error("the stale valid version is still programmed after an invalid update")
	}
	if !slices.Equal(snap.ChangedServices, []ServiceName{web}) {
		t.Errorf("changed = %v, want %v", snap.ChangedServices, web)
	}
	warnings := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessage("object cannot be programmed, skipped")
	if warnings.Len() != 1 {
		t.Fatalf("%d warnings for one invalid update, want 1", warnings.Len())
	}
	if msg := fmt.Sprint(warnings.All()[0].ContextMap()["error"]); msg != `Service ns/web: invalid spec.externalIPs[1] "not-an-ip": not an IP address` {
		t.Errorf("warning says %q", msg)
	}

	// Parsing happens once per update, not once per sync.
	tr.Snapshot()
	tr.Snapshot()
	if n := logs.FilterMessage("object cannot be programmed, skipped").Len(); n != 1 {
		t.Errorf("%d warnings after more snapshots, want still 1", n)
	}
}

func TestTrackerIgnoredUpdateDropsService(t *testing.T) {
	tr, _, logs := newTestTracker()
	tr.UpsertService(webService())
	tr.Snapshot()
	tr.UpsertService(webService(pt.ExternalName("example.com")))
	if _, ok := tr.Snapshot().Service(web); ok {
		t.Error("a service turned ExternalName is still programmed")
	}
	if n := logs.FilterLevelExact(zapcore.DebugLevel).FilterMessage("object ignored").Len(); n != 1 {
		t.Errorf("%d debug lines for an ignored service, want 1", n)
	}
}

func TestTrackerTriggerTimes(t *testing.T) {
	tr, clock, _ := newTestTracker() // made at t0
	clock.Advance(10 * time.Second)
	at := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339Nano) }
	first := webSlice("web-1", "10.0.0.1")
	pt.TriggerTime(at(3 * time.Second))(first)
	second := pt.Slice("ns", "web-2", "web", pt.AddressType(discoveryv1.AddressTypeIPv6),
		pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("fd00::2", "node-a")), pt.TriggerTime(at(2*time.Second)))
	// A slice the informers replay at start carries the time of a change
	// made before this process: not its latency to measure.
	replayed := webSlice("web-3", "10.0.0.3")
	pt.TriggerTime(at(-time.Hour))(replayed)
	tr.UpsertEndpointSlice(first)
	tr.UpsertEndpointSlice(second)
	tr.UpsertEndpointSlice(replayed)
	tr.UpsertEndpointSlice(webSlice("web-4", "10.0.0.4")) // no annotation

	snap := tr.Snapshot()
	want := []TriggerTime{{model.IPv6, t0.Add(2 * time.Second)}, {model.IPv4, t0.Add(3 * time.Second)}}
	if !slices.Equal(snap.TriggerTimes, want) {
		t.Errorf("TriggerTimes = %v, want %v", snap.TriggerTimes, want)
	}
	if got := tr.Snapshot().TriggerTimes; len(got) != 0 {
		t.Errorf("trigger times reported twice: %v", got)
	}

	// As in kube-proxy, a slice removed drops its service's pending times.
	moved := webSlice("web-1", "10.0.0.5")
	pt.TriggerTime(at(4 * time.Second))(moved)
	tr.UpsertEndpointSlice(moved)
	tr.DeleteEndpointSlice("ns", "web-3")
	if got := tr.Snapshot().TriggerTimes; len(got) != 0 {
		t.Errorf("trigger times of a service whose slice was removed: %v", got)
	}
}

func TestTrackerNode(t *testing.T) {
	tr, _, _ := newTestTracker()
	node := model.NodeInfo{Name: "node-a", Zone: "z1", Addresses: addrs("192.168.0.10")}
	tr.SetNode(node)
	snap := tr.Snapshot()
	if !snap.NodeChanged || snap.Node.Name != "node-a" {
		t.Errorf("after SetNode: NodeChanged %v, node %+v", snap.NodeChanged, snap.Node)
	}
	tr.SetNode(model.NodeInfo{Name: "node-a", Zone: "z1", Addresses: addrs("192.168.0.10")})
	if signalled(tr) || tr.Snapshot().NodeChanged {
		t.Error("an identical node was reported as a change")
	}
	node.Addresses[0] = addrs("192.168.0.99")[0]
	if got := tr.Snapshot().Node.Addresses[0]; got != addrs("192.168.0.10")[0] {
		t.Errorf("the tracker shares the caller's address slice: now %v", got)
	}
	tr.SetNode(model.NodeInfo{Name: "node-a", Zone: "z2"})
	if snap := tr.Snapshot(); !snap.NodeChanged || snap.Node.Zone != "z2" {
		t.Errorf("zone change: NodeChanged %v, zone %q", snap.NodeChanged, snap.Node.Zone)
	}
}

func TestSnapshotIsImmutable(t *testing.T) {
	tr, _, _ := newTestTracker()
	tr.UpsertService(webService())
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
	before := tr.Snapshot()

	tr.UpsertService(webService(pt.Port("https", "TCP", 443)))
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.2"))
	tr.UpsertEndpointSlice(webSlice("web-2", "10.0.0.3"))
	tr.UpsertService(pt.Service("ns", "api", []string{"10.96.0.11"}, pt.Port("", "TCP", 80)))
	after := tr.Snapshot()

	if svc, _ := before.Service(web); len(svc.Ports) != 1 || before.NumServices() != 1 {
		t.Errorf("an earlier snapshot changed: %d services, ports %v", before.NumServices(), svc.Ports)
	}
	if got := sliceAddrs(before, web); !slices.Equal(got, []string{"web-1=10.0.0.1"}) {
		t.Errorf("an earlier snapshot's slices changed: %v", got)
	}
	if got := sliceAddrs(after, web); !slices.Equal(got, []string{"web-1=10.0.0.2", "web-2=10.0.0.3"}) {
		t.Errorf("later snapshot's slices = %v", got)
	}
}

// TestTrackerConcurrent runs informer-like writers against a syncing reader;
// under -race it checks the locking, and at the end that no change was lost.
func TestTrackerConcurrent(t *testing.T) {
	tr, _, _ := newTestTracker()
	const writers, updates = 4, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			name := fmt.Sprintf("svc-%d", w)
			for i := range updates {
				tr.UpsertService(pt.Service("ns", name, []string{fmt.Sprintf("10.96.%d.1", w)}, pt.Port("", "TCP", int32(1+i))))
				tr.UpsertEndpointSlice(pt.Slice("ns", name+"-a", name, pt.SlicePort("", "TCP", 80),
					pt.Endpoints(pt.Ready(fmt.Sprintf("10.%d.%d.%d", w, i/250, i%250+1), "n"))))
				if i%50 == 0 {
					tr.DeleteEndpointSlice("ns", name+"-a")
				}
			}
		})
	}
	done := make(chan struct{})
	seen := map[ServiceName]bool{}
	var readErr error
	go func() {
		defer close(done)
		for range 1000 {
			snap := tr.Snapshot()
			for _, n := range snap.ChangedServices {
				seen[n] = true
			}
			for svc := range snap.Services() {
				if len(svc.Ports) != 1 {
					readErr = fmt.Errorf("snapshot shows %v with %d ports", svc.Name, len(svc.Ports))
				}
			}
		}
	}()
	wg.Wait()
	<-done
	if readErr != nil {
		t.Fatal(readErr)
	}
	final := tr.Snapshot()
	for _, n := range final.ChangedServices {
		seen[n] = true
	}
	for w := range writers {
		name := ServiceName{"ns", fmt.Sprintf("svc-%d", w)}
		svc, ok := final.Service(name)
		if !ok || svc.Ports[0].Port != updates || !seen[name] {
			t.Errorf("%v: present %v, seen changed %v; want the last update (port %d)", name, ok, seen[name], updates)
		}
		if got := sliceAddrs(final, name); len(got) != 1 {
			t.Errorf("%v slices = %v, want the last update", name, got)
		}
	}
}

// The totals count events as kube-proxy's trackers do: every Service
// event and every event of a slice with a service label and an IP address
// type, whether or not it changes anything; since the last snapshot, the
// pending gauges count the services whose Service changed and the slice
// events that changed a slice.
func TestTrackerStatsCountEventsAsKubeProxy(t *testing.T) {
	tr, clock, _ := newTestTracker()
	tr.UpsertService(webService())
	clock.Advance(time.Second)
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.2"))
	tr.UpsertService(pt.Service("ns", "api", []string{"10.96.0.11"}, pt.Port("http", "TCP", 80)))

	got := tr.Stats()
	want := ChangeStats{ServicesPending: 2, EndpointsPending: 2, ServiceEvents: 2, SliceEvents: [2]uint64{2, 0}, LastQueued: t0.Add(time.Second)}
	if got != want {
		t.Fatalf("before a snapshot: got %+v, want %+v", got, want)
	}

	tr.Snapshot()
	tr.UpsertService(webService())                               // unchanged (a resync): counted, not pending
	tr.UpsertService(webService(pt.ExternalName("example.com"))) // ignored by the proxy: counted
	tr.DeleteService("ns", "never-seen")                         // counted
	tr.UpsertEndpointSlice(webSlice("web-1", "10.0.0.2"))        // unchanged: counted
	tr.UpsertEndpointSlice(pt.Slice("ns", "web-6", "web", pt.AddressType(discoveryv1.AddressTypeIPv6),
		pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("fd00::2", "node-a"))))
	tr.UpsertEndpointSlice(pt.Slice("ns", "web-f", "web", pt.AddressType(discoveryv1.AddressTypeFQDN))) // not counted
	unlabelled := webSlice("orphan", "10.0.0.9")
	delete(unlabelled.Labels, discoveryv1.LabelServiceName)
	tr.UpsertEndpointSlice(unlabelled)     // not counted
	tr.DeleteEndpointSlice("ns", "web-6")  // counted, IPv6
	tr.DeleteEndpointSlice("ns", "orphan") // never stored: not counted
	want = ChangeStats{ServicesPending: 1, EndpointsPending: 2, ServiceEvents: 5, SliceEvents: [2]uint64{3, 2}, LastQueued: t0.Add(time.Second)}
	if got := tr.Stats(); got != want {
		t.Fatalf("after a snapshot: got %+v, want %+v", got, want)
	}
}

// Pending changes wait for slices only while all of them are new Services
// without one: an existing service's change, a slice, a node change or a
// second kind of change among them ends the wait.
func TestTrackerSliceWaitEnds(t *testing.T) {
	const wait = 250 * time.Millisecond
	webSlice := func() *discoveryv1.EndpointSlice {
		return pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.0.0.1", "node-a")))
	}
	tr, clock, _ := newTestTracker()
	if got := tr.SliceWaitEnds(wait); !got.IsZero() {
		t.Errorf("nothing pending: wait until %v", got)
	}
	tr.UpsertService(webService())
	clock.Advance(10 * time.Millisecond)
	tr.UpsertService(pt.Service("ns", "db", []string{"10.96.0.11"}, pt.Port("sql", "TCP", 5432)))
	if got, want := tr.SliceWaitEnds(wait), t0.Add(wait); !got.Equal(want) {
		t.Errorf("two new Services without slices: wait until %v, want %v (the first's queue time + wait)", got, want)
	}
	if got := tr.SliceWaitEnds(0); !got.IsZero() {
		t.Errorf("no wait configured: wait until %v", got)
	}
	tr.UpsertEndpointSlice(webSlice())
	if got := tr.SliceWaitEnds(wait); !got.IsZero() {
		t.Errorf("a slice came: wait until %v, want no wait", got)
	}
	tr.Snapshot()

	tr.UpsertService(webService(pt.Affinity(60)))
	if got := tr.SliceWaitEnds(wait); !got.IsZero() {
		t.Errorf("a change of a known service: wait until %v, want no wait", got)
	}
	tr.Snapshot()
	tr.UpsertService(pt.Service("ns", "new", []string{"10.96.0.12"}, pt.Port("http", "TCP", 80)))
	tr.SetNode(testNode)
	if got := tr.SliceWaitEnds(wait); !got.IsZero() {
		t.Errorf("a node change pending too: wait until %v, want no wait", got)
	}
}
