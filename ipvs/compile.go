package ipvs

import (
	"iter"
	"net/netip"
	"slices"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// What Compile makes of a service port, in one family:
//
//   - a virtual server on its ClusterIP when it has endpoints for ClusterIP
//     traffic, on each external IP and load-balancer IP, and on each node
//     address --nodeport-addresses admits for its node port, when outside
//     traffic has endpoints to go to; real servers of weight 1 for the
//     endpoints new connections go to, and of weight 0 for the other
//     serving endpoints (terminating, or left out by topology) the virtual
//     server could have sent traffic to, so that their flows go on;
//   - its ClusterIP, external IPs and LB IPs bound to kube-ipvs0 (but not
//     an address the node already has), and listed in SERVICE-IPS;
//   - its address and port in CLUSTER-IP, EXTERNAL (Cluster policy) or
//     EXTERNAL-LOCAL (Local policy), its node port in NODE-PORT-<proto> or
//     NODE-PORT-LOCAL-<proto>, and each admitted source range of a
//     restricted LB IP in LB-SOURCES.
//
// The iptables rules, nat:
//
//	SERVICES     mark for masquerade: ClusterIP traffic from outside the pod
//	             range (set CLUSTER-IP), external traffic under Cluster
//	             policy (EXTERNAL, NODE-PORT-*); then, per port under
//	             externalTrafficPolicy Local with endpoints elsewhere, send
//	             pods and the node itself (masqueraded) to the ClusterIP,
//	             which IPVS balances over the cluster's endpoints: only
//	             traffic from outside keeps to this node's endpoints
//	POSTROUTING  masquerade what is marked, after HAIRPIN marked pods that
//	             IPVS sent back to themselves
//
// filter (from INPUT, FORWARD and OUTPUT for new connections), FILTER:
// the rules both modes share (reject a port without endpoints, drop
// outside traffic with no local endpoint under Local policy, drop sources
// a restricted LB IP does not admit: here by LB-SOURCES; the node's own
// connections to it, which IPVS balances before the filter table sees
// them, by their virtual address), then reject
// anything else sent to an address of SERVICE-IPS: only a service's own
// ports answer on a service address, never a host port (k/k#72236).

// Config is what the IPVS mode's kernel state depends on besides the view
// and the node's addresses.
type Config struct {
	// Rules configures the iptables rules, as in the iptables mode.
	Rules netfilter.Config
	// Scheduler is the IPVS scheduler of every virtual server
	// (--ipvs-scheduler); "" means rr.
	Scheduler string
	// StrictARP sets arp_ignore=1 and arp_announce=2, so the node does
	// not answer ARP for the addresses of kube-ipvs0 (--ipvs-strict-arp).
	StrictARP bool
	// ConnReuseFixed: the kernel (5.9 and later) no longer stalls a
	// connection that reuses the port of one IPVS still remembers, so
	// conn_reuse_mode keeps its default (k/k#81775).
	ConnReuseFixed bool
	// Timeouts are IPVS's connection timeouts; zero fields are left alone.
	Timeouts Timeouts
	// ExcludeCIDRs hold virtual servers svcproxy never touches, whatever
	// their address (--ipvs-exclude-cidrs).
	ExcludeCIDRs []netip.Prefix
	// DrainTimeout bounds how long a TCP real server that left waits at
	// weight 0 for its connections to end; 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration
}

// DefaultScheduler is kube-proxy's.
const DefaultScheduler = "rr"

// DefaultDrainTimeout bounds graceful termination when Config does not:
// long enough for any request, short enough that a stuck connection does
// not keep a gone endpoint in the table for good.
const DefaultDrainTimeout = 15 * time.Minute

func (c Config) scheduler() string {
	if c.Scheduler == "" {
		return DefaultScheduler
	}
	return c.Scheduler
}

func (c Config) drainTimeout() time.Duration {
	if c.DrainTimeout <= 0 {
		return DefaultDrainTimeout
	}
	return c.DrainTimeout
}

// Plan is what one sync must do to one family's IPVS-mode kernel state.
type Plan struct {
	Family model.Family
	Full   bool
	// Want is the desired state: all of it in a full plan, in a partial
	// one only what changed since the previous view. A virtual server in
	// Want is wanted with exactly its real servers.
	Want *State
	// Remove lists what a partial plan must take away: objects the
	// previous view needed and this one does not. A full plan leaves it
	// empty; the applier finds the stale objects by looking.
	Remove *State
	// Before is, in a partial plan, what the previous view wanted of the
	// objects that changed: the settings the kernel holds for them.
	Before *State
	// Rules are the iptables chains to write, through netfilter.
	Rules *netfilter.Plan
}

// Compile turns a view into the plan that programs it, given the node's
// addresses of the view's family (node ports answer on those
// --nodeport-addresses admits). With prev nil the plan is full; with prev,
// the view of the last successful sync compiled with the same cfg and
// addresses, it holds only what differs. Compile is pure and deterministic.
func Compile(cfg Config, view, prev *model.NodeView, nodeAddrs []netip.Addr) *Plan {
	c := newCompiler(cfg, view.Family, nodeAddrs)
	if prev == nil || prev.Family != view.Family {
		return c.full(view)
	}
	return c.partial(view, prev)
}

// compiler is cfg resolved for one family and the node's addresses.
type compiler struct {
	cfg   Config
	rules *netfilter.Rules
	sets  setNames
	// nodePortAddrs are the node addresses node ports answer on, sorted.
	nodePortAddrs []netip.Addr
	// nodeAddrs are every node address: never bound to kube-ipvs0.
	nodeAddrs map[netip.Addr]bool
	shared    netfilter.Shared
}

func newCompiler(cfg Config, family model.Family, nodeAddrs []netip.Addr) *compiler {
	// As kube-proxy's IPVS mode, never on loopback: no route_localnet.
	cfg.Rules.LocalhostNodePorts = false
	c := &compiler{
		cfg:       cfg,
		rules:     netfilter.NewRules(cfg.Rules, family),
		sets:      newSetNames(family),
		nodeAddrs: map[netip.Addr]bool{},
	}
	for _, a := range nodeAddrs {
		if a.IsValid() && model.FamilyOf(a) == family {
			c.nodeAddrs[a] = true
		}
	}
	c.nodePortAddrs = NodePortAddrs(c.rules, nodeAddrs)
	c.shared = netfilter.Shared{
		Rules: c.rules,
		Filter: func(rp *netfilter.Port) []string {
			return append(c.rules.FilterRules(rp, "-m set ! --match-set "+c.sets.lbSources+" dst,dst,src "), c.nodeNotAdmitted(rp)...)
		},
		Hairpin:    hairpinAddrs,
		FilterTail: c.serviceIPFilter(),
		Balanced:   "-m ipvs --ipvs --vdir ORIGINAL",
	}
	return c
}

// NodePortAddrs are the node addresses of the rules' family node ports
// answer on, sorted: never loopback (a packet from loopback balanced to a
// pod cannot be routed back) or link-local, and only within
// --nodeport-addresses when it is set.
func NodePortAddrs(rules *netfilter.Rules, nodeAddrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range nodeAddrs {
		if !a.IsValid() || model.FamilyOf(a) != rules.Family || a.IsLoopback() || a.IsLinkLocalUnicast() || len(rules.NodePortDsts) == 0 {
			continue
		}
		if len(rules.NodePortPrefixes) == 0 || slices.ContainsFunc(rules.NodePortPrefixes, func(p netip.Prefix) bool { return p.Contains(a) }) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// full compiles everything of the view.
func (c *compiler) full(view *model.NodeView) *Plan {
	plan := c.newPlan(true)
	ports := sortedPorts(c.rules.ResolveAll(view))
	plan.Want = c.state(ports)
	plan.Rules.Write[netfilter.NatKey(netfilter.ChainServices)] = c.servicesRules(ports)
	c.shared.WriteAll(plan.Rules, ports)
	return plan
}

// fullWants is what a full plan of a view wants of the kernel, given port by
// port instead of gathered into a State: the integrity check compares it
// with the kernel's listings as it goes, and at 10,000 services a State of
// 120,000 objects held beside those listings set the daemon's peak heap.
type fullWants struct {
	Sysctls []Sysctl
	// Entries are the set members no port owns (the node's addresses).
	Entries []SetEntry
	// Ports yields each port's objects, in the order state adds them.
	Ports iter.Seq[portObjects]
}

// fullWantsOf is what Compile(cfg, view, nil, nodeAddrs).Want holds, as a
// fullWants.
func fullWantsOf(cfg Config, view *model.NodeView, nodeAddrs []netip.Addr) fullWants {
	c := newCompiler(cfg, view.Family, nodeAddrs)
	w := fullWants{Sysctls: c.sysctls()}
	for _, a := range c.nodePortAddrs {
		w.Entries = append(w.Entries, SetEntry{c.sets.nodeIPs, Entry{Addr: a}})
	}
	w.Ports = func(yield func(portObjects) bool) {
		for _, name := range view.SortedNames() {
			if rp := c.rules.Resolve(view.Services[name]); rp.Present() && !yield(c.objects(&rp)) {
				return
			}
		}
	}
	return w
}

func (c *compiler) newPlan(full bool) *Plan {
	f := c.rules.Family
	return &Plan{Family: f, Full: full, Want: NewState(f), Remove: NewState(f), Before: NewState(f), Rules: netfilter.NewPlan(f, full)}
}

// state is everything ports (sorted by name) want of the kernel. Where
// two ports claim one virtual server, the first owns it.
func (c *compiler) state(ports []netfilter.Port) *State {
	s := NewState(c.rules.Family)
	for i := range ports {
		c.objects(&ports[i]).addTo(s)
	}
	for _, set := range c.sets.all() {
		s.Sets[set.Name] = set
	}
	for _, a := range c.nodePortAddrs {
		s.Entries[SetEntry{c.sets.nodeIPs, Entry{Addr: a}}] = true
	}
	s.Sysctls = c.sysctls()
	return s
}

// partial compiles what the ports that changed since prev want of the
// kernel differently, and the chains they contribute differently to.
// Objects several ports may want (an address, a set entry, a virtual
// server two services claim) are removed only when no port of view still
// wants them: that check compiles the whole view, but only for a change
// that removes one.
func (c *compiler) partial(view, prev *model.NodeView) *Plan {
	plan := c.newPlan(false)
	before, after := plan.Before, NewState(c.rules.Family)
	contestable := map[VSKey]bool{}
	var shared netfilter.SharedChanges
	servicesChanged := false
	for _, name := range model.ChangedPorts(view, prev) {
		b, a := c.rules.Resolve(prev.Services[name]), c.rules.Resolve(view.Services[name])
		ob, oa := c.objects(&b), c.objects(&a)
		for _, o := range []portObjects{ob, oa} {
			for k := range o.external {
				contestable[k] = true
			}
		}
		ob.addTo(before)
		oa.addTo(after)
		c.shared.Note(&shared, &b, &a)
		servicesChanged = servicesChanged || !slices.Equal(c.localPolicyRules(&b), c.localPolicyRules(&a))
	}
	wanted := lazyState(func() *State { return c.state(sortedPorts(c.rules.ResolveAll(view))) })
	owners := lazyState(func() *State { return c.externalState(view) })
	c.diffVirtualServers(plan, before, after, contestable, wanted, owners)
	diffSet(before.Addresses, after.Addresses, plan.Want.Addresses, plan.Remove.Addresses, func(a netip.Addr) bool { return wanted().Addresses[a] })
	diffSet(before.Entries, after.Entries, plan.Want.Entries, plan.Remove.Entries, func(e SetEntry) bool { return wanted().Entries[e] })

	ports := c.rules.Views(view, prev)
	if servicesChanged {
		netfilter.DiffChain(plan.Rules, netfilter.NatKey(netfilter.ChainServices),
			c.servicesRules(sortedPorts(ports.Before())), c.servicesRules(sortedPorts(ports.After())))
	}
	c.shared.WriteChanged(plan.Rules, shared, ports.Before, ports.After)
	return plan
}

// diffVirtualServers puts in the plan the virtual servers of the changed
// ports that differ. Where two ports claim one external address and port,
// the first by name owns it, in a partial plan as in a full one: owners
// tells, compiling only the ports with external addresses. ClusterIPs and
// node ports are taken to be unique, as the API server allocates them:
// two services given one by hand would be served by whichever a full
// sync finds first, and by the last changed between full syncs.
func (c *compiler) diffVirtualServers(plan *Plan, before, after *State, contestable map[VSKey]bool, wanted, owners func() *State) {
	for key, vs := range after.VirtualServers {
		if contestable[key] {
			vs = owners().VirtualServers[key]
		}
		if old, ok := before.VirtualServers[key]; ok && old.Equal(vs) {
			continue
		}
		plan.Want.VirtualServers[key] = vs
	}
	for key, vs := range before.VirtualServers {
		if _, ok := after.VirtualServers[key]; ok {
			continue
		}
		if other, ok := wanted().VirtualServers[key]; ok {
			plan.Want.VirtualServers[key] = other // another port wants it too
			continue
		}
		plan.Remove.VirtualServers[key] = vs
	}
}

// externalState holds the virtual servers of the view's external and LB
// IPs, each owned by the first port by name that claims it.
func (c *compiler) externalState(view *model.NodeView) *State {
	var ports []netfilter.Port
	for _, sp := range view.Services {
		if len(sp.ExternalIPs) == 0 && len(sp.LoadBalancerIPs) == 0 {
			continue
		}
		if rp := c.rules.Resolve(sp); rp.Present() {
			ports = append(ports, rp)
		}
	}
	s := NewState(c.rules.Family)
	for _, rp := range sortedPorts(ports) {
		o := c.objects(&rp)
		for _, vs := range o.vss {
			if _, taken := s.VirtualServers[vs.VSKey]; !taken && o.external[vs.VSKey] {
				s.VirtualServers[vs.VSKey] = vs
			}
		}
	}
	return s
}

// lazyState computes a state on first use.
func lazyState(f func() *State) func() *State {
	var s *State
	return func() *State {
		if s == nil {
			s = f()
		}
		return s
	}
}

// diffSet adds to want what after has and before had not, and to remove
// what before had and after has not, unless still wants it.
func diffSet[K comparable](before, after, want, remove map[K]bool, still func(K) bool) {
	for k := range after {
		if !before[k] {
			want[k] = true
		}
	}
	for k := range before {
		if !after[k] && !still(k) {
			remove[k] = true
		}
	}
}

func sortedPorts(ports []netfilter.Port) []netfilter.Port {
	slices.SortFunc(ports, func(a, b netfilter.Port) int { return a.Name().Compare(b.Name()) })
	return ports
}
