package proxier

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// benchTracker loads a tracker with services of one port, each with one
// slice of endpointsPer ready endpoints spread over 100 nodes in 3 zones.
func benchTracker(services, endpointsPer int) *Tracker {
	tr := NewTracker(zap.NewNop(), time.Now)
	tr.SetNode(model.NodeInfo{Name: "node-0", Zone: "zone-0"})
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		tr.UpsertService(pt.Service("ns", name, []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)},
			pt.Port("http", "TCP", 80)))
		tr.UpsertEndpointSlice(benchSlice(name, i, endpointsPer, 0))
	}
	return tr
}

// benchSlice's generation shifts the endpoint addresses, so each generation
// is a real change.
func benchSlice(service string, i, endpointsPer, generation int) *discoveryv1.EndpointSlice {
	var eps []pt.Endpoint
	for e := range endpointsPer {
		n := i*endpointsPer + e + generation
		node := fmt.Sprintf("node-%d", n%100)
		eps = append(eps, pt.Ready(fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255), node).InZone(fmt.Sprintf("zone-%d", n%3)))
	}
	return pt.Slice("ns", service+"-1", service, pt.SlicePort("http", "TCP", 8080), pt.Endpoints(eps...))
}

func benchSnapshot(services, endpointsPer int) *Snapshot {
	return benchTracker(services, endpointsPer).Snapshot()
}

func BenchmarkCompute10kServices10Endpoints(b *testing.B) {
	snap := benchSnapshot(10000, 10)
	cpu := startCPU(b)
	for b.Loop() {
		Compute(snap, model.IPv4)
	}
	cpu.report(b)
}

// BenchmarkSnapshotAfterOneChange is the tracker's share of a one-endpoint
// change: the update (which clones the maps shared with the last snapshot)
// and the snapshot that drains it.
func BenchmarkSnapshotAfterOneChange10k(b *testing.B) {
	tr := benchTracker(10000, 10)
	tr.Snapshot()
	cpu := startCPU(b)
	gen := 0
	for b.Loop() {
		gen++
		tr.UpsertEndpointSlice(benchSlice("svc-42", 42, 10, gen))
		tr.Snapshot()
	}
	cpu.report(b)
}

// BenchmarkOneChangeSync10k is a one-endpoint change end to end through
// the tracker and Compute.
func BenchmarkOneChangeSync10k(b *testing.B) {
	tr := benchTracker(10000, 10)
	tr.Snapshot()
	cpu := startCPU(b)
	gen := 0
	for b.Loop() {
		gen++
		tr.UpsertEndpointSlice(benchSlice("svc-42", 42, 10, gen))
		Compute(tr.Snapshot(), model.IPv4)
	}
	cpu.report(b)
}

// BenchmarkOneChangeUpdate10k is the same change through Update, which
// recomputes only the changed service.
func BenchmarkOneChangeUpdate10k(b *testing.B) {
	tr := benchTracker(10000, 10)
	prevSnap := tr.Snapshot()
	prev := Compute(prevSnap, model.IPv4)
	cpu := startCPU(b)
	gen := 0
	for b.Loop() {
		gen++
		tr.UpsertEndpointSlice(benchSlice("svc-42", 42, 10, gen))
		snap := tr.Snapshot()
		prev, prevSnap = Update(snap, model.IPv4, prevSnap, prev), snap
	}
	cpu.report(b)
}

// cpuTimer reports the process's CPU time per op (user+system, GC workers
// included) next to ns/op: on a shared machine wall time mostly measures the
// neighbours, CPU time measures the work.
type cpuTimer struct{ start time.Duration }

func startCPU(b *testing.B) *cpuTimer {
	b.ReportAllocs()
	b.ResetTimer()
	return &cpuTimer{start: cpuTime()}
}

func (c *cpuTimer) report(b *testing.B) {
	b.ReportMetric(float64(cpuTime()-c.start)/float64(b.N), "cpu-ns/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStoredObjects10k is what the informers' caches and the tracker
// hold for 10,000 services of 10 endpoints: the objects as toStored leaves
// them, fed to a tracker as the informers' handlers do, measured as the
// heap they keep alive (retained-MB), which doubles at the garbage
// collector's default target into the daemon's peak.
func BenchmarkStoredObjects10k(b *testing.B) {
	var retained float64
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		tr := NewTracker(zap.NewNop(), time.Now)
		kept := make([]any, 0, 20000)
		for i := range 10000 {
			name := fmt.Sprintf("svc-%d", i)
			svc, _ := toStored(pt.Service("ns", name, []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)}, pt.Port("http", "TCP", 80)))
			es, _ := toStored(benchSlice(name, i, 10, 0))
			s, e := svc.(*storedService), es.(*storedSlice)
			tr.upsertService(ServiceName{Namespace: s.Namespace, Name: s.Name}, s.parsed, s.err)
			tr.upsertSlice(sliceKey{e.Namespace, e.Name}, e.parsed, e.dropped, e.err)
			kept = append(kept, svc, es)
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		retained = float64(after.HeapAlloc-before.HeapAlloc) / 1e6
		runtime.KeepAlive(kept)
		runtime.KeepAlive(tr)
	}
	b.ReportMetric(retained, "retained-MB")
}
