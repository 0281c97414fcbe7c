package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Applier is the only code that changes the IPVS mode's kernel state. It
// looks at what a plan touches (everything, for a full plan), changes only
// what differs, and orders the changes so that no service address answers
// with half its state: what a service needs is in place before the set
// entry that admits its address and port, and the admission goes first
// when it leaves.
//
// A real server that leaves a virtual server drains: a TCP one is set to
// weight 0 (no new connections) and deleted once its connections are gone
// or DrainTimeout has passed; a UDP or SCTP one goes at once (its flows
// move on with their next packet, as the kernel expires connections to a
// gone real server). The applier keeps, for the real servers it drains,
// when it began: its status of work in progress, which the kernel holds
// as well (a restarted svcproxy finds the weight-0 real servers in its
// first, full sync and waits on them anew); no plan depends on it.
type Applier struct {
	family model.Family
	sets   setNames
	// kubeProxy are the sets kube-proxy's ipvs mode leaves: they tell its
	// node-port virtual servers, which a take-over removes.
	kubeProxy kubeProxySets
	cfg       Config
	rules     *netfilter.Applier
	clock     clock.PassiveClock
	drains    map[realKey]time.Time
}

// realKey names one real server of one virtual server.
type realKey struct {
	vs   VSKey
	addr netip.AddrPort
}

// NewApplier returns the applier of one family, writing iptables rules
// through rules.
func NewApplier(cfg Config, family model.Family, rules *netfilter.Applier, clk clock.PassiveClock) *Applier {
	return &Applier{family: family, sets: newSetNames(family), kubeProxy: newKubeProxySets(family), cfg: cfg, rules: rules, clock: clk, drains: map[realKey]time.Time{}}
}

// DrainCheckPeriod is how soon a sync looks again at a real server that
// began draining its connections. Later looks wait half the drain's age:
// a TCP connection's last IPVS entry (TIME_WAIT) lasts two minutes, and
// a look every second through them paid a sync's fixed work each time
// (an idle svcproxy in the VM at 50 services: 3.0% of a core, 1.1% with
// the spacing; 17.9% at 10,000 before it). So a real server is
// deleted at most half its drain's age after its last connection ended
// (it takes no new one meanwhile: its weight is 0), and at its bound.
const DrainCheckPeriod = time.Second

// nextDrainCheck is how soon the draining real servers want another look:
// the soonest of half each drain's age, DrainCheckPeriod at least, and no
// later than its bound.
func (a *Applier) nextDrainCheck(now time.Time) time.Duration {
	next := time.Duration(0)
	for _, since := range a.drains {
		age := now.Sub(since)
		wait := min(max(DrainCheckPeriod, age/2), max(DrainCheckPeriod, a.cfg.drainTimeout()-age))
		if next == 0 || wait < next {
			next = wait
		}
	}
	return next
}

// Applied is what an Apply did.
type Applied struct {
	// Ops counts kernel requests, iptables programs included.
	Ops              int
	Written, Deleted int
	Rules            netfilter.Applied
	RestoreFailed    bool
	// Draining counts the real servers waiting for their connections to
	// end; NextDrainCheck is how soon they want another look.
	Draining       int
	NextDrainCheck time.Duration
}

// Apply makes the kernel match the plan, through k (see Kernel) and the
// iptables applier. It goes on past an object the kernel refuses, so one
// bad object costs nothing else, and returns every error; a failed Apply
// leaves the kernel between two states, so the next sync must be full.
func (a *Applier) Apply(ctx context.Context, k Kernel, plan *Plan) (Applied, error) {
	if plan.Family != a.family {
		return Applied{}, fmt.Errorf("applying an %s plan with the %s applier", plan.Family, a.family)
	}
	run := &applyRun{a: a, k: &countingKernel{Kernel: k}, plan: plan, now: a.clock.Now(), want: plan.Want, remove: plan.Remove}
	if plan.Full {
		if err := run.prepare(); err != nil {
			run.done.Ops = run.k.ops
			return run.done, err
		}
	}
	for _, step := range []func(context.Context){
		run.addRecords, run.bindAddresses, run.programVirtualServers, run.admit,
		run.restoreRules,
		run.unadmit, run.deleteVirtualServers, run.unbindAddresses, run.removeRecords, run.destroyStaleSets,
		run.drainRest,
	} {
		step(ctx)
	}
	run.done.Ops = run.k.ops + run.done.Rules.Ops
	run.done.Draining, run.done.NextDrainCheck = len(a.drains), a.nextDrainCheck(run.now)
	return run.done, errors.Join(run.errs...)
}

