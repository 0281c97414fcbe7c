package proxier

import (
	"errors"
	"iter"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Tracker holds the parsed Services, EndpointSlices and Node as the informers
// last reported them, and which services changed since the last Snapshot.
// Informer handlers call it concurrently; each call parses its object, then
// holds the lock only to swap a pointer or two.
//
// Snapshots are copy-on-write: a Snapshot shares the tracker's maps, and a
// change after it copies the shard of a map it writes (see serviceMap).
// Stored services and slice lists are never modified in place (a change
// replaces them), so a shallow copy is a consistent one. This keeps
// Snapshot, and the changes between two, O(changes).
type Tracker struct {
	log     *zap.Logger
	clock   func() time.Time
	start   time.Time // when the tracker was made: older trigger times are not this process's to measure
	changed chan struct{}

	mu       sync.Mutex
	services serviceMap[*Service]
	slices   serviceMap[[]*EndpointSlice] // per service, sorted by slice name
	// sliceOwner remembers which service each slice was filed under, so a
	// slice whose service label changes is removed from the old service.
	sliceOwner map[sliceKey]ServiceName
	node       model.NodeInfo
	pending    pendingChanges
	last       *Snapshot
	// counts feeds ChangeStats: cumulative counts and the latest queue time.
	counts changeCounts
}

type changeCounts struct {
	serviceEvents uint64
	sliceEvents   [2]uint64 // by family: [0] IPv4, [1] IPv6
	lastQueued    time.Time
}

type sliceKey struct{ namespace, name string }

// pendingChanges accumulates what changed between two snapshots; a burst of
// updates to one service is one entry.
type pendingChanges struct {
	services     map[ServiceName]changeKinds
	queuedAt     map[ServiceName]time.Time // when each service's first pending change was queued
	node         bool
	oldest       time.Time // zero: nothing pending
	triggerTimes map[ServiceName][]TriggerTime
	// sliceChanges counts the slice events that changed something, as
	// kube-proxy's endpoint_changes_pending does.
	sliceChanges int
}

// Snapshot is an immutable, consistent view of everything the tracker holds,
// plus what changed since the previous snapshot. Nothing reachable from it
// may be modified.
type Snapshot struct {
	Node model.NodeInfo

	// NodeChanged: the node's name, zone, addresses or CIDRs changed, which
	// can change every service port.
	NodeChanged bool
	// ChangedServices are the services whose Service or EndpointSlices
	// changed since the previous snapshot, sorted. Changes that were undone
	// before this snapshot (an update and its revert) are left out.
	ChangedServices []ServiceName
	// OldestChange is when the oldest change drained by this snapshot was
	// queued; zero if none was.
	OldestChange time.Time
	// TriggerTimes are the last-change-trigger-time annotations of the
	// slices updated since the previous snapshot, sorted by time, for the
	// network-programming-latency metric. As in kube-proxy, only changes
	// made after the tracker was made count (at a restart the informers
	// replay every slice, with the time of its last change), and a slice
	// removed drops the pending times of its service (the annotation of a
	// deleted object tells when it last changed, not when it went).
	TriggerTimes []TriggerTime
	// ChangeQueued is when the first change drained by this snapshot of
	// each service was queued: how long a change waited for its sync,
	// per service.
	ChangeQueued map[ServiceName]time.Time

	services serviceMap[*Service]
	slices   serviceMap[[]*EndpointSlice]
	// origin and seq identify the snapshot, so Update can tell that two
	// snapshots are consecutive and ChangedServices is all that differs.
	origin *Tracker
	seq    uint64
}

// TriggerTime is when a change to a slice of the family was triggered.
type TriggerTime struct {
	Family model.Family
	Time   time.Time
}

// follows reports whether s is the snapshot taken right after prev by the
// same tracker.
func (s *Snapshot) follows(prev *Snapshot) bool {
	return s.origin != nil && s.origin == prev.origin && s.seq == prev.seq+1
}

// NewTracker returns an empty tracker; clock stamps when changes are queued.
func NewTracker(log *zap.Logger, clock func() time.Time) *Tracker {
	return &Tracker{
		log:        log,
		clock:      clock,
		start:      clock(),
		changed:    make(chan struct{}, 1),
		sliceOwner: map[sliceKey]ServiceName{},
		pending:    newPendingChanges(),
		last:       &Snapshot{},
	}
}

// Changed is signalled (without blocking, coalesced) after every change;
// Snapshot consumes a pending signal, since it takes the change with it.
func (t *Tracker) Changed() <-chan struct{} { return t.changed }

// UpsertService records an added or updated Service. An update that makes
// the service invalid or ignored removes the version stored before: stale
// rules for a service that now means something else are worse than none.
func (t *Tracker) UpsertService(svc *v1.Service) {
	parsed, err := ParseService(svc)
	t.upsertService(ServiceName{Namespace: svc.Namespace, Name: svc.Name}, parsed, err)
}

// upsertService records a Service ParseService read.
func (t *Tracker) upsertService(name ServiceName, parsed *Service, err error) {
	t.countServiceEvent()
	if err != nil {
		t.logRejected(err)
		if t.removeService(name) {
			t.log.Warn("service removed: its update is ignored or invalid", zap.Stringer("service", name))
		}
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.services.Get(name); ok && old.Equal(parsed) {
		return
	}
	t.services.Set(name, parsed)
	t.touch(name, serviceChange)
}

// DeleteService records that a Service is gone.
func (t *Tracker) DeleteService(namespace, name string) {
	t.countServiceEvent()
	t.removeService(ServiceName{Namespace: namespace, Name: name})
}

func (t *Tracker) removeService(name ServiceName) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.services.Get(name); !ok {
		return false
	}
	t.services.Delete(name)
	t.touch(name, serviceChange)
	return true
}

// UpsertEndpointSlice records an added or updated EndpointSlice, which may
// have moved from one service to another.
func (t *Tracker) UpsertEndpointSlice(es *discoveryv1.EndpointSlice) {
	parsed, dropped, err := ParseEndpointSlice(es)
	t.upsertSlice(sliceKey{es.Namespace, es.Name}, parsed, dropped, err)
}

// upsertSlice records an EndpointSlice ParseEndpointSlice read.
func (t *Tracker) upsertSlice(key sliceKey, parsed *EndpointSlice, dropped []string, err error) {
	if len(dropped) > 0 {
		t.log.Warn("endpoint slice entries dropped", zap.String("namespace", key.namespace),
			zap.String("name", key.name), zap.Strings("dropped", dropped))
	}
	if err != nil {
		t.logRejected(err)
		t.mu.Lock()
		defer t.mu.Unlock()
		t.removeSlice(key)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.countSliceEvent(parsed.Family)
	owner, known := t.sliceOwner[key]
	if known && owner == parsed.Service {
		if old := findSlice(t.slices.Value(owner), key.name); old != nil && old.Equal(parsed) {
			return
		}
	}
	t.pending.sliceChanges++
	if known && owner != parsed.Service {
		t.unfileSlice(owner, key.name)
		t.touch(owner, endpointsChange)
	}
	t.sliceOwner[key] = parsed.Service
	t.slices.Set(parsed.Service, withSlice(t.slices.Value(parsed.Service), parsed))
	t.touch(parsed.Service, endpointsChange)
	if parsed.TriggerTime.After(t.start) {
		t.pending.triggerTimes[parsed.Service] = append(t.pending.triggerTimes[parsed.Service],
			TriggerTime{Family: parsed.Family, Time: parsed.TriggerTime})
	}
}

// DeleteEndpointSlice records that an EndpointSlice is gone.
func (t *Tracker) DeleteEndpointSlice(namespace, name string) {
	key := sliceKey{namespace, name}
	t.mu.Lock()
	defer t.mu.Unlock()
	// Every slice stored is one kube-proxy would count (a service label
	// and an IP address type), so a delete of one svcproxy never stored
	// is one kube-proxy does not count either.
	if owner, ok := t.sliceOwner[key]; ok {
		if s := findSlice(t.slices.Value(owner), name); s != nil {
			t.countSliceEvent(s.Family)
		}
		t.pending.sliceChanges++
	}
	t.removeSlice(key)
}

// removeSlice drops a stored slice; t.mu is held.
func (t *Tracker) removeSlice(key sliceKey) {
	owner, ok := t.sliceOwner[key]
	if !ok {
		return
	}
	delete(t.sliceOwner, key)
	t.unfileSlice(owner, key.name)
	t.touch(owner, endpointsChange)
	delete(t.pending.triggerTimes, owner)
}

// countServiceEvent counts a Service event as kube-proxy's
// service_changes_total does: every add, update and delete the informer
// delivers, whatever it changes (resyncs included).
func (t *Tracker) countServiceEvent() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts.serviceEvents++
}

// countSliceEvent counts an EndpointSlice event as kube-proxy's
// endpoint_changes_total does: every add, update and delete of a slice
// with a service label and an IP address type, whatever it changes; t.mu
// is held.
func (t *Tracker) countSliceEvent(f model.Family) {
	t.counts.sliceEvents[familyIndex(f)]++
}

func familyIndex(f model.Family) int {
	if f == model.IPv6 {
		return 1
	}
	return 0
}

// SetNode records this node's name, zone, addresses and CIDRs.
func (t *Tracker) SetNode(n model.NodeInfo) {
	n = cloneNode(n)
	t.mu.Lock()
	defer t.mu.Unlock()
	if nodeEqual(t.node, n) {
		return
	}
	t.node = n
	t.pending.node = true
	t.queued()
}

// OldestPending returns when the oldest change not yet taken by a Snapshot
// was queued, for /healthz: a proxy that stops syncing must look unhealthy.
func (t *Tracker) OldestPending() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pending.oldest, !t.pending.oldest.IsZero()
}

