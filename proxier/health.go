package proxier

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/model"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// toBeDeletedTaint is the taint the cluster autoscaler puts on a node it is
// about to remove; kube-proxy reports such a node as not eligible so load
// balancers drain it first.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// HealthConfig says what Health judges and how.
type HealthConfig struct {
	// Timeout is how long a change may wait to be programmed before the
	// proxy counts as unhealthy: kube-proxy uses twice the sync period.
	Timeout time.Duration
	// Pending reports the oldest change no sync has taken yet
	// (Tracker.OldestPending).
	Pending func() (time.Time, bool)
	Clock   clock.PassiveClock
}

// Health is kube-proxy's health rule: the proxy is healthy while no change
// has waited longer than the timeout to be programmed, in any family. A
// change waits from when it was queued until a sync that took it succeeds:
// while it is pending in the tracker, while a sync holding it runs (a sync
// stuck on the xtables lock must show), and after that sync failed until
// one succeeds. Time spent before the first sync starts (waiting for the
// informers and the Node) does not count, as in kube-proxy, so a slow start
// does not fail a liveness probe.
//
// /healthz also fails while the node is not eligible for traffic: before
// its Node object is known, and while it is being deleted, so load
// balancers stop sending to it; /livez does not, since restarting the
// proxy then would only make things worse.
type Health struct {
	cfg HealthConfig

	mu           sync.Mutex
	firstSync    time.Time                  // start of the first sync; zero before
	inFlight     time.Time                  // oldest change the running sync took; zero if none
	unsynced     map[model.Family]time.Time // oldest change taken by syncs that failed since the last success
	lastUpdated  map[model.Family]time.Time
	nodeEligible bool
}

// NewHealth returns a Health with nothing synced yet and no Node known:
// as in kube-proxy, a node whose Node object has not been seen is not
// eligible, so /healthz answers 503 until it is.
func NewHealth(cfg HealthConfig) *Health {
	return &Health{
		cfg:         cfg,
		unsynced:    map[model.Family]time.Time{},
		lastUpdated: map[model.Family]time.Time{},
	}
}

// Start records that the sync loop starts for these families: as
// kube-proxy's SyncLoop does, each family counts as updated now, so the
// body of /healthz names every family, with a time, even while the first
// sync fails.
func (h *Health) Start(families []model.Family) {
	now := h.cfg.Clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range families {
		if _, ok := h.lastUpdated[f]; !ok {
			h.lastUpdated[f] = now
		}
	}
}

// Track wraps the runner's sync function so Health knows which changes a
// running sync holds.
func (h *Health) Track(sync SyncFunc) SyncFunc {
	return func(ctx context.Context, full bool) (time.Duration, error) {
		h.syncStarting()
		defer h.syncEnded()
		return sync(ctx, full)
	}
}

func (h *Health) syncStarting() {
	oldest, pending := h.cfg.Pending()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.firstSync.IsZero() {
		h.firstSync = h.cfg.Clock.Now()
	}
	if pending {
		h.inFlight = oldest
	}
}

func (h *Health) syncEnded() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inFlight = time.Time{}
}

// Observe records a sync's outcome; register it with Syncer.Observe.
func (h *Health) Observe(r *SyncReport) {
	now := h.cfg.Clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range r.Families {
		if f.Err == nil {
			delete(h.unsynced, f.Family)
			h.lastUpdated[f.Family] = now
			continue
		}
		h.unsynced[f.Family] = earliest(h.unsynced[f.Family], r.Snapshot.OldestChange)
	}
}