// applyRun is one Apply: the plan, what was seen of the kernel, and what
// was done.
type applyRun struct {
	a    *Applier
	k    *countingKernel
	plan *Plan
	now  time.Time
	// want and remove are the plan's, with remove filled in by looking at
	// the kernel for a full plan.
	want, remove *State
	// seen is what a full plan found in the kernel; nil for a partial one.
	seen *observed
	// programmed are the virtual servers done in this run; failed, those
	// the kernel refused (their addresses are not admitted).
	programmed, failed map[VSKey]bool
	// unrecorded: a record (an entry telling which virtual servers are
	// svcproxy's) could not be added, so no virtual server is created
	// this run; undeleted: a virtual server could not be deleted, so no
	// record is removed. Either way no virtual server is left that a
	// later sync would not know as its own.
	unrecorded, undeleted bool
	done                  Applied
	errs                  []error
}

func (r *applyRun) fail(err error) { r.errs = append(r.errs, err) }

// observed is the family's IPVS-mode state as a full sync finds it.
type observed struct {
	// servers are the virtual servers svcproxy owns, with their real servers.
	servers map[VSKey]*VirtualServer
	reals   map[VSKey][]RealStatus
	// others are the virtual servers someone else made; one a service
	// now wants is taken over.
	others  map[VSKey]*VirtualServer
	addrs   map[netip.Addr]bool
	sets    map[string]Set
	entries map[SetEntry]bool
	// kubeProxyNodePorts are the node ports kube-proxy's sets hold: by
	// protocol and port, and by address too for SCTP.
	kubeProxyNodePorts map[VSKey]bool
}

// prepare, for a full plan, puts the fixed parts in place (sysctls,
// timeouts, kube-ipvs0, the sets) and looks at everything else, to know
// what is stale. Without a complete look nothing can be removed safely,
// so a failure here ends the Apply.
func (r *applyRun) prepare() error {
	if err := r.k.EnsureDummy(DummyName); err != nil {
		return fmt.Errorf("creating %s: %w", DummyName, err)
	}
	r.setSysctls()
	if t := r.a.cfg.Timeouts; t != (Timeouts{}) {
		if err := r.k.SetTimeouts(t); err != nil {
			r.fail(fmt.Errorf("setting IPVS timeouts: %w", err))
		}
	}
	seen, err := r.observe()
	if err != nil {
		return fmt.Errorf("reading the IPVS state: %w", err)
	}
	r.seen = seen
	for _, s := range sortedKeys(r.want.Sets, strings.Compare) {
		if _, ok := seen.sets[s]; ok {
			continue
		}
		if err := r.k.CreateSet(r.want.Sets[s]); err != nil {
			r.fail(fmt.Errorf("creating set %s: %w", s, err))
		}
	}
	r.remove = seen.staleAgainst(r.want)
	return nil
}

func (r *applyRun) setSysctls() {
	for _, s := range r.want.Sysctls {
		cur, err := r.k.ReadSysctl(s.Name)
		if err == nil && cur == s.Value {
			continue
		}
		if err := r.k.WriteSysctl(s.Name, s.Value); err != nil {
			r.fail(fmt.Errorf("sysctl %s=%s: %w", s.Name, s.Value, err))
		}
	}
}