// SliceWaitEnds says how long the pending changes may wait for the
// EndpointSlices that will complete them: when every one of them is a new
// Service without a slice yet (its endpoints come in a write of their
// own, a few milliseconds later, from the EndpointSlice controller or
// whoever wrote the Service), until wait after the first was queued;
// otherwise the zero time, and they should sync at once. Programming such
// a Service alone gains nothing (it has no endpoints to send traffic to
// yet) and costs a sync, after which its slice would wait
// --min-sync-period once the burst allowance is spent.
func (t *Tracker) SliceWaitEnds(wait time.Duration) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if wait <= 0 || t.pending.node || len(t.pending.services) == 0 {
		return time.Time{}
	}
	var first time.Time
	for name, kinds := range t.pending.services {
		_, known := t.last.services.Get(name)
		_, exists := t.services.Get(name)
		if kinds != serviceChange || known || !exists || len(t.slices.Value(name)) > 0 {
			return time.Time{}
		}
		if q := t.pending.queuedAt[name]; first.IsZero() || q.Before(first) {
			first = q
		}
	}
	return first.Add(wait)
}

// ChangeStats counts the changes a tracker saw, for metrics.
type ChangeStats struct {
	// ServicesPending counts the services whose Service changed since the
	// last Snapshot; EndpointsPending the EndpointSlice events since then
	// that changed a slice (kube-proxy's endpoint_changes_pending counts
	// events, its service_changes_pending services).
	ServicesPending, EndpointsPending int
	// ServiceEvents counts the Service events (add, update, delete, each
	// resync) since the tracker was made, whatever they changed;
	// SliceEvents the EndpointSlice events by family (IPv4, IPv6), those
	// of slices without a service label or of FQDN slices left out.
	ServiceEvents uint64
	SliceEvents   [2]uint64
	// LastQueued is when the latest change (node changes included) was
	// queued; zero if none ever was.
	LastQueued time.Time
}

