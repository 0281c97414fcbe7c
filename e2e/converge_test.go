package e2e

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// A long run of random changes, each applied by a partial sync, carries
// traffic where it should after every step, and leaves the kernel exactly
// as a full sync of the final state writes it: nothing stale, nothing
// missing in any shared chain.
func TestPartialSyncsConverge(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		c := newCluster(t, s, 5)
		c.Outside().Timeout = defaultTimeout()
		rng := rand.New(rand.NewPCG(7, uint64(len(s.String())))) // reproducible per setup
		world := make([]serviceState, 5)
		for i := range world {
			world[i] = serviceState{index: i, exists: true, endpoints: map[int]bool{1 + i%4: true}}
			world[i].apply(c)
		}
		c.sync()

		const steps = 30
		for step := range steps {
			s := &world[rng.IntN(len(world))]
			what := s.change(rng)
			s.apply(c)
			expectPartial(t, c.sync())
			for i := range world {
				world[i].check(t, c, fmt.Sprintf("step %d (%s)", step, what), &world[i] == s)
			}
			if t.Failed() {
				t.Fatalf("stopping after step %d: %s", step, what)
			}
		}

		partial := savedRules(t, c)
		c.restart()
		if full := savedRules(t, c); !slices.Equal(partial, full) {
			t.Errorf("%d partial syncs left rules a full sync does not write:\n%s", steps, lineDiff(partial, full))
		}
	})
}

// serviceState is one service of the random run as the API holds it.
type serviceState struct {
	index     int
	exists    bool
	endpoints map[int]bool // pod index -> the endpoint is on this node
	nodePort  bool
	lb        bool
	ranges    bool // loadBalancerSourceRanges admit only the outside client
	local     bool // externalTrafficPolicy Local
	affinity  bool
}

func (s *serviceState) name() string      { return fmt.Sprintf("svc-%d", s.index) }
func (s *serviceState) clusterIP() string { return fmt.Sprintf("10.96.1.%d", 10+s.index) }
func (s *serviceState) lbIP() string      { return fmt.Sprintf("203.0.113.%d", 100+s.index) }
func (s *serviceState) nodePorts() [2]uint16 {
	return [2]uint16{uint16(30200 + s.index), uint16(30300 + s.index)}
}

// change makes one random change and says what it was.
func (s *serviceState) change(rng *rand.Rand) string {
	switch rng.IntN(8) {
	case 0:
		s.exists = !s.exists
		return fmt.Sprintf("%s exists=%v", s.name(), s.exists)
	case 1:
		s.nodePort = !s.nodePort
		return fmt.Sprintf("%s nodePort=%v", s.name(), s.nodePort)
	case 2:
		s.lb = !s.lb
		return fmt.Sprintf("%s loadBalancer=%v", s.name(), s.lb)
	case 3:
		s.ranges = !s.ranges
		return fmt.Sprintf("%s sourceRanges=%v", s.name(), s.ranges)
	case 4:
		s.local = !s.local
		return fmt.Sprintf("%s externalTrafficPolicy Local=%v", s.name(), s.local)
	case 5:
		s.affinity = !s.affinity
		return fmt.Sprintf("%s affinity=%v", s.name(), s.affinity)
	}
	s.endpoints = map[int]bool{}
	for pod := 1; pod <= 4; pod++ {
		if rng.IntN(2) == 0 {
			s.endpoints[pod] = rng.IntN(3) > 0
		}
	}
	return fmt.Sprintf("%s endpoints=%v", s.name(), s.endpoints)
}

// apply writes the state to the API: the Service and its slice.
func (s *serviceState) apply(c *cluster) {
	if !s.exists {
		c.deleteService(s.name())
		return
	}
	var opts []proxiertest.ServiceOption
	if s.nodePort {
		np := s.nodePorts()
		opts = append(opts, nodePorts(int32(np[0]), int32(np[1])))
	}
	if s.lb {
		opts = append(opts, proxiertest.LoadBalancer(s.lbIP()))
		if s.ranges {
			opts = append(opts, proxiertest.SourceRanges(c.Outside().IPv4().String()+"/32"))
		}
	}
	if s.local {
		opts = append(opts, func(svc *v1.Service) { svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal })
	}
	if s.affinity {
		opts = append(opts, proxiertest.Affinity(0))
	}
	c.upsertService(service(s.name(), []string{s.clusterIP()}, opts...))
	var eps []proxiertest.Endpoint
	for pod, onNode := range s.endpoints {
		if onNode {
			eps = append(eps, local(c.Pod(pod)))
		} else {
			eps = append(eps, remote(c.Pod(pod)))
		}
	}
	c.upsertSlice(endpoints(s.name(), eps...))
}