// observe reads the family's state: the sets svcproxy owns and their
// members, kube-ipvs0's addresses, and the virtual servers that are
// svcproxy's (see owns) with their real servers.
func (r *applyRun) observe() (*observed, error) {
	o := &observed{servers: map[VSKey]*VirtualServer{}, reals: map[VSKey][]RealStatus{}, others: map[VSKey]*VirtualServer{},
		addrs: map[netip.Addr]bool{}, sets: map[string]Set{}, entries: map[SetEntry]bool{}, kubeProxyNodePorts: map[VSKey]bool{}}
	sets, err := r.k.ListSets(r.a.family)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		r.a.kubeProxy.recordNodePorts(o, s)
		if !r.a.sets.owns(s.Name) {
			continue
		}
		o.sets[s.Name] = s.Set
		for _, e := range s.Entries {
			o.entries[SetEntry{s.Name, e}] = true
		}
	}
	addrs, err := r.k.LinkAddrs(DummyName, r.a.family)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		o.addrs[a] = true
	}
	table, err := r.k.Table(r.a.family)
	if err != nil {
		return nil, err
	}
	for key, l := range table {
		vs := l.VirtualServer
		if !r.a.owns(o, key) {
			o.others[key] = &vs
			continue
		}
		o.servers[key], o.reals[key] = &vs, l.Status
	}
	return o, nil
}

// excluded reports whether --ipvs-exclude-cidrs protects a virtual server.
func (a *Applier) excluded(k VSKey) bool {
	return slices.ContainsFunc(a.cfg.ExcludeCIDRs, func(p netip.Prefix) bool { return p.Contains(k.Addr) })
}

// owns reports whether a virtual server is svcproxy's: its address is
// bound to kube-ipvs0 or recorded in SERVICE-IPS, or its address and port
// are a service's (an external IP that is a node address), or it is on a
// recorded node address with a recorded node port, or it is one of the
// node ports kube-proxy left (see kubeproxy.go); and it is not in
// --ipvs-exclude-cidrs. Anything else (keepalived's, a load balancer's on
// the node) is never touched, unless a service claims its very address
// and port.
func (a *Applier) owns(o *observed, k VSKey) bool {
	if a.excluded(k) {
		return false
	}
	if o.addrs[k.Addr] || o.entries[SetEntry{a.sets.serviceIPs, Entry{Addr: k.Addr}}] || o.kubeProxyNodePort(k) {
		return true
	}
	service := Entry{Addr: k.Addr, Protocol: k.Protocol, Port: k.Port}
	for _, set := range []string{a.sets.clusterIP, a.sets.external, a.sets.externalLocal} {
		if o.entries[SetEntry{set, service}] {
			return true
		}
	}
	if !o.entries[SetEntry{a.sets.nodeIPs, Entry{Addr: k.Addr}}] {
		return false
	}
	port := Entry{Port: k.Port}
	return o.entries[SetEntry{a.sets.nodePort[k.Protocol], port}] || o.entries[SetEntry{a.sets.nodePortLocal[k.Protocol], port}]
}

// staleAgainst is what the observed state has that want has not.
func (o *observed) staleAgainst(want *State) *State {
	stale := NewState(want.Family)
	for k, vs := range o.servers {
		if _, ok := want.VirtualServers[k]; !ok {
			stale.VirtualServers[k] = vs
		}
	}
	for a := range o.addrs {
		if !want.Addresses[a] {
			stale.Addresses[a] = true
		}
	}
	for e := range o.entries {
		if !want.Entries[e] {
			stale.Entries[e] = true
		}
	}
	for name, s := range o.sets {
		if _, ok := want.Sets[name]; !ok {
			stale.Sets[name] = s
		}
	}
	return stale
}

// addRecords adds the set entries that record node ports, node
// addresses, source ranges and bound addresses.
func (r *applyRun) addRecords(context.Context) {
	r.unrecorded = !r.addEntries(func(set string) bool { return !r.a.sets.admits(set) })
}

// admit adds the entries that make service ports answer, but not for a
// virtual server the kernel refused.
func (r *applyRun) admit(context.Context) { r.addEntries(r.a.sets.admits) }

// addEntries adds the wanted entries of the sets of, and reports whether
// all went in.
func (r *applyRun) addEntries(of func(set string) bool) bool {
	ok := true
	for _, e := range sortedKeys(r.want.Entries, compareSetEntries) {
		if !of(e.Set) || (r.seen != nil && r.seen.entries[e]) || r.refused(e) {
			continue
		}
		if err := r.k.AddEntry(r.set(e.Set), e.Entry); err != nil {
			r.fail(fmt.Errorf("adding %s: %w", e, err))
			ok = false
			continue
		}
		r.done.Written++
	}
	return ok
}

