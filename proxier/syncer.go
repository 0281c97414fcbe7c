package proxier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"go.uber.org/zap"
	"k8s.io/utils/clock"
)

// FlowCleaner deletes connection-tracking entries that a sync made stale
// (UDP and SCTP flows pinned to endpoints that are gone). prev is nil on
// the first sync of a process: the cleaner must then judge the entries it
// finds against next, deleting only those next makes stale (never a flush).
// It returns how many entries it deleted, which it may do in part when it
// fails.
type FlowCleaner interface {
	Clean(ctx context.Context, prev, next *model.NodeView) (int, error)
}

// SyncReport tells what one sync did, for metrics, health and logs.
type SyncReport struct {
	Start    time.Time
	Duration time.Duration
	Full     bool
	// Snapshot is what the sync computed from, with the changes it took
	// (their queue times and trigger times feed the latency metrics).
	Snapshot *Snapshot
	Families []FamilyReport
}

// Err joins the errors of every family.
func (r *SyncReport) Err() error {
	var errs []error
	for _, f := range r.Families {
		if f.Err != nil {
			errs = append(errs, f.Err)
		}
	}
	return errors.Join(errs...)
}

// FamilyReport is one backend's part of a sync.
type FamilyReport struct {
	Family   model.Family
	View     *model.NodeView // what the backend was asked to program
	Result   model.SyncResult
	Err      error
	Duration time.Duration // this family's compute, apply and conntrack cleanup
	// Conntrack is what the stale-flow cleanup did after the family
	// synced; nil when none ran (no conntrack, or the sync failed).
	Conntrack *ConntrackReport
}

// ConntrackReport is one stale-flow cleanup, for kube-proxy's
// conntrack_reconciler_* metrics.
type ConntrackReport struct {
	Duration time.Duration
	Deleted  int // entries deleted, failed or not
	Err      error
}

// Syncer is one sync, end to end: snapshot the tracker, compute each
// family's view, let each backend program it, then drop stale flows.
type Syncer struct {
	tracker   *Tracker
	backends  []Backend
	flows     FlowCleaner // nil: no conntrack cleanup
	clock     clock.PassiveClock
	log       *zap.Logger
	observers []func(*SyncReport)

	// What is carried from one sync to the next, per family; only the
	// runner's goroutine touches it. applied is the view of the last
	// successful sync (what the kernel holds); computed is the last view
	// computed and the snapshot it came from, which lets Update redo only
	// the services that changed (it is a memo: dropping it costs time, not
	// correctness).
	applied  map[model.Family]*model.NodeView
	computed map[model.Family]computedView
	// cleaned is, per family, the view up to which stale flows are gone.
	cleaned map[model.Family]*model.NodeView
}

type computedView struct {
	snap *Snapshot
	view *model.NodeView
}

// NewSyncer wires a tracker to backends; flows may be nil.
func NewSyncer(tracker *Tracker, backends []Backend, flows FlowCleaner, clk clock.PassiveClock, log *zap.Logger) *Syncer {
	return &Syncer{
		tracker:  tracker,
		backends: backends,
		flows:    flows,
		clock:    clk,
		log:      log,
		applied:  map[model.Family]*model.NodeView{},
		computed: map[model.Family]computedView{},
		cleaned:  map[model.Family]*model.NodeView{},
	}
}

// Observe registers a function called after every sync, on the runner's goroutine.
func (s *Syncer) Observe(f func(*SyncReport)) { s.observers = append(s.observers, f) }

// Sync is a SyncFunc for the Runner: it asks for a recheck as soon as any
// backend does.
func (s *Syncer) Sync(ctx context.Context, full bool) (time.Duration, error) {
	report := &SyncReport{Start: s.clock.Now(), Full: full, Snapshot: s.tracker.Snapshot()}
	var recheck time.Duration
	for _, b := range s.backends {
		start := s.clock.Now()
		fr := s.syncFamily(ctx, b, report.Snapshot, full)
		fr.Duration = s.clock.Since(start)
		report.Families = append(report.Families, fr)
		if r := fr.Result.RecheckAfter; r > 0 && (recheck == 0 || r < recheck) {
			recheck = r
		}
	}
	report.Duration = s.clock.Since(report.Start)
	s.logReport(report)
	for _, observe := range s.observers {
		observe(report)
	}
	return recheck, report.Err()
}