// Stats returns the change counts as of now.
func (t *Tracker) Stats() ChangeStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := ChangeStats{EndpointsPending: t.pending.sliceChanges, ServiceEvents: t.counts.serviceEvents,
		SliceEvents: t.counts.sliceEvents, LastQueued: t.counts.lastQueued}
	for _, kinds := range t.pending.services {
		if kinds&serviceChange != 0 {
			st.ServicesPending++
		}
	}
	return st
}

// Snapshot returns the current state and drains the pending changes.
func (t *Tracker) Snapshot() *Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	snap := &Snapshot{
		Node:         t.node,
		NodeChanged:  t.pending.node,
		OldestChange: t.pending.oldest,
		ChangeQueued: t.pending.queuedAt,
		services:     t.services.Share(),
		slices:       t.slices.Share(),
		origin:       t,
		seq:          t.last.seq + 1,
	}
	for _, times := range t.pending.triggerTimes {
		snap.TriggerTimes = append(snap.TriggerTimes, times...)
	}
	slices.SortFunc(snap.TriggerTimes, func(a, b TriggerTime) int { return a.Time.Compare(b.Time) })
	snap.ChangedServices = t.effectiveChanges(snap)
	t.last = snap
	t.pending = newPendingChanges()
	// Everything signalled so far is in this snapshot; a stale signal would
	// only cost the runner an empty sync.
	select {
	case <-t.changed:
	default:
	}
	return snap
}

