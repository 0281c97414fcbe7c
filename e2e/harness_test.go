// Package e2e proves svcproxy's modes in a real kernel: real Services and
// EndpointSlices go through the Tracker, Compute, the mode's backend and
// the conntrack cleaner into a node network namespace, and real TCP and
// UDP connections from pods, the node and an outside client show which
// backend answered and the source address it saw. Every test runs under
// iptables-nft and iptables-legacy, in namespaces of its own; on this
// machine's kernel in iptables mode, and with -svcproxy.mode=ipvs in the
// VM of e2e/vm, whose kernel has IPVS.
package e2e

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/internal/app"
	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// The node svcproxy runs on, and a name for "some other node" whose
// endpoints are still reachable pods of the bed.
const (
	nodeName  = "node-a"
	otherNode = "node-b"
	namespace = "default"
)

// The ports every test pod serves and every test service exposes.
const (
	podTCP = 8080
	podUDP = 5353
	svcTCP = 80
	svcUDP = 53
)

// shortTimeout bounds dials that are meant to be dropped: answers in the
// bed come back in a millisecond or two.
const shortTimeout = 400 * time.Millisecond

// clusterCIDRs are the bed's pod ranges: traffic from inside them keeps its
// source on the way to a ClusterIP.
func clusterCIDRs() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/64")}
}

// modeFlag is the mode the suite tests; the IPVS mode needs a kernel with
// IPVS and the dummy driver, which e2e/vm boots.
var modeFlag = flag.String("svcproxy.mode", "iptables", "the proxy mode under test: iptables, or ipvs (in a kernel with IPVS: see e2e/vm)")

// timeScale stretches the waits that bound how soon svcproxy must react
// (a repair, a drain): the VM of e2e/vm emulates its CPU and runs 5-10
// times slower than this machine.
var timeScale = flag.Int("svcproxy.time-scale", 1, "stretch the suite's reaction bounds by this factor (the emulated VM is slower)")

// flavorsFlag are the iptables flavors every test runs under: both by
// default; e2e/vm runs the IPVS mode's whole suite under one and a part of
// it under the other, to keep the emulated VM's time in bounds.
var flavorsFlag = flag.String("svcproxy.flavors", "nft,legacy", "comma-separated iptables flavors each test runs under")

// flavors parses -svcproxy.flavors; a bad value fails the test that asks.
func flavors(t *testing.T) []netfilter.Flavor {
	t.Helper()
	var out []netfilter.Flavor
	for _, s := range strings.Split(*flavorsFlag, ",") {
		f, err := netfilter.ParseFlavor(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("-svcproxy.flavors: %v", err)
		}
		out = append(out, f)
	}
	return out
}

// scaled is d stretched by -svcproxy.time-scale.
func scaled(d time.Duration) time.Duration { return d * time.Duration(max(1, *timeScale)) }

// defaultTimeout bounds a dial that is meant to be answered.
func defaultTimeout() time.Duration { return scaled(netnstest.DefaultTimeout) }

// setup is one way of running svcproxy that every test runs under: the
// mode under test with each iptables flavor.
type setup struct {
	mode   string
	flavor netfilter.Flavor
}

func (s setup) String() string { return s.mode + "/" + string(s.flavor) }

func (s setup) ipvs() bool { return s.mode == "ipvs" }

func forEachSetup(t *testing.T, test func(t *testing.T, s setup)) {
	for _, flavor := range flavors(t) {
		s := setup{mode: *modeFlag, flavor: flavor}
		t.Run(string(flavor), func(t *testing.T) {
			if s.ipvs() {
				requireIPVS(t)
			}
			test(t, s)
		})
	}
}

// requireIPVS fails a test of the IPVS mode on a kernel without it: the
// suite is only ever asked for that mode where the kernel has it.
func requireIPVS(t *testing.T) {
	t.Helper()
	if err := ipvs.CheckSupport(ipvs.DefaultScheduler); err != nil {
		t.Fatalf("-svcproxy.mode=ipvs on a kernel without it: %v", err)
	}
}

// onlyIPVS runs an IPVS-specific test only in the IPVS run of the suite.
func onlyIPVS(t *testing.T) {
	t.Helper()
	if *modeFlag != "ipvs" {
		t.Skip("an IPVS-mode test; e2e/vm runs it with -svcproxy.mode=ipvs")
	}
}

