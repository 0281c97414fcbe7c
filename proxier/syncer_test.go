package proxier

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

// recordingBackend remembers what each Sync was given and fails on demand.
type recordingBackend struct {
	family  model.Family
	fail    bool
	recheck time.Duration // what each Sync asks for
	calls   []backendCall
	checked []*model.NodeView // what each Intact was given
}

type backendCall struct{ view, prev *model.NodeView }

func (b *recordingBackend) Family() model.Family { return b.family }
func (b *recordingBackend) Sync(_ context.Context, view, prev *model.NodeView) (model.SyncResult, error) {
	b.calls = append(b.calls, backendCall{view, prev})
	if b.fail {
		return model.SyncResult{}, errors.New("iptables-restore: line 3 failed")
	}
	return model.SyncResult{Full: prev == nil, RecheckAfter: b.recheck}, nil
}
func (b *recordingBackend) Intact(_ context.Context, applied *model.NodeView) (bool, error) {
	b.checked = append(b.checked, applied)
	return true, nil
}
func (b *recordingBackend) Inspect(context.Context, *model.NodeView) (map[model.ServicePortName][]model.KernelObject, error) {
	return nil, nil
}
func (b *recordingBackend) Cleanup(context.Context) error { return nil }

type recordingCleaner struct {
	calls []backendCall
	fail  bool
}

func (c *recordingCleaner) Clean(_ context.Context, prev, next *model.NodeView) (int, error) {
	c.calls = append(c.calls, backendCall{next, prev})
	if c.fail {
		return 0, errors.New("conntrack dump interrupted")
	}
	return 1, nil
}

func clusterIPService(name, ip string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  ip,
			ClusterIPs: []string{ip},
			Ports:      []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
}

// syncerFixture is a Syncer over recording backends and a recording
// flow cleaner, fed through a real tracker.
type syncerFixture struct {
	t     *testing.T
	tr    *Tracker
	s     *Syncer
	flows *recordingCleaner
}

func newSyncerFixture(t *testing.T, backends ...Backend) *syncerFixture {
	tr := NewTracker(zap.NewNop(), time.Now)
	flows := &recordingCleaner{}
	s := NewSyncer(tr, backends, flows, clocktesting.NewFakeClock(time.Unix(0, 0)), zap.NewNop())
	return &syncerFixture{t: t, tr: tr, s: s, flows: flows}
}

// addAndSync adds a ClusterIP service, then syncs; it returns the sync's error.
func (f *syncerFixture) addAndSync(name, ip string, full bool) error {
	f.tr.UpsertService(clusterIPService(name, ip))
	_, err := f.s.Sync(context.Background(), full)
	return err
}

// mustAddAndSync is addAndSync for syncs that must succeed.
func (f *syncerFixture) mustAddAndSync(name, ip string, full bool) {
	f.t.Helper()
	if err := f.addAndSync(name, ip, full); err != nil {
		f.t.Fatal(err)
	}
}

func TestSyncerPassesPrevOnlyForPartialSyncs(t *testing.T) {
	b4 := &recordingBackend{family: model.IPv4}
	f := newSyncerFixture(t, b4)
	flows := f.flows
	f.mustAddAndSync("a", "10.96.0.1", true)
	f.mustAddAndSync("b", "10.96.0.2", false)
	if b4.calls[0].prev != nil {
		t.Fatal("first (full) sync got a prev view")
	}
	if b4.calls[1].prev != b4.calls[0].view {
		t.Fatal("partial sync did not get the previously applied view")
	}
	if got := len(b4.calls[1].view.Services); got != 2 {
		t.Fatalf("second view has %d service ports, want 2", got)
	}
	// The first cleanup has nothing to compare with (the cleaner then
	// judges the table itself); the next compares with the first view.
	if len(flows.calls) != 2 || flows.calls[0].prev != nil || flows.calls[1].prev != b4.calls[0].view {
		t.Fatalf("flow cleaner calls = %+v, want none then the first view as baselines", flows.calls)
	}
}

