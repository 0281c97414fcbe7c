package iptables_test

import (
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// BenchmarkCompileFull10k compiles and renders the full plan of 10k
// services with 10 endpoints each.
func BenchmarkCompileFull10k(b *testing.B) {
	v := mt.BigView(10_000, 10)
	benchCompile(b, v, nil)
}

// BenchmarkCompileOneEndpoint10k compiles and renders the partial plan of
// one endpoint changing among 10k services with 10 endpoints each.
func BenchmarkCompileOneEndpoint10k(b *testing.B) {
	prev := mt.BigView(10_000, 10)
	name := prev.SortedNames()[4321]
	changed := *prev.Services[name]
	changed.ClusterEndpoints = append(changed.ClusterEndpoints[1:len(changed.ClusterEndpoints):len(changed.ClusterEndpoints)],
		model.Endpoint{Addr: netip.MustParseAddrPort("10.200.0.1:8080"), Ready: true, Serving: true})
	next := mt.WithPort(prev, &changed)
	benchCompile(b, next, prev)
}

// BenchmarkCompileAddService10k compiles the partial plan of one service
// added to 10k: the destination buckets are recomputed for both views.
func BenchmarkCompileAddService10k(b *testing.B) {
	prev := mt.BigView(10_000, 10)
	next := mt.WithPort(prev, mt.Port("bench", "new", "http", model.TCP, "10.100.1.1", 80, mt.NodePort(32700), mt.Eps("10.200.0.1:8080")))
	benchCompile(b, next, prev)
}

// benchCompile compiles and renders the plan from prev to view in a loop
// and reports its size: rendered bytes, chains and rules written.
func benchCompile(b *testing.B, view, prev *model.NodeView) {
	b.ReportAllocs()
	var plan *netfilter.Plan
	var rendered int
	for b.Loop() {
		plan = iptables.Compile(testCfg, view, prev)
		rendered = len(plan.Render(nil))
	}
	b.ReportMetric(float64(rendered), "rendered-bytes")
	b.ReportMetric(float64(len(plan.Write)), "chains")
	b.ReportMetric(float64(plan.Rules()), "rules")
}