// option changes how a cluster's svcproxy is configured.
type option func(*settings)

type settings struct {
	cfg          netfilter.Config
	zone         string
	drainTimeout time.Duration // IPVS mode; 0: the default
	// podTraffic, if set, sets how the rules tell pods, from the Node.
	podTraffic func(model.NodeInfo)
}

// masqueradeAll is --masquerade-all.
func masqueradeAll() option { return func(s *settings) { s.cfg.MasqueradeAll = true } }

// detectLocal tells pods as svcproxy does when started with args (its
// --detect-local-mode flags), for the bed's node, without a cluster CIDR.
func detectLocal(t *testing.T, args ...string) option {
	opts, err := app.Parse(args, nil)
	if err != nil {
		t.Fatal(err)
	}
	return func(s *settings) {
		s.podTraffic = func(node model.NodeInfo) {
			s.cfg.ClusterCIDRs, s.cfg.PodInterface = app.PodTraffic(opts.Config, node, zaptest.NewLogger(t))
		}
	}
}

// noLocalhostNodePorts is --iptables-localhost-nodeports=false.
func noLocalhostNodePorts() option { return func(s *settings) { s.cfg.LocalhostNodePorts = false } }

// drainAfter bounds how long the IPVS mode's real servers drain.
func drainAfter(d time.Duration) option { return func(s *settings) { s.drainTimeout = d } }

// inZone puts the node in a topology zone.
func inZone(zone string) option { return func(s *settings) { s.zone = zone } }

// cluster is a test bed whose node runs svcproxy, and the API objects it
// watches. The objects are kept so that a restarted svcproxy can be fed
// them again, as its informers would.
type cluster struct {
	*netnstest.Bed
	t        *testing.T
	setup    setup
	flavor   netfilter.Flavor
	settings settings
	flows    *conntrack.Kernel
	proc     *process

	// The API's objects, all in one namespace, by name.
	services map[string]*v1.Service
	slices   map[string]*discoveryv1.EndpointSlice
}

// process is one svcproxy process's state: what a restart throws away.
type process struct {
	tracker  *proxier.Tracker
	syncer   *proxier.Syncer
	backends []proxier.Backend

	mu      sync.Mutex // reports are appended by the runner's goroutine
	reports []*proxier.SyncReport
}

func (p *process) record(r *proxier.SyncReport) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reports = append(p.reports, r)
}

// reportsSince returns the reports of the syncs that started at or after t.
func (p *process) reportsSince(t time.Time) []*proxier.SyncReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.IndexFunc(p.reports, func(r *proxier.SyncReport) bool { return !r.Start.Before(t) })
	if i < 0 {
		return nil
	}
	return slices.Clone(p.reports[i:])
}