// refused reports whether an admission entry is for a virtual server the
// kernel refused in this run.
func (r *applyRun) refused(e SetEntry) bool {
	return r.a.sets.admits(e.Set) && r.failed[VSKey{e.Entry.Addr, e.Entry.Protocol, e.Entry.Port}]
}

func (r *applyRun) unadmit(context.Context) { r.removeEntries(r.a.sets.admits) }

func (r *applyRun) removeRecords(context.Context) {
	if r.undeleted {
		return
	}
	r.removeEntries(func(set string) bool { return !r.a.sets.admits(set) })
}

func (r *applyRun) removeEntries(of func(set string) bool) {
	for _, e := range sortedKeys(r.remove.Entries, compareSetEntries) {
		if !of(e.Set) {
			continue
		}
		if err := r.k.DelEntry(r.set(e.Set), e.Entry); err != nil {
			r.fail(fmt.Errorf("removing %s: %w", e, err))
			continue
		}
		r.done.Deleted++
	}
}

// set is a set of this family by name, as the kernel calls want it.
func (r *applyRun) set(name string) Set {
	if s, ok := r.a.sets.byName[name]; ok {
		return s
	}
	return Set{Name: name, Family: r.a.family}
}

func (r *applyRun) bindAddresses(context.Context) {
	for _, a := range sortedKeys(r.want.Addresses, netip.Addr.Compare) {
		if r.seen != nil && r.seen.addrs[a] {
			continue
		}
		if err := r.k.AddAddr(DummyName, a); err != nil {
			r.fail(fmt.Errorf("binding %s to %s: %w", a, DummyName, err))
			continue
		}
		r.done.Written++
	}
}

func (r *applyRun) unbindAddresses(context.Context) {
	for _, a := range sortedKeys(r.remove.Addresses, netip.Addr.Compare) {
		if err := r.k.DelAddr(DummyName, a); err != nil {
			r.fail(fmt.Errorf("unbinding %s from %s: %w", a, DummyName, err))
			continue
		}
		r.done.Deleted++
	}
}

// programVirtualServers creates or updates every wanted virtual server
// and brings its real servers in line: new ones first, then weights,
// then the ones that leave drain.
func (r *applyRun) programVirtualServers(context.Context) {
	r.programmed, r.failed = map[VSKey]bool{}, map[VSKey]bool{}
	for _, key := range sortedKeys(r.want.VirtualServers, VSKey.Compare) {
		r.programmed[key] = true
		if err := r.program(r.want.VirtualServers[key]); err != nil {
			r.failed[key] = true
			r.fail(fmt.Errorf("virtual server %s: %w", key, err))
		}
	}
}

func (r *applyRun) program(vs *VirtualServer) error {
	cur, reals, err := r.current(vs.VSKey)
	if err != nil {
		return err
	}
	switch {
	case cur == nil && r.unrecorded:
		return errors.New("not created: the records of which virtual servers are svcproxy's could not be written")
	case cur == nil:
		if err := r.k.AddVirtualServer(*vs); err != nil {
			return err
		}
		r.done.Written++
	case cur.Scheduler != vs.Scheduler || cur.Persistence != vs.Persistence:
		if err := r.k.UpdateVirtualServer(*vs); err != nil {
			return err
		}
		r.done.Written++
	}
	return r.programReals(vs, reals)
}

// current is what the kernel has of a virtual server: from the full
// look, or for a partial plan asked now, in one request (its real
// servers): its settings are then those the previous view wanted, which
// the last sync applied and the integrity check watches.
func (r *applyRun) current(key VSKey) (*VirtualServer, []RealStatus, error) {
	if r.seen != nil {
		if vs, ok := r.seen.servers[key]; ok || r.seen.others[key] == nil {
			return vs, r.seen.reals[key], nil
		}
	}
	reals, err := r.k.RealServers(key)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, nil, nil
	case err != nil:
		return nil, nil, err
	}
	if r.seen != nil {
		return r.seen.others[key], reals, nil // someone else's until now
	}
	if was, ok := r.plan.Before.VirtualServers[key]; ok {
		return was, reals, nil
	}
	// Another port's until now (a contested address): its settings are
	// unknown, so they are set again.
	return &VirtualServer{VSKey: key}, reals, nil
}