// effectiveChanges lists the touched services that differ from the previous
// snapshot: a burst that ends where it started changes nothing.
func (t *Tracker) effectiveChanges(snap *Snapshot) []ServiceName {
	names := make([]ServiceName, 0, len(t.pending.services))
	for name := range t.pending.services {
		if !serviceStateEqual(t.last, snap, name) {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, ServiceName.Compare)
	return names
}

func serviceStateEqual(a, b *Snapshot, name ServiceName) bool {
	sa, okA := a.services.Get(name)
	sb, okB := b.services.Get(name)
	if okA != okB || (okA && sa != sb && !sa.Equal(sb)) {
		return false
	}
	return slices.EqualFunc(a.slices.Value(name), b.slices.Value(name), func(x, y *EndpointSlice) bool {
		return x == y || x.Equal(y)
	})
}

// changeKinds says what changed about a pending service: its Service, its
// EndpointSlices or both (kube-proxy counts the two apart in its metrics).
type changeKinds uint8

const (
	serviceChange changeKinds = 1 << iota
	endpointsChange
)

func (t *Tracker) touch(name ServiceName, kind changeKinds) {
	t.pending.services[name] |= kind
	if _, ok := t.pending.queuedAt[name]; !ok {
		t.pending.queuedAt[name] = t.clock()
	}
	t.queued()
}

func newPendingChanges() pendingChanges {
	return pendingChanges{services: map[ServiceName]changeKinds{}, queuedAt: map[ServiceName]time.Time{},
		triggerTimes: map[ServiceName][]TriggerTime{}}
}

func (t *Tracker) queued() {
	now := t.clock()
	if t.pending.oldest.IsZero() {
		t.pending.oldest = now
	}
	t.counts.lastQueued = now
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func (t *Tracker) unfileSlice(owner ServiceName, name string) {
	rest := withoutSlice(t.slices.Value(owner), name)
	if len(rest) == 0 {
		t.slices.Delete(owner)
		return
	}
	t.slices.Set(owner, rest)
}

func (t *Tracker) logRejected(err error) {
	if ignored := (*IgnoredError)(nil); errors.As(err, &ignored) {
		t.log.Debug("object ignored", zap.Error(err))
		return
	}
	t.log.Warn("object cannot be programmed, skipped", zap.Error(err))
}

// withSlice returns a new list with s added or replacing its namesake; the
// list passed in may be shared with a snapshot and is not modified.
func withSlice(list []*EndpointSlice, s *EndpointSlice) []*EndpointSlice {
	i, found := slices.BinarySearchFunc(list, s.Name, compareSliceName)
	out := make([]*EndpointSlice, 0, len(list)+1)
	out = append(out, list[:i]...)
	out = append(out, s)
	if found {
		i++
	}
	return append(out, list[i:]...)
}

func withoutSlice(list []*EndpointSlice, name string) []*EndpointSlice {
	i, found := slices.BinarySearchFunc(list, name, compareSliceName)
	if !found {
		return list
	}
	out := make([]*EndpointSlice, 0, len(list)-1)
	out = append(out, list[:i]...)
	return append(out, list[i+1:]...)
}

func findSlice(list []*EndpointSlice, name string) *EndpointSlice {
	if i, found := slices.BinarySearchFunc(list, name, compareSliceName); found {
		return list[i]
	}
	return nil
}

func compareSliceName(s *EndpointSlice, name string) int { return strings.Compare(s.Name, name) }

func cloneNode(n model.NodeInfo) model.NodeInfo {
	n.Addresses = slices.Clone(n.Addresses)
	n.PodCIDRs = slices.Clone(n.PodCIDRs)
	return n
}

func nodeEqual(a, b model.NodeInfo) bool {
	return a.Name == b.Name && a.Zone == b.Zone &&
		slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.PodCIDRs, b.PodCIDRs)
}

// Service returns the parsed Service called name.
func (s *Snapshot) Service(name ServiceName) (*Service, bool) {
	return s.services.Get(name)
}

// Services yields every service, in no particular order.
func (s *Snapshot) Services() iter.Seq[*Service] {
	return func(yield func(*Service) bool) {
		for _, svc := range s.services.All() {
			if !yield(svc) {
				return
			}
		}
	}
}

// NumServices counts the services in the snapshot.
func (s *Snapshot) NumServices() int { return s.services.Len() }

// EndpointSlices returns the slices filed under a service, sorted by name.
// Slices may exist for a service that does not (yet).
func (s *Snapshot) EndpointSlices(name ServiceName) []*EndpointSlice { return s.slices.Value(name) }