// newCluster builds a bed with pods serving TCP podTCP and UDP podUDP, and
// starts svcproxy for both families on its node. Everything svcproxy
// programmed is removed, and checked to be gone, when the test ends.
func newCluster(t *testing.T, s setup, pods int, opts ...option) *cluster {
	t.Helper()
	c := &cluster{
		Bed:      netnstest.NewBed(t, pods),
		t:        t,
		setup:    s,
		flavor:   s.flavor,
		settings: settings{cfg: netfilter.Config{ClusterCIDRs: clusterCIDRs(), LocalhostNodePorts: true}}, // the daemon's default
		services: map[string]*v1.Service{},
		slices:   map[string]*discoveryv1.EndpointSlice{},
	}
	// As the daemon does, from the Node's addresses.
	c.settings.cfg.NodeIPs = c.nodeInfo().Addresses
	for _, o := range opts {
		o(&c.settings)
	}
	if c.settings.podTraffic != nil {
		c.settings.podTraffic(c.nodeInfo())
	}
	// As the daemon does in iptables mode for node ports on localhost: in
	// the node's network namespace, never the host's.
	if !s.ipvs() && c.settings.cfg.LocalhostNodePorts {
		if err := c.Node().Sysctl("net.ipv4.conf.all.route_localnet", "1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range append([]*netnstest.NS{c.Node(), c.Outside()}, c.Pods()...) {
		ns.Timeout = defaultTimeout()
	}
	for _, pod := range c.Pods() {
		pod.ServeTCP(podTCP)
		pod.ServeUDP(podUDP)
	}
	flows, err := conntrack.Open(c.Node().Handle())
	if err != nil {
		t.Fatal(err)
	}
	c.flows = flows
	c.proc = c.start()
	t.Cleanup(c.cleanup)
	return c
}

// nodeInfo is what the Node object says of the bed's node.
func (c *cluster) nodeInfo() model.NodeInfo {
	return model.NodeInfo{
		Name:      nodeName,
		Zone:      c.settings.zone,
		Addresses: []netip.Addr{c.Node().IPv4(), c.Node().IPv6()},
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:244::/64")},
	}
}

// start makes a fresh svcproxy process and feeds it every object the API
// holds; it has not synced yet.
func (c *cluster) start() *process {
	c.t.Helper()
	log := zaptest.NewLogger(c.t, zaptest.Level(zap.WarnLevel))
	p := &process{tracker: proxier.NewTracker(log, time.Now)}
	var backends []proxier.Backend
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		backends = append(backends, c.backend(family))
	}
	p.backends = backends
	p.syncer = proxier.NewSyncer(p.tracker, backends, conntrack.Cleaner{Table: c.flows}, clock.RealClock{}, log)
	p.syncer.Observe(p.record)
	p.tracker.SetNode(c.nodeInfo())
	for _, svc := range c.services {
		p.tracker.UpsertService(svc)
	}
	for _, es := range c.slices {
		p.tracker.UpsertEndpointSlice(es)
	}
	return p
}

