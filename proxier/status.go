package proxier

import (
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/svcproxy/svcproxy/model"
)

// Status is what svcproxy believes as of its last sync: for each family
// the view it wants the kernel to hold, how its last sync went and, per
// service port, the last sync that changed the port's programming. It is
// immutable once published, so the status endpoint reads it from any
// goroutine without a lock.
type Status struct {
	// Snapshot is what the last sync computed from: the services and
	// slices that explain each port's endpoints.
	Snapshot *Snapshot
	Families []FamilyStatus
}

// FamilyStatus is one family's part of a Status.
type FamilyStatus struct {
	Family model.Family
	// Wanted is the view the last sync computed: what the kernel should
	// hold. When that sync failed, the kernel may hold less.
	Wanted *model.NodeView
	// LastSync is the last sync of the family; LastError its error, ""
	// when it succeeded; LastSuccess when one last succeeded.
	LastSync    SyncInfo
	LastError   string
	LastSuccess time.Time
	// Programmed holds, per port, the last successful sync that changed
	// what the port needs of the kernel.
	Programmed *PortSyncs

	applied *model.NodeView
}

// SyncInfo is one sync as it concerns a port or a family.
type SyncInfo struct {
	At   time.Time     `json:"at"` // when the sync ended
	Full bool          `json:"full"`
	Took time.Duration `json:"took"`
	// Waited is how long the change to the port's service had been
	// queued when the sync ended: from the API event to the kernel. Zero
	// when no change of the service was queued (a change of the node, a
	// start).
	Waited time.Duration `json:"waited,omitempty"`
}

// StatusRecorder publishes a Status after every sync; its Observe is a
// sync observer (the runner's goroutine), Current may be called from any.
type StatusRecorder struct {
	cur atomic.Pointer[Status]
}

// Current is the status of the last sync; nil before the first.
func (s *StatusRecorder) Current() *Status { return s.cur.Load() }

// Observe records a sync.
func (s *StatusRecorder) Observe(r *SyncReport) {
	prev := s.cur.Load()
	next := &Status{Snapshot: r.Snapshot}
	end := r.Start.Add(r.Duration)
	for _, f := range r.Families {
		var fs FamilyStatus
		if prev != nil {
			if i := slices.IndexFunc(prev.Families, func(p FamilyStatus) bool { return p.Family == f.Family }); i >= 0 {
				fs = prev.Families[i]
			}
		}
		fs.Family, fs.Wanted = f.Family, f.View
		fs.LastSync = SyncInfo{At: end, Full: r.Full || f.Result.Full, Took: f.Duration}
		fs.LastError = ""
		if f.Err != nil {
			fs.LastError = f.Err.Error()
		} else {
			fs.LastSuccess = end
			fs.Programmed = programmed(fs.Programmed, fs.applied, f.View, fs.LastSync, r.Snapshot)
			fs.applied = f.View
		}
		next.Families = append(next.Families, fs)
	}
	s.cur.Store(next)
}

// PortSyncs maps service ports to a SyncInfo each. It is immutable: an
// update makes a new one that shares what did not change, so that a sync
// changing one port of 10,000 copies a shard of them, not all.
type PortSyncs struct {
	shards [portShards]map[model.ServicePortName]SyncInfo
}

const portShards = 64

// Get returns a port's record.
func (p *PortSyncs) Get(name model.ServicePortName) (SyncInfo, bool) {
	if p == nil {
		return SyncInfo{}, false
	}
	info, ok := p.shards[portShard(name)][name]
	return info, ok
}

// portShard spreads ports over the shards by service.
func portShard(name model.ServicePortName) int {
	return int(shardOf(name.Namespace, name.Name) % portShards)
}

// programmed updates the per-port record with the ports a successful sync
// changed, from applied (the view of the last one; nil: every port) to
// view. Only the shards holding a changed port are copied: the published
// record is never modified.
func programmed(old *PortSyncs, applied, view *model.NodeView, sync SyncInfo, snap *Snapshot) *PortSyncs {
	if applied == nil {
		applied = &model.NodeView{Family: view.Family}
	}
	changed := model.ChangedPorts(view, applied)
	if len(changed) == 0 && old != nil {
		return old
	}
	out := &PortSyncs{}
	if old != nil {
		*out = *old
	}
	copied := [portShards]bool{}
	for _, name := range changed {
		shard := portShard(name)
		if !copied[shard] {
			out.shards[shard] = maps.Clone(out.shards[shard])
			if out.shards[shard] == nil {
				out.shards[shard] = map[model.ServicePortName]SyncInfo{}
			}
			copied[shard] = true
		}
		if _, ok := view.Services[name]; !ok {
			delete(out.shards[shard], name)
			continue
		}
		info := sync
		if queued, ok := snap.ChangeQueued[ServiceName{Namespace: name.Namespace, Name: name.Name}]; ok {
			info.Waited = sync.At.Sub(queued)
		}
		out.shards[shard][name] = info
	}
	return out
}