// SetNode judges whether the node may take traffic: not when it is being
// deleted or the cluster autoscaler marked it for removal. nil means the
// Node object is gone.
func (h *Health) SetNode(node *v1.Node) {
	eligible := node != nil && node.DeletionTimestamp == nil
	if node != nil {
		for _, taint := range node.Spec.Taints {
			if taint.Key == toBeDeletedTaint {
				eligible = false
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeEligible = eligible
}

// HealthStatus is what /healthz reports.
type HealthStatus struct {
	Healthy      bool // every family keeps up (node eligibility aside)
	NodeEligible bool
	// LastUpdated is the last successful sync of any family, healthy or
	// not, as kube-proxy reports it.
	LastUpdated time.Time
	CurrentTime time.Time
	// Families has each family that started syncing: its last successful
	// sync (or the start) and whether it keeps up.
	Families map[model.Family]FamilyHealth
}

// FamilyHealth is one family's part of HealthStatus.
type FamilyHealth struct {
	LastUpdated time.Time
	Healthy     bool
}

// Status judges the proxy's health now.
func (h *Health) Status() HealthStatus {
	oldestPending, pending := h.cfg.Pending()
	now := h.cfg.Clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	st := HealthStatus{Healthy: true, NodeEligible: h.nodeEligible, CurrentTime: now,
		Families: map[model.Family]FamilyHealth{}}
	for fam, last := range h.lastUpdated {
		if last.After(st.LastUpdated) {
			st.LastUpdated = last
		}
		st.Families[fam] = FamilyHealth{LastUpdated: last, Healthy: true}
	}
	for fam := range h.unsynced {
		if _, ok := st.Families[fam]; !ok {
			st.Families[fam] = FamilyHealth{Healthy: true}
		}
	}
	if h.firstSync.IsZero() {
		return st
	}
	// Changes pending or in a running sync wait for every family; those of
	// failed syncs only for the families that failed.
	shared := h.inFlight
	if pending {
		shared = earliest(shared, oldestPending)
	}
	sharedLate := h.late(shared, now)
	st.Healthy = !sharedLate
	for fam, fh := range st.Families {
		if sharedLate || h.late(h.unsynced[fam], now) {
			fh.Healthy, st.Healthy = false, false
			st.Families[fam] = fh
		}
	}
	return st
}

// late reports whether a change queued at waiting (zero: none) has waited
// too long, not counting the time before the first sync.
func (h *Health) late(waiting, now time.Time) bool {
	if waiting.IsZero() {
		return false
	}
	if waiting.Before(h.firstSync) {
		waiting = h.firstSync
	}
	return now.Sub(waiting) >= h.cfg.Timeout
}

// Healthy reports whether every family keeps up, ignoring the node: what
// the healthCheckNodePort servers add to their answers.
func (h *Health) Healthy() bool { return h.Status().Healthy }

// earliest returns the earlier of two times, a zero time meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// Handler serves /healthz and /livez with kube-proxy's status codes and
// bodies: 200 when healthy, 503 when not (/healthz also when the node is
// not eligible), and kube-proxy's JSON: lastUpdated, currentTime,
// nodeEligible (/healthz only), healthy, and status by family (left out
// before the sync loop starts). As in kube-proxy, a healthy answer
// reports lastUpdated as the current time, for clients written when it
// meant "the sync loop last ran".
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		st := h.Status()
		body := bodyOf(st)
		body.NodeEligible = &st.NodeEligible
		answer(w, st.Healthy && st.NodeEligible, body)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		st := h.Status()
		answer(w, st.Healthy, bodyOf(st))
	})
	return mux
}

// healthzBody is kube-proxy's ProxyHealth, field for field.
type healthzBody struct {
	LastUpdated  time.Time                   `json:"lastUpdated"`
	CurrentTime  time.Time                   `json:"currentTime"`
	NodeEligible *bool                       `json:"nodeEligible,omitempty"`
	Healthy      bool                        `json:"healthy"`
	Status       map[string]familyHealthBody `json:"status,omitempty"`
}

type familyHealthBody struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

func bodyOf(st HealthStatus) healthzBody {
	body := healthzBody{LastUpdated: st.LastUpdated, CurrentTime: st.CurrentTime, Healthy: st.Healthy,
		Status: map[string]familyHealthBody{}}
	if st.Healthy {
		body.LastUpdated = st.CurrentTime
	}
	for fam, fh := range st.Families {
		body.Status[fam.String()] = familyHealthBody{LastUpdated: fh.LastUpdated, Healthy: fh.Healthy}
	}
	return body
}

func answer(w http.ResponseWriter, ok bool, body healthzBody) {
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	}
	out, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(out)
}
