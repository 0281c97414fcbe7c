// Package bench builds synthetic cluster workloads and measures how long
// svcproxy takes to turn them into kernel rules.
package bench

import (
	"fmt"
	"net/netip"

	"github.com/svcproxy/svcproxy/proxier/proxiertest"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Workload is a set of ClusterIP services, each with one slice of ready
// endpoints spread over Nodes nodes (one of which is the benchmarked node).
type Workload struct {
	Services  int
	Endpoints int // per service
	Nodes     int
}

// NodeName is the name of the node the benchmark programs.
const NodeName = "node-0"

// ServiceName returns the name of service i.
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// ClusterIP returns the ClusterIP of service i: 10.96.0.0/12 holds a million.
func ClusterIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})
}

// EndpointIP returns endpoint j of service i; generation shifts every
// address, so a changed endpoint never collides with an old one.
func EndpointIP(i, j, generation int) netip.Addr {
	n := (i*64+j)*4 + generation%4 // 64 endpoints a service at most
	return netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)})
}

// Service returns service i.
func (w Workload) Service(i int) *v1.Service {
	return proxiertest.Service("bench", ServiceName(i), []string{ClusterIP(i).String()},
		proxiertest.Port("http", "TCP", 80))
}

// Slice returns the EndpointSlice of service i at a generation: a
// generation other than 0 replaces one endpoint, the first (every
// generation differs from 0, and from the one before it).
func (w Workload) Slice(i, generation int) *discoveryv1.EndpointSlice {
	eps := make([]proxiertest.Endpoint, w.Endpoints)
	for j := range eps {
		node := fmt.Sprintf("node-%d", (i+j)%w.Nodes)
		gen := 0
		if j == 0 && generation > 0 {
			gen = 1 + (generation-1)%3
		}
		eps[j] = proxiertest.Ready(EndpointIP(i, j, gen).String(), node)
	}
	return proxiertest.Slice("bench", ServiceName(i)+"-abcde", ServiceName(i),
		proxiertest.SlicePort("http", "TCP", 8080), proxiertest.Endpoints(eps...))
}