// check sends traffic to each of the service's addresses and wants what
// the state calls for. A deleted service is only checked in the step that
// deleted it (each check costs a timeout); rules it might leave behind
// show up in the final comparison.
func (s *serviceState) check(t *testing.T, c *cluster, when string, changed bool) {
	t.Helper()
	all, onNode := s.servers(false), s.servers(true)
	clusterIP := mustAddr(s.clusterIP())
	if !s.exists {
		if changed {
			expectOutcome(t, when, c.Pod(0), "tcp", at(clusterIP, svcTCP), nil, netip.Addr{}, errUnserved)
		}
		return
	}
	expectOutcome(t, when, c.Pod(0), "tcp", at(clusterIP, svcTCP), all, c.Pod(0).IPv4(), netnstest.ErrRefused)
	expectOutcome(t, when, c.Pod(0), "udp", at(clusterIP, svcUDP), all, c.Pod(0).IPv4(), netnstest.ErrRefused)

	// External traffic: masqueraded to any endpoint, or under the Local
	// policy kept to this node's with its source, dropped if there are
	// endpoints but none here.
	external, source, empty := all, c.PodGateway(clusterIP), netnstest.ErrRefused
	if s.local {
		external, source = onNode, c.Outside().IPv4()
		if len(all) > 0 {
			empty = netnstest.ErrTimeout
		}
	}
	if s.nodePort {
		np := s.nodePorts()
		expectOutcome(t, when, c.Outside(), "tcp", at(c.Node().IPv4(), np[0]), external, source, empty)
		expectOutcome(t, when, c.Outside(), "udp", at(c.Node().IPv4(), np[1]), external, source, empty)
	}
	if s.lb {
		expectOutcome(t, when, c.Outside(), "tcp", at(mustAddr(s.lbIP()), svcTCP), external, source, empty)
	}
}

// servers names the pods answering for the service's endpoints, all or
// only those on this node.
func (s *serviceState) servers(onNodeOnly bool) []string {
	var names []string
	for pod, onNode := range s.endpoints {
		if onNode || !onNodeOnly {
			names = append(names, fmt.Sprintf("pod-%d", pod))
		}
	}
	slices.Sort(names)
	return names
}

// expectOutcome dials dst: with servers given, twice, and each dial must
// be answered by one of them, seeing source; with none, once, and it must
// fail with the class empty. Answers take a millisecond or two here, so a
// drop is called after 100ms: a slow machine can only make more of them.
func expectOutcome(t *testing.T, when string, client *netnstest.NS, network string, dst netip.AddrPort, servers []string, source netip.Addr, empty error) {
	t.Helper()
	timeout := client.Timeout
	defer func() { client.Timeout = timeout }()
	dials := 2
	if len(servers) == 0 {
		dials = 1
		if errors.Is(empty, netnstest.ErrTimeout) || empty == errUnserved {
			client.Timeout = 100 * time.Millisecond
		}
	}
	for range dials {
		got, err := client.Dial(network, dst)
		switch {
		case len(servers) == 0 && !failedAs(err, empty):
			t.Errorf("%s: %s %s to %s: %v, %v; want %v", when, client.Name, network, dst, got, err, empty)
		case len(servers) > 0 && err != nil:
			t.Errorf("%s: %s %s to %s: %v; want one of %v", when, client.Name, network, dst, err, servers)
		case len(servers) > 0 && (!slices.Contains(servers, got.Server) || got.Source.Addr() != source):
			t.Errorf("%s: %s %s to %s: answered %v; want one of %v from %s", when, client.Name, network, dst, got, servers, source)
		}
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// savedRules returns both families' tables as iptables-save shows them,
// one sorted line each, without comments and counters (chain order in the
// output depends on how chains were created, rule order within a chain
// does not change), and in the IPVS mode the IPVS state too.
func savedRules(t *testing.T, c *cluster) []string {
	t.Helper()
	var lines []string
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		saved, err := c.save(family)
		if err != nil {
			t.Fatal(err)
		}
		if c.setup.ipvs() {
			saved += c.ipvsState(family).Dump()
		}
		for _, line := range strings.Split(saved, "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				lines = append(lines, family.String()+" "+counters.ReplaceAllString(line, "[0:0]"))
			}
		}
	}
	slices.Sort(lines)
	return lines
}

// lineDiff shows the lines only one of two sorted lists has.
func lineDiff(got, want []string) string {
	var b strings.Builder
	for _, l := range got {
		if _, found := slices.BinarySearch(want, l); !found {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range want {
		if _, found := slices.BinarySearch(got, l); !found {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}