func (s *Syncer) syncFamily(ctx context.Context, b Backend, snap *Snapshot, full bool) FamilyReport {
	fam := b.Family()
	last := s.computed[fam]
	view := Update(snap, fam, last.snap, last.view)
	s.computed[fam] = computedView{snap: snap, view: view}
	prev := s.applied[fam]
	basis := prev
	if full {
		basis = nil
	}
	res, err := b.Sync(ctx, view, basis)
	if err != nil {
		// The kernel may hold anything between the last applied view and
		// this one (an iptables-restore is atomic, a sequence of netlink
		// requests is not), so nothing the family applied can be trusted:
		// its next sync is full. The conntrack baseline stays where it
		// was, so the next cleanup covers this sync's changes too.
		delete(s.applied, fam)
		return FamilyReport{Family: fam, View: view, Result: res, Err: fmt.Errorf("%v: %w", fam, err)}
	}
	s.applied[fam] = view
	return FamilyReport{Family: fam, View: view, Result: res, Conntrack: s.cleanFlows(ctx, fam, view)}
}

// cleanFlows deletes the flows made stale since the last view whose stale
// flows were all deleted. A failed cleanup is not worth a resync of the
// rules, but it keeps its baseline, so the next sync deletes what this one
// could not: a UDP client that keeps a flow alive would otherwise stay
// pinned to a dead endpoint for good.
func (s *Syncer) cleanFlows(ctx context.Context, fam model.Family, view *model.NodeView) *ConntrackReport {
	if s.flows == nil {
		return nil
	}
	start := s.clock.Now()
	// With no baseline yet (the first sync of this process) the cleaner
	// judges what the table holds, which an earlier run may have left.
	n, err := s.flows.Clean(ctx, s.cleaned[fam], view)
	report := &ConntrackReport{Duration: s.clock.Since(start), Deleted: n, Err: err}
	if err != nil {
		s.log.Warn("conntrack cleanup failed; retrying after the next sync", zap.Stringer("family", fam), zap.Error(err))
		return report
	}
	s.cleaned[fam] = view
	return report
}

func (s *Syncer) logReport(r *SyncReport) {
	for _, f := range r.Families {
		fields := []zap.Field{
			zap.Stringer("family", f.Family), zap.Bool("full", f.Result.Full),
			zap.Int("servicePorts", len(f.View.Services)),
			zap.Int("written", f.Result.Written), zap.Int("deleted", f.Result.Deleted),
			zap.Int("rules", f.Result.Rules), zap.Int("bytes", f.Result.Bytes), zap.Int("kernelOps", f.Result.KernelOps),
			// The family's own time (its conntrack cleanup included),
			// and the whole sync's, which syncs the families in turn.
			zap.Duration("elapsed", f.Duration), zap.Duration("syncElapsed", r.Duration),
		}
		if ct := f.Conntrack; ct != nil {
			fields = append(fields, zap.Duration("conntrackElapsed", ct.Duration))
		}
		if f.Err != nil {
			s.log.Error("sync failed", append(fields, zap.Error(f.Err))...)
			continue
		}
		s.log.Debug("synced", fields...)
	}
}

// Intact is a CheckFunc for the Runner: every backend must be intact.
func (s *Syncer) Intact(ctx context.Context) bool {
	for _, b := range s.backends {
		applied := s.applied[b.Family()]
		if applied == nil {
			continue // nothing applied yet: the next sync is full anyway
		}
		ok, err := b.Intact(ctx, applied)
		if err != nil {
			if ctx.Err() == nil { // a check stopped for a change is no news
				s.log.Warn("integrity check failed", zap.Stringer("family", b.Family()), zap.Error(err))
			}
			return false
		}
		if !ok {
			return false
		}
	}
	return true
}