func (r *applyRun) programReals(vs *VirtualServer, cur []RealStatus) error {
	var errs []error
	have := map[netip.AddrPort]RealStatus{}
	for _, rs := range cur {
		have[rs.Addr] = rs
	}
	for _, rs := range vs.Reals {
		old, ok := have[rs.Addr]
		delete(have, rs.Addr)
		delete(r.a.drains, realKey{vs.VSKey, rs.Addr})
		switch {
		case !ok:
			errs = append(errs, r.count(&r.done.Written, r.k.AddRealServer(vs.VSKey, rs)))
		case old.Weight != rs.Weight:
			errs = append(errs, r.count(&r.done.Written, r.k.UpdateRealServer(vs.VSKey, rs)))
		}
	}
	for _, addr := range sortedKeys(have, netip.AddrPort.Compare) {
		errs = append(errs, r.drain(vs.VSKey, have[addr]))
	}
	return errors.Join(errs...)
}

func (r *applyRun) count(n *int, err error) error {
	if err == nil {
		*n++
	}
	return err
}

// drain takes a real server that left a virtual server one step further:
// to weight 0 (TCP), or away (once idle, past the bound, or not TCP).
func (r *applyRun) drain(vs VSKey, rs RealStatus) error {
	key := realKey{vs, rs.Addr}
	since, draining := r.a.drains[key]
	if !draining {
		since = r.now
	}
	if vs.Protocol != model.TCP || rs.Idle() || r.now.Sub(since) >= r.a.cfg.drainTimeout() {
		delete(r.a.drains, key)
		return r.count(&r.done.Deleted, r.k.DeleteRealServer(vs, rs.Addr))
	}
	r.a.drains[key] = since
	if rs.Weight == 0 {
		return nil
	}
	rs.Weight = 0
	return r.count(&r.done.Written, r.k.UpdateRealServer(vs, rs.RealServer))
}

func (r *applyRun) restoreRules(ctx context.Context) {
	done, err := r.a.rules.Apply(ctx, r.plan.Rules)
	r.done.Rules = done
	r.done.Written += len(r.plan.Rules.Write)
	if err != nil {
		var re *netfilter.RestoreError
		r.done.RestoreFailed = errors.As(err, &re)
		r.fail(err)
	}
}

func (r *applyRun) deleteVirtualServers(context.Context) {
	for _, key := range sortedKeys(r.remove.VirtualServers, VSKey.Compare) {
		if err := r.k.DeleteVirtualServer(key); err != nil && !errors.Is(err, ErrNotFound) {
			r.fail(fmt.Errorf("deleting virtual server %s: %w", key, err))
			r.undeleted = true
			continue
		}
		r.done.Deleted++
		r.forgetDrains(key)
	}
}

// destroyStaleSets destroys sets of this family no rule uses any more;
// the rules restored before no longer name them.
func (r *applyRun) destroyStaleSets(context.Context) {
	for _, name := range sortedKeys(r.remove.Sets, strings.Compare) {
		if err := r.k.DestroySet(name); err != nil {
			r.fail(fmt.Errorf("destroying set %s: %w", name, err))
			continue
		}
		r.done.Deleted++
	}
}

// drainRest looks again at the real servers draining in virtual servers
// this run did not program, and deletes those whose time has come.
func (r *applyRun) drainRest(context.Context) {
	var servers []VSKey
	for d := range r.a.drains {
		if !r.programmed[d.vs] && !slices.Contains(servers, d.vs) {
			servers = append(servers, d.vs)
		}
	}
	slices.SortFunc(servers, VSKey.Compare)
	for _, vs := range servers {
		reals, err := r.k.RealServers(vs)
		if errors.Is(err, ErrNotFound) {
			r.forgetDrains(vs)
			continue
		}
		if err != nil {
			r.fail(fmt.Errorf("real servers of %s: %w", vs, err))
			continue
		}
		present := map[netip.AddrPort]bool{}
		for _, rs := range reals {
			present[rs.Addr] = true
			if _, draining := r.a.drains[realKey{vs, rs.Addr}]; draining {
				if err := r.drain(vs, rs); err != nil {
					r.fail(fmt.Errorf("draining %s of %s: %w", rs.Addr, vs, err))
				}
			}
		}
		for d := range r.a.drains {
			if d.vs == vs && !present[d.addr] {
				delete(r.a.drains, d) // someone else deleted it
			}
		}
	}
}

