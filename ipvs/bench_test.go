package ipvs_test

import (
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
)

// BenchmarkCompileFull10k compiles the full plan of 10k services with 10
// endpoints each: every virtual server, address, set entry and rule.
func BenchmarkCompileFull10k(b *testing.B) {
	benchCompile(b, mt.BigView(10_000, 10), nil)
}

// BenchmarkCompileOneEndpoint10k compiles the partial plan of one
// endpoint changing among 10k services.
func BenchmarkCompileOneEndpoint10k(b *testing.B) {
	prev := mt.BigView(10_000, 10)
	name := prev.SortedNames()[4321]
	changed := *prev.Services[name]
	changed.ClusterEndpoints = append(changed.ClusterEndpoints[1:len(changed.ClusterEndpoints):len(changed.ClusterEndpoints)],
		model.Endpoint{Addr: netip.MustParseAddrPort("10.200.0.1:8080"), Ready: true, Serving: true})
	changed.Serving = changed.ClusterEndpoints
	benchCompile(b, mt.WithPort(prev, &changed), prev)
}

// BenchmarkCompileAddService10k compiles the partial plan of one service
// added to 10k.
func BenchmarkCompileAddService10k(b *testing.B) {
	prev := mt.BigView(10_000, 10)
	next := mt.WithPort(prev, mt.Port("bench", "new", "http", model.TCP, "10.100.1.1", 80, mt.NodePort(32700), mt.Eps("10.200.0.1:8080")))
	benchCompile(b, next, prev)
}

func benchCompile(b *testing.B, view, prev *model.NodeView) {
	b.ReportAllocs()
	var plan *ipvs.Plan
	for b.Loop() {
		plan = ipvs.Compile(testCfg, view, prev, nodeAddrs())
	}
	b.ReportMetric(float64(len(plan.Want.VirtualServers)), "virtual-servers")
	b.ReportMetric(float64(len(plan.Want.Entries)), "set-entries")
}

// BenchmarkResync10k is a full sync of 10k services onto a fake kernel
// that holds them already: the Go side of the periodic resync (compile,
// observe, diff), without the kernel's own cost.
func BenchmarkResync10k(b *testing.B) {
	view := mt.BigView(10_000, 10)
	bed := newBed(b, testCfg)
	bed.sync(view, nil)
	for b.Loop() {
		bed.sync(view, nil)
	}
}
