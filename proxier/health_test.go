package proxier

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

// healthBed is a Health over a real tracker, both on one fake clock; sync
// plays one sync of the given families the way the runner and syncer do.
type healthBed struct {
	clock    *clocktesting.FakeClock
	tracker  *Tracker
	health   *Health
	families []model.Family
}

func newHealthBed(families ...model.Family) *healthBed {
	b := &healthBed{clock: clocktesting.NewFakeClock(t0), families: families}
	b.tracker = NewTracker(zap.NewNop(), b.clock.Now)
	b.health = NewHealth(HealthConfig{Timeout: time.Minute, Pending: b.tracker.OldestPending, Clock: b.clock})
	b.health.SetNode(&v1.Node{})
	return b
}

// sync runs one sync through Track: during is called while it runs, and
// failed lists the families whose backend fails.
func (b *healthBed) sync(during func(), failed ...model.Family) {
	fams := b.families
	sync := b.health.Track(func(context.Context, bool) (time.Duration, error) {
		snap := b.tracker.Snapshot()
		if during != nil {
			during()
		}
		r := &SyncReport{Snapshot: snap}
		for _, f := range fams {
			fr := FamilyReport{Family: f}
			for _, bad := range failed {
				if bad == f {
					fr.Err = errors.New("iptables-restore failed")
				}
			}
			r.Families = append(r.Families, fr)
		}
		b.health.Observe(r)
		return 0, r.Err()
	})
	_, _ = sync(context.Background(), false)
}

func (b *healthBed) change() { b.tracker.UpsertService(webService()) }

func (b *healthBed) get(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	b.health.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", path, rec.Body.String(), err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	return rec.Code, body
}

func TestHealthStartupWaitDoesNotCount(t *testing.T) {
	b := newHealthBed(model.IPv4)
	b.change()
	b.clock.Step(10 * time.Minute) // informers and the Node wait took long
	if !b.health.Healthy() {
		t.Fatal("unhealthy before the first sync started")
	}
	b.sync(func() {
		if !b.health.Healthy() {
			t.Error("unhealthy at the start of the first sync because of the time spent before it")
		}
	})
	if !b.health.Healthy() {
		t.Fatal("unhealthy after a successful first sync")
	}
}

func TestHealthPendingChangeTimesOut(t *testing.T) {
	b := newHealthBed(model.IPv4)
	b.sync(nil)
	synced := b.clock.Now()

	b.clock.Step(5 * time.Minute)
	b.change()
	b.clock.Step(59 * time.Second)
	if code, _ := b.get(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("change pending 59s of a 1m timeout: /healthz %d, want 200", code)
	}
	b.clock.Step(time.Second)
	code, body := b.get(t, "/healthz")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("change pending 1m: /healthz %d, want 503", code)
	}
	if got := body["lastUpdated"]; got != synced.Format(time.RFC3339Nano) {
		t.Errorf("unhealthy lastUpdated %v, want the last successful sync %v", got, synced)
	}
	if code, _ := b.get(t, "/livez"); code != http.StatusServiceUnavailable {
		t.Errorf("/livez %d while a change is late, want 503", code)
	}

	b.sync(nil)
	code, body = b.get(t, "/healthz")
	if code != http.StatusOK {
		t.Fatalf("after the sync: /healthz %d, want 200", code)
	}
	now := b.clock.Now().Format(time.RFC3339Nano)
	if body["lastUpdated"] != now || body["currentTime"] != now || body["nodeEligible"] != true {
		t.Errorf("healthy body %v: want lastUpdated = currentTime = %s, nodeEligible true", body, now)
	}
}

func TestHealthFailedSyncKeepsChangeWaitingUntilSuccess(t *testing.T) {
	b := newHealthBed(model.IPv4, model.IPv6)
	b.sync(nil)
	b.change()
	b.sync(nil, model.IPv6) // IPv4 programmed the change, IPv6 did not
	b.clock.Step(30 * time.Second)
	b.sync(nil, model.IPv6) // a retry with nothing new fails again
	if !b.health.Healthy() {
		t.Fatal("unhealthy 30s after the change")
	}
	b.clock.Step(30 * time.Second)
	if b.health.Healthy() {
		t.Fatal("healthy although IPv6 has not programmed a change queued 1m ago")
	}
	b.sync(nil)
	if !b.health.Healthy() {
		t.Fatal("unhealthy after both families synced")
	}
}

func TestHealthStuckSyncTimesOut(t *testing.T) {
	b := newHealthBed(model.IPv4)
	b.sync(nil)
	b.change()
	b.sync(func() {
		// The sync took the change from the tracker, then hangs.
		b.clock.Step(2 * time.Minute)
		if b.health.Healthy() {
			t.Error("healthy while a sync holding a 2m old change hangs")
		}
	})
	if !b.health.Healthy() {
		t.Fatal("unhealthy once the stuck sync went through")
	}
}