func (r *applyRun) forgetDrains(vs VSKey) {
	for d := range r.a.drains {
		if d.vs == vs {
			delete(r.a.drains, d)
		}
	}
}

// holds reports whether the kernel has everything want needs: every
// virtual server with its settings and real servers (real servers of
// weight 0 it drains aside), every address, set entry and sysctl. It
// writes nothing. It reads the kernel's listings first and then compares
// what each port wants as it comes, holding neither the wanted state nor
// the maps an apply observes the kernel into: at 10,000 services those
// set the daemon's peak heap.
func (a *Applier) holds(ctx context.Context, k Kernel, want fullWants) (bool, error) {
	for _, s := range want.Sysctls {
		if v, err := k.ReadSysctl(s.Name); err != nil || v != s.Value {
			return false, err
		}
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	kernel, err := a.listings(ctx, k)
	if err != nil {
		return false, err
	}
	for _, e := range want.Entries {
		if !kernel.holdsEntry(e) {
			return false, nil
		}
	}
	// Where two ports claim one virtual server the first owns it, as in
	// a full plan.
	claimed := map[VSKey]bool{}
	ports := 0
	for o := range want.Ports {
		// Compiling the ports is a third of the check: it stops here too.
		if ports++; ports%256 == 0 && ctx.Err() != nil {
			return false, ctx.Err()
		}
		for _, vs := range o.vss {
			if claimed[vs.VSKey] {
				continue
			}
			claimed[vs.VSKey] = true
			cur, ok := kernel.table[vs.VSKey]
			if !ok || a.excluded(vs.VSKey) || cur.Scheduler != vs.Scheduler || cur.Persistence != vs.Persistence ||
				!realsHold(vs.Reals, cur.Status) {
				return false, nil
			}
		}
		for _, addr := range o.addrs {
			if _, found := slices.BinarySearchFunc(kernel.addrs, addr, netip.Addr.Compare); !found {
				return false, nil
			}
		}
		for _, e := range o.entries {
			if !kernel.holdsEntry(e) {
				return false, nil
			}
		}
	}
	return true, nil
}

// listed is the kernel's state as the integrity check reads it: the owned
// sets' members and kube-ipvs0's addresses sorted, and the IPVS table.
type listed struct {
	members map[string][]Entry
	addrs   []netip.Addr
	table   map[VSKey]Listed
}

// listings reads the kernel's sets, addresses and table, stopping between
// the reads once ctx ends (nil, ctx's error).
func (a *Applier) listings(ctx context.Context, k Kernel) (*listed, error) {
	sets, err := k.ListSets(a.family)
	if err != nil {
		return nil, err
	}
	l := &listed{members: map[string][]Entry{}}
	for _, s := range sets {
		if a.sets.owns(s.Name) {
			slices.SortFunc(s.Entries, Entry.Compare)
			l.members[s.Name] = s.Entries
		}
	}
	if l.addrs, err = k.LinkAddrs(DummyName, a.family); err != nil {
		return nil, err
	}
	slices.SortFunc(l.addrs, netip.Addr.Compare)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.table, err = k.Table(a.family); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *listed) holdsEntry(e SetEntry) bool {
	_, found := slices.BinarySearchFunc(l.members[e.Set], e.Entry, Entry.Compare)
	return found
}

// realsHold reports whether the kernel's real servers are the wanted ones
// with their weights, plus perhaps some of weight 0 being drained. Lists
// are short (a service's endpoints), and the integrity check asks this of
// every virtual server: a search of cur for each wanted one costs less
// than a map per virtual server, up to a few dozen (12,000 virtual
// servers of 10: 1.0 ms and no allocation, against 8.3 ms and 9 MB).
func realsHold(want []RealServer, cur []RealStatus) bool {
	if len(want) > 32 {
		return realsHoldLong(want, cur)
	}
	matched := 0
	for _, rs := range want {
		i := slices.IndexFunc(cur, func(c RealStatus) bool { return c.Addr == rs.Addr })
		if i < 0 || cur[i].Weight != rs.Weight {
			return false
		}
		matched++
	}
	if matched == len(cur) {
		return true
	}
	// The rest must be draining: every one not wanted has weight 0.
	for _, c := range cur {
		if c.Weight != 0 && !slices.ContainsFunc(want, func(rs RealServer) bool { return rs.Addr == c.Addr }) {
			return false
		}
	}
	return true
}

// realsHoldLong is realsHold for a service of many endpoints, by a map.
func realsHoldLong(want []RealServer, cur []RealStatus) bool {
	have := make(map[netip.AddrPort]int, len(cur))
	for _, rs := range cur {
		have[rs.Addr] = rs.Weight
	}
	for _, rs := range want {
		w, ok := have[rs.Addr]
		if !ok || w != rs.Weight {
			return false
		}
		delete(have, rs.Addr)
	}
	for _, w := range have {
		if w != 0 {
			return false
		}
	}
	return true
}

// removeAll removes every object of the family svcproxy owns: virtual
// servers, kube-ipvs0's addresses, the sets; kube-ipvs0 itself once it has
// no address of any family. With gently, a virtual server some connection
// still uses stays, with its address and the records that tell it is
// svcproxy's: the iptables mode, taking over a node, sends new connections
// past IPVS at once, and lets the old ones end. It returns how many
// virtual servers stay. The iptables rules naming the sets must be gone
// already, or the sets stay (and it says so).
func (a *Applier) removeAll(ctx context.Context, k Kernel, gently bool) (int, error) {
	run := &applyRun{a: a, k: &countingKernel{Kernel: k}, want: NewState(a.family), plan: &Plan{Rules: netfilter.NewPlan(a.family, false)}}
	seen, err := run.observe()
	if err != nil {
		return 0, fmt.Errorf("reading the IPVS state: %w", err)
	}
	if gently {
		for key, vs := range seen.servers {
			if !slices.ContainsFunc(seen.reals[key], func(r RealStatus) bool { return !r.Idle() }) {
				continue
			}
			run.want.VirtualServers[key] = vs // in use: stays for now
			run.want.Addresses[key.Addr] = true
		}
	}
	run.remove = seen.staleAgainst(run.want)
	if len(run.want.VirtualServers) > 0 {
		// What tells the remaining virtual servers are svcproxy's stays.
		run.remove.Entries, run.remove.Sets = map[SetEntry]bool{}, map[string]Set{}
	}
	run.programmed = map[VSKey]bool{}
	run.deleteVirtualServers(ctx)
	run.unbindAddresses(ctx)
	run.removeRecords(ctx)
	run.unadmit(ctx)
	run.destroyStaleSets(ctx)
	a.drains = map[realKey]time.Time{}
	if len(run.want.VirtualServers) == 0 {
		run.deleteDummyIfUnused(k)
	}
	return len(run.want.VirtualServers), errors.Join(run.errs...)
}

// deleteDummyIfUnused deletes kube-ipvs0 once no family has an address on it.
func (r *applyRun) deleteDummyIfUnused(k Kernel) {
	var left []netip.Addr
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		addrs, err := k.LinkAddrs(DummyName, f)
		if err != nil {
			r.fail(err)
		}
		left = append(left, addrs...)
	}
	if len(left) == 0 {
		if err := k.DeleteLink(DummyName); err != nil {
			r.fail(fmt.Errorf("deleting %s: %w", DummyName, err))
		}
	}
}

// Read returns what the kernel holds of svcproxy's IPVS-mode state in one
// family: its virtual servers with their real servers, kube-ipvs0's
// addresses, its sets and their members. For people and tests; a sync
// reads what it needs itself.
func Read(k Kernel, family model.Family) (*State, error) {
	run := &applyRun{a: NewApplier(Config{}, family, nil, clock.RealClock{}), k: &countingKernel{Kernel: k}}
	seen, err := run.observe()
	if err != nil {
		return nil, err
	}
	s := NewState(family)
	for key, vs := range seen.servers {
		cp := *vs
		cp.Reals = nil
		for _, rs := range seen.reals[key] {
			cp.Reals = append(cp.Reals, rs.RealServer)
		}
		s.VirtualServers[key] = &cp
	}
	s.Addresses, s.Sets, s.Entries = seen.addrs, seen.sets, seen.entries
	return s, nil
}