// backend makes the backend of the mode under test for a family.
func (c *cluster) backend(family model.Family) proxier.Backend {
	c.t.Helper()
	var b proxier.Backend
	var err error
	if c.setup.ipvs() {
		b, err = ipvs.New(c.ipvsConfig(), family, c.flavor)
	} else {
		b, err = iptables.New(c.settings.cfg, family, c.flavor)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

// ipvsConfig is the IPVS mode's configuration in the bed: kube-proxy's
// defaults, with the drain bound the cluster's settings give.
func (c *cluster) ipvsConfig() ipvs.Config {
	fixed, err := ipvs.ConnReuseFixed()
	if err != nil {
		c.t.Fatal(err)
	}
	return ipvs.Config{Rules: c.settings.cfg, ConnReuseFixed: fixed, DrainTimeout: c.settings.drainTimeout}
}

// restart replaces the svcproxy process by a new one, which knows nothing
// of what the old one programmed, and lets it do its first (full) sync.
func (c *cluster) restart() {
	c.t.Helper()
	c.proc = c.start()
	c.sync()
}

// upsertService creates or updates a Service in the API.
func (c *cluster) upsertService(svc *v1.Service) {
	c.services[svc.Name] = svc
	c.proc.tracker.UpsertService(svc)
}

func (c *cluster) deleteService(name string) {
	delete(c.services, name)
	c.proc.tracker.DeleteService(namespace, name)
}

// deleteWhileDown deletes a service and its slices from the API without
// telling svcproxy, as if it happened while svcproxy was not running.
func (c *cluster) deleteWhileDown(name string) {
	delete(c.services, name)
	for sliceName, es := range c.slices {
		if es.Labels[discoveryv1.LabelServiceName] == name {
			delete(c.slices, sliceName)
		}
	}
}

// upsertSlice creates or updates an EndpointSlice in the API.
func (c *cluster) upsertSlice(es *discoveryv1.EndpointSlice) {
	c.slices[es.Name] = es
	c.proc.tracker.UpsertEndpointSlice(es)
}

func (c *cluster) deleteSlice(name string) {
	delete(c.slices, name)
	c.proc.tracker.DeleteEndpointSlice(namespace, name)
}

// sync runs one sync inside the node namespace, as the runner would after
// changes; it is full only for a process's first sync.
func (c *cluster) sync() *proxier.SyncReport {
	c.t.Helper()
	start := time.Now()
	err := c.Node().Do(func() error {
		_, err := c.proc.syncer.Sync(context.Background(), false)
		return err
	})
	if err != nil {
		c.t.Fatalf("sync: %v", err)
	}
	return c.proc.reportsSince(start)[0]
}

// packetCounts sums what the backends' counting rules have counted (the
// metrics' nfacct-style counters), read in the node's namespace.
func (c *cluster) packetCounts() model.PacketCounts {
	c.t.Helper()
	var sum model.PacketCounts
	err := c.Node().Do(func() error {
		for _, b := range c.proc.backends {
			if pc, ok := b.(proxier.PacketCounter); ok {
				n, err := pc.PacketCounts(context.Background())
				if err != nil {
					return err
				}
				sum.InvalidDropped += n.InvalidDropped
				sum.LocalhostNodePortsAccepted += n.LocalhostNodePortsAccepted
			}
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("reading the packet counters: %v", err)
	}
	return sum
}

// run starts the real Runner (real clock) in the node namespace and
// returns a function that stops it and waits for it. The test must not
// call sync while it runs: the runner owns the syncer.
func (c *cluster) run(cfg proxier.RunnerConfig) (stop func()) {
	log := zaptest.NewLogger(c.t, zaptest.Level(zap.WarnLevel))
	inNode := func(ctx context.Context, full bool) (recheck time.Duration, err error) {
		// Stopping lets a sync in progress finish: killing iptables-restore
		// after its commit would log a failure that is not one.
		ctx = context.WithoutCancel(ctx)
		err = c.Node().Do(func() (err error) {
			recheck, err = c.proc.syncer.Sync(ctx, full)
			return err
		})
		return recheck, err
	}
	intact := func(ctx context.Context) bool {
		var ok bool
		_ = c.Node().Do(func() error { ok = c.proc.syncer.Intact(ctx); return nil })
		return ok
	}
	r := proxier.NewRunner(cfg, clock.RealClock{}, inNode, intact, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, c.proc.tracker.Changed())
	}()
	// Stopped before the test ends in any case: a runner logging after
	// that would panic the test binary.
	stop = sync.OnceFunc(func() {
		cancel()
		<-done
	})
	c.t.Cleanup(stop)
	return stop
}

// iptables runs the flavor's iptables binary of a family in the node
// namespace, as another program on the node would.
func (c *cluster) iptables(family model.Family, args ...string) string {
	c.t.Helper()
	return c.Node().MustRun(c.flavor.Binary(family, ""), args...)
}

// save returns both tables of a family as iptables-save shows them.
func (c *cluster) save(family model.Family) (string, error) {
	var b strings.Builder
	for _, table := range []string{"nat", "filter"} {
		out, err := c.Node().Run(c.flavor.Binary(family, "-save"), "-t", table)
		if err != nil {
			return "", err
		}
		b.WriteString(out)
	}
	return b.String(), nil
}

// cleanup removes what svcproxy programmed, as `svcproxy --cleanup` would,
// and checks that nothing of it is left; the bed then removes the
// namespaces themselves.
func (c *cluster) cleanup() {
	defer c.flows.Close()
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		b := c.backend(family)
		if err := c.Node().Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
			c.t.Errorf("cleanup %v: %v", family, err)
		}
		saved, err := c.save(family)
		if err != nil {
			c.t.Error(err)
			continue
		}
		if strings.Contains(saved, netfilter.ChainPrefix) {
			c.t.Errorf("%v rules left after cleanup:\n%s", family, saved)
		}
		if c.setup.ipvs() {
			if left := c.ipvsState(family); !left.Empty() {
				c.t.Errorf("%v IPVS state left after cleanup:\n%s", family, left.Dump())
			}
		}
	}
}

// ipvsState is the node's IPVS-mode state of one family, as svcproxy's
// kernel seam reads it: virtual servers (with their real servers),
// kube-ipvs0's addresses and svcproxy's sets.
func (c *cluster) ipvsState(family model.Family) *ipvs.State {
	c.t.Helper()
	var s *ipvs.State
	err := c.Node().Do(func() error {
		k, err := ipvs.OpenKernel()
		if err != nil {
			return err
		}
		defer k.Close()
		s, err = ipvs.Read(k, family)
		return err
	})
	if err != nil {
		c.t.Fatalf("reading the IPVS state: %v", err)
	}
	return s
}

// Builders of the tests' Services and EndpointSlices.

// service is a Service with a TCP port "http" (svcTCP) and a UDP port
// "dns" (svcUDP), one ClusterIP per family given.
func service(name string, clusterIPs []string, opts ...proxiertest.ServiceOption) *v1.Service {
	ports := []proxiertest.ServiceOption{proxiertest.Port("http", "TCP", svcTCP), proxiertest.Port("dns", "UDP", svcUDP)}
	return proxiertest.Service(namespace, name, clusterIPs, append(ports, opts...)...)
}

// nodePorts gives a service's two ports node ports tcp and udp.
func nodePorts(tcp, udp int32) proxiertest.ServiceOption {
	return func(s *v1.Service) {
		proxiertest.NodePort("http", tcp)(s)
		proxiertest.NodePort("dns", udp)(s)
	}
}

// endpoints is the EndpointSlice of a service, named after it and the
// family of its first endpoint, with the pods' ports.
func endpoints(svc string, eps ...proxiertest.Endpoint) *discoveryv1.EndpointSlice {
	suffix := "-v4"
	if len(eps) > 0 && strings.Contains(eps[0].Addr, ":") {
		suffix = "-v6"
	}
	return endpointsNamed(svc+suffix, svc, eps...)
}

func endpointsNamed(slice, svc string, eps ...proxiertest.Endpoint) *discoveryv1.EndpointSlice {
	return proxiertest.Slice(namespace, slice, svc,
		proxiertest.SlicePort("http", "TCP", podTCP), proxiertest.SlicePort("dns", "UDP", podUDP),
		proxiertest.Endpoints(eps...))
}

// local is a ready endpoint of pod's IPv4 address on this node.
func local(pod *netnstest.NS) proxiertest.Endpoint {
	return proxiertest.Ready(pod.IPv4().String(), nodeName)
}

// remote is a ready endpoint on another node (still a pod of the bed, so
// traffic that is sent there arrives).
func remote(pod *netnstest.NS) proxiertest.Endpoint {
	return proxiertest.Ready(pod.IPv4().String(), otherNode)
}

func local6(pod *netnstest.NS) proxiertest.Endpoint {
	return proxiertest.Ready(pod.IPv6().String(), nodeName)
}

func remote6(pod *netnstest.NS) proxiertest.Endpoint {
	return proxiertest.Ready(pod.IPv6().String(), otherNode)
}

// Traffic checks.

func tcp(ip string) netip.AddrPort { return netip.AddrPortFrom(mustAddr(ip), svcTCP) }
func udp(ip string) netip.AddrPort { return netip.AddrPortFrom(mustAddr(ip), svcUDP) }

func at(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// expectReply dials dst once and wants server to answer, seeing source.
func expectReply(t *testing.T, client *netnstest.NS, network string, dst netip.AddrPort, server string, source netip.Addr) {
	t.Helper()
	got, err := client.Dial(network, dst)
	if err != nil {
		t.Errorf("%s %s to %s: %v; want %s from %s", client.Name, network, dst, err, server, source)
		return
	}
	if got.Server != server || got.Source.Addr() != source {
		t.Errorf("%s %s to %s: answered %q; want %s from %s", client.Name, network, dst, got, server, source)
	}
}

// expectFailure dials dst once and wants the given class of failure
// (netnstest.ErrRefused, ErrTimeout, ..., or errUnserved).
func expectFailure(t *testing.T, client *netnstest.NS, network string, dst netip.AddrPort, class error) {
	t.Helper()
	got, err := client.Dial(network, dst)
	if !failedAs(err, class) {
		t.Errorf("%s %s to %s: got %v, %v; want %v", client.Name, network, dst, got, err, class)
	}
}

// errUnserved is the failure of traffic to an address no service has: the
// node routes it on like any other, and in the bed it goes nowhere. The
// outside client, which does not forward, drops it silently or answers
// host unreachable, depending on the kernel.
var errUnserved = errors.New("unserved (a timeout or host unreachable)")

func failedAs(err, class error) bool {
	if class == errUnserved {
		return errors.Is(err, netnstest.ErrTimeout) || errors.Is(err, netnstest.ErrUnreachable)
	}
	return errors.Is(err, class)
}

// tally is how many of a run of connections each server answered, and
// every source address the servers saw.
type tally struct {
	dials   int
	servers map[string]int
	sources map[netip.Addr]bool
}

// answers makes n connections to dst and counts who answered; every one
// must be answered.
func answers(t *testing.T, client *netnstest.NS, network string, dst netip.AddrPort, n int) tally {
	t.Helper()
	got := tally{dials: n, servers: map[string]int{}, sources: map[netip.Addr]bool{}}
	for range n {
		r, err := client.Dial(network, dst)
		if err != nil {
			t.Errorf("%s %s to %s: %v", client.Name, network, dst, err)
			return got
		}
		got.servers[r.Server]++
		got.sources[r.Source.Addr()] = true
	}
	return got
}

// names lists the servers that answered, sorted.
func (ty tally) names() []string {
	var s []string
	for name := range ty.servers {
		s = append(s, name)
	}
	slices.Sort(s)
	return s
}

func (ty tally) String() string {
	var parts []string
	for _, name := range ty.names() {
		parts = append(parts, fmt.Sprintf("%s×%d", name, ty.servers[name]))
	}
	return strings.Join(parts, " ")
}

// expectServers dials dst n times and wants exactly the named servers to
// answer (each at least once), all seeing source.
func expectServers(t *testing.T, client *netnstest.NS, network string, dst netip.AddrPort, n int, source netip.Addr, servers ...string) {
	t.Helper()
	got := answers(t, client, network, dst, n)
	slices.Sort(servers)
	if !slices.Equal(got.names(), servers) {
		t.Errorf("%s %s to %s, %d times: answered by %s; want each of %v", client.Name, network, dst, n, got, servers)
	}
	for src := range got.sources {
		if src != source {
			t.Errorf("%s %s to %s: a server saw source %s; want %s", client.Name, network, dst, src, source)
		}
	}
}

// names of pods as their servers answer.
func podNames(pods ...*netnstest.NS) []string {
	var s []string
	for _, p := range pods {
		s = append(s, p.Name)
	}
	return s
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// serveLines answers every line sent on a connection to port with one
// reply line, keeping the connection open: the long-lived connection that
// a restart of svcproxy must not break.
func serveLines(t *testing.T, ns *netnstest.NS, port uint16) {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("%s: serving lines on %d: %v", ns.Name, port, err)
	}
	var (
		mu       sync.Mutex
		conns    []net.Conn
		accepts  sync.WaitGroup
		handlers sync.WaitGroup
	)
	accepts.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // closed at the end of the test
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			handlers.Go(func() { answerLines(ns.Name, conn) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		accepts.Wait()
		mu.Lock()
		for _, conn := range conns {
			_ = conn.Close()
		}
		mu.Unlock()
		handlers.Wait()
	})
}

func answerLines(server string, conn net.Conn) {
	client, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return
	}
	reply := netnstest.Reply{Server: server, Source: netip.AddrPortFrom(client.Addr().Unmap(), client.Port())}
	lines := bufio.NewScanner(conn)
	for lines.Scan() {
		if _, err := fmt.Fprintln(conn, reply); err != nil {
			return
		}
	}
}

// lineConn is a long-lived connection to a serveLines server.
type lineConn struct {
	conn    net.Conn
	replies *bufio.Reader
}

// dialLines connects from client to dst; the connection is closed when the
// test ends.
func dialLines(t *testing.T, client *netnstest.NS, dst netip.AddrPort) *lineConn {
	t.Helper()
	var conn net.Conn
	err := client.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", dst.String(), client.Timeout)
		return err
	})
	if err != nil {
		t.Fatalf("%s: connecting to %s: %v", client.Name, dst, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &lineConn{conn: conn, replies: bufio.NewReader(conn)}
}

// ask sends a line and reads the reply.
func (l *lineConn) ask() (netnstest.Reply, error) {
	_ = l.conn.SetDeadline(time.Now().Add(defaultTimeout()))
	if _, err := fmt.Fprintln(l.conn, "?"); err != nil {
		return netnstest.Reply{}, err
	}
	line, err := l.replies.ReadString('\n')
	if err != nil {
		return netnstest.Reply{}, err
	}
	return netnstest.ParseReply(line)
}