func TestSyncerKeepsLastGoodViewAcrossFailures(t *testing.T) {
	b4 := &recordingBackend{family: model.IPv4}
	b6 := &recordingBackend{family: model.IPv6}
	f := newSyncerFixture(t, b4, b6)
	flows := f.flows
	f.mustAddAndSync("a", "10.96.0.1", true)
	good := b4.calls[0].view

	b4.fail = true
	if err := f.addAndSync("b", "10.96.0.2", false); err == nil {
		t.Fatal("a failing backend must fail the sync")
	}
	if len(b6.calls) != 2 {
		t.Fatal("one family failing must not stop the other")
	}

	b4.fail = false
	f.mustAddAndSync("c", "10.96.0.3", false)
	last := b4.calls[len(b4.calls)-1]
	if last.prev != nil {
		t.Fatal("the sync after a failed one must be full in that family, even when asked for a partial one")
	}
	if b6.calls[len(b6.calls)-1].prev == nil {
		t.Fatal("the family that did not fail must stay partial")
	}
	// The failed sync never reached the kernel, so stale flows are judged
	// against the last view that did.
	var v4Clean *backendCall
	for i := range flows.calls {
		if flows.calls[i].view == last.view {
			v4Clean = &flows.calls[i]
		}
	}
	if v4Clean == nil || v4Clean.prev != good {
		t.Fatal("conntrack cleanup after recovery did not compare against the last good view")
	}
}

// A cleanup that fails is retried from the same baseline after the next
// sync, so the stale flows it missed are not forgotten.
func TestSyncerRetriesFailedFlowCleanupFromItsBaseline(t *testing.T) {
	b4 := &recordingBackend{family: model.IPv4}
	f := newSyncerFixture(t, b4)
	flows := f.flows
	f.mustAddAndSync("a", "10.96.0.1", true)
	first := b4.calls[0].view

	flows.fail = true
	if err := f.addAndSync("b", "10.96.0.2", false); err != nil {
		t.Fatalf("a failed conntrack cleanup must not fail the sync: %v", err)
	}
	flows.fail = false
	f.mustAddAndSync("c", "10.96.0.3", false)
	third := b4.calls[2].view
	if got := flows.calls[len(flows.calls)-1]; got.prev != first || got.view != third {
		t.Fatal("the cleanup after a failed one must start from the last view it fully cleaned")
	}
	f.mustAddAndSync("d", "10.96.0.4", false)
	if got := flows.calls[len(flows.calls)-1]; got.prev != third {
		t.Fatal("after a successful cleanup the baseline moves on")
	}
}

// The runner is asked for the earliest recheck any backend wants, and the
// integrity check is given each family's last applied view.
func TestSyncerPassesRechecksAndAppliedViews(t *testing.T) {
	b4 := &recordingBackend{family: model.IPv4, recheck: 5 * time.Second}
	b6 := &recordingBackend{family: model.IPv6, recheck: 2 * time.Second}
	f := newSyncerFixture(t, b4, b6)
	if !f.s.Intact(context.Background()) || len(b4.checked)+len(b6.checked) != 0 {
		t.Fatal("before any sync there is nothing to check")
	}
	f.tr.UpsertService(clusterIPService("a", "10.96.0.1"))
	recheck, err := f.s.Sync(context.Background(), true)
	if err != nil || recheck != 2*time.Second {
		t.Fatalf("Sync = %v, %v; want the earliest recheck, 2s", recheck, err)
	}
	if !f.s.Intact(context.Background()) || len(b4.checked) != 1 || b4.checked[0] != b4.calls[0].view {
		t.Fatal("Intact must be given the view the backend last applied")
	}
}

// Each family's report tells what its conntrack cleanup did (kube-proxy's
// conntrack_reconciler_* metrics); a family that failed ran none.
func TestSyncerReportsConntrackCleanup(t *testing.T) {
	b4 := &recordingBackend{family: model.IPv4}
	b6 := &recordingBackend{family: model.IPv6, fail: true}
	f := newSyncerFixture(t, b4, b6)
	var got *SyncReport
	f.s.Observe(func(r *SyncReport) { got = r })
	_ = f.addAndSync("a", "10.96.0.1", true)
	if ct := got.Families[0].Conntrack; ct == nil || ct.Deleted != 1 || ct.Err != nil {
		t.Errorf("IPv4 cleanup report %+v, want 1 entry deleted", ct)
	}
	if ct := got.Families[1].Conntrack; ct != nil {
		t.Errorf("IPv6 failed, yet reports a cleanup %+v", ct)
	}
	f.flows.fail = true
	_ = f.addAndSync("b", "10.96.0.2", false)
	if ct := got.Families[0].Conntrack; ct == nil || ct.Err == nil {
		t.Errorf("a failed cleanup reports %+v, want its error", ct)
	}
}