func TestHealthNodeBeingDeletedFailsHealthzOnly(t *testing.T) {
	b := newHealthBed(model.IPv4)
	b.sync(nil)
	now := metav1.NewTime(t0)
	cases := []struct {
		name     string
		node     *v1.Node
		eligible bool
	}{
		{"plain node", &v1.Node{}, true},
		{"deletion timestamp", &v1.Node{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}}, false},
		{"autoscaler taint", &v1.Node{Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: toBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}}, false},
		{"node gone", nil, false},
	}
	for _, c := range cases {
		b.health.SetNode(c.node)
		code, body := b.get(t, "/healthz")
		if (code == http.StatusOK) != c.eligible || body["nodeEligible"] != c.eligible {
			t.Errorf("%s: /healthz %d %v, want eligible=%v", c.name, code, body, c.eligible)
		}
		code, body = b.get(t, "/livez")
		if _, has := body["nodeEligible"]; code != http.StatusOK || has {
			t.Errorf("%s: /livez %d %v, want 200 without nodeEligible", c.name, code, body)
		}
	}
}

// raw fetches path and returns the status code and the body as sent.
func (b *healthBed) raw(path string) (int, string) {
	rec := httptest.NewRecorder()
	b.health.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// Before its Node object is seen, kube-proxy's NodeManager has no node, so
// /healthz is 503 with nodeEligible false; /livez does not care.
func TestHealthNodeNotYetKnownIsNotEligible(t *testing.T) {
	clock := clocktesting.NewFakeClock(t0)
	tracker := NewTracker(zap.NewNop(), clock.Now)
	h := NewHealth(HealthConfig{Timeout: time.Minute, Pending: tracker.OldestPending, Clock: clock})
	b := &healthBed{clock: clock, tracker: tracker, health: h}
	code, body := b.get(t, "/healthz")
	if code != http.StatusServiceUnavailable || body["nodeEligible"] != false || body["healthy"] != true {
		t.Errorf("/healthz before the Node is known: %d %v, want 503, nodeEligible false, healthy true", code, body)
	}
	if code, body := b.get(t, "/livez"); code != http.StatusOK {
		t.Errorf("/livez before the Node is known: %d %v, want 200", code, body)
	}
	h.SetNode(&v1.Node{})
	if code, body := b.get(t, "/healthz"); code != http.StatusOK || body["nodeEligible"] != true {
		t.Errorf("/healthz once the Node is known: %d %v, want 200, nodeEligible true", code, body)
	}
	h.SetNode(nil)
	if code, body := b.get(t, "/healthz"); code != http.StatusServiceUnavailable || body["nodeEligible"] != false {
		t.Errorf("/healthz after the Node was deleted: %d %v, want 503, nodeEligible false", code, body)
	}
}

// The bodies are kube-proxy's ProxyHealth as it marshals it: the same
// fields in the same order, status by family from the sync loop's start,
// lastUpdated the latest success of any family when unhealthy.
func TestHealthBodiesAreKubeProxys(t *testing.T) {
	b := newHealthBed(model.IPv4, model.IPv6)
	ts := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339Nano) }
	expect := func(path string, code int, body string) {
		t.Helper()
		gotCode, got := b.raw(path)
		if gotCode != code || got != body {
			t.Errorf("%s:\n got %d %s\nwant %d %s", path, gotCode, got, code, body)
		}
	}
	expect("/healthz", 200, `{"lastUpdated":"`+ts(0)+`","currentTime":"`+ts(0)+`","nodeEligible":true,"healthy":true}`)
	expect("/livez", 200, `{"lastUpdated":"`+ts(0)+`","currentTime":"`+ts(0)+`","healthy":true}`)

	b.health.Start(b.families) // the sync loop starts at t0
	b.clock.Step(time.Second)
	b.sync(nil) // both families synced at t0+1s
	b.clock.Step(time.Second)
	b.change()
	b.sync(nil, model.IPv6) // IPv4 programs the change at t0+2s, IPv6 fails
	b.clock.Step(time.Minute)
	status := `"status":{"IPv4":{"lastUpdated":"` + ts(2*time.Second) + `","healthy":true},"IPv6":{"lastUpdated":"` + ts(time.Second) + `","healthy":false}}`
	expect("/healthz", 503, `{"lastUpdated":"`+ts(2*time.Second)+`","currentTime":"`+ts(62*time.Second)+`","nodeEligible":true,"healthy":false,`+status+`}`)
	expect("/livez", 503, `{"lastUpdated":"`+ts(2*time.Second)+`","currentTime":"`+ts(62*time.Second)+`","healthy":false,`+status+`}`)

	b.sync(nil)
	now := ts(62 * time.Second)
	status = `"status":{"IPv4":{"lastUpdated":"` + now + `","healthy":true},"IPv6":{"lastUpdated":"` + now + `","healthy":true}}`
	expect("/healthz", 200, `{"lastUpdated":"`+now+`","currentTime":"`+now+`","nodeEligible":true,"healthy":true,`+status+`}`)
}
