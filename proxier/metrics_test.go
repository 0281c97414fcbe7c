package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// scrape gathers reg into "name{label=value,...}" -> value; a histogram
// gives name_count and name_sum, and name_bucket for each upper bound.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := func(suffix string, extra ...string) string {
				return fmt.Sprintf("%s%s{%s}", mf.GetName(), suffix, strings.Join(append(slices.Clone(labels), extra...), ","))
			}
			switch {
			case m.GetHistogram() != nil:
				h := m.GetHistogram()
				out[key("_count")] = float64(h.GetSampleCount())
				out[key("_sum")] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					out[key("_bucket", fmt.Sprintf("le=%g", b.GetUpperBound()))] = float64(b.GetCumulativeCount())
				}
			case m.GetCounter() != nil:
				out[key("")] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key("")] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func endpointAt(addr string, local bool) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddrPort(addr), Local: local, Ready: true, Serving: true}
}

// noLocalView has the ports kube-proxy counts: internal policy Local with
// endpoints elsewhere only (with and without a node port), external policy
// Local without a local endpoint, one that is fine and one with no
// endpoints at all (counted nowhere).
func noLocalView(fam model.Family) *model.NodeView {
	port := func(name string) model.ServicePortName {
		return model.ServicePortName{Namespace: "ns", Name: name, Port: "http", Protocol: model.TCP}
	}
	remote := []model.Endpoint{endpointAt("10.0.1.5:8080", false)}
	return &model.NodeView{Family: fam, Services: map[model.ServicePortName]*model.ServicePort{
		port("internal-local"): {Name: port("internal-local"), InternalPolicyLocal: true, ExternalClusterEndpoints: remote, NodePort: 30001, HasEndpoints: true},
		port("internal-only"):  {Name: port("internal-only"), InternalPolicyLocal: true, HasEndpoints: true},
		port("external-local"): {Name: port("external-local"), ExternalPolicyLocal: true, NodePort: 30002, ClusterEndpoints: remote, HasEndpoints: true},
		port("fine"):           {Name: port("fine"), ClusterEndpoints: remote, HasEndpoints: true},
		port("no-endpoints"):   {Name: port("no-endpoints"), InternalPolicyLocal: true},
	}}
}

func TestMetricsFromSyncReport(t *testing.T) {
	clock := clocktesting.NewFakeClock(t0.Add(-time.Minute))
	tracker := NewTracker(zap.NewNop(), clock.Now) // made before the trigger below
	clock.SetTime(t0)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, tracker, []model.Family{model.IPv4, model.IPv6}, "iptables", clock)

	tracker.UpsertService(webService())
	tracker.UpsertEndpointSlice(pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080),
		pt.Endpoints(pt.Ready("10.0.0.1", "node-a")), pt.TriggerTime(t0.Add(-1500*time.Millisecond).Format(time.RFC3339Nano))))
	snap := tracker.Snapshot()
	clock.Step(time.Second) // the sync ends 2.5s after the trigger

	m.Observe(&SyncReport{Full: false, Snapshot: snap, Families: []FamilyReport{
		{Family: model.IPv4, View: noLocalView(model.IPv4), Duration: 30 * time.Millisecond,
			Result:    model.SyncResult{Full: true, Tables: &model.TableRules{FilterWritten: 3, NATWritten: 40, FilterTotal: 5, NATTotal: 120}},
			Conntrack: &ConntrackReport{Duration: 5 * time.Millisecond, Deleted: 3}},
		{Family: model.IPv6, View: noLocalView(model.IPv6), Result: model.SyncResult{RestoreFailed: true},
			Err: errors.New("ip6tables-restore: exit status 1"), Duration: 3 * time.Millisecond},
	}})
	probes := m.InstrumentHealth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("down") {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	for _, target := range []string{"/healthz", "/healthz?down", "/livez", "/other"} {
		probes.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, target, nil))
	}
	clock.Step(time.Second)
	tracker.UpsertEndpointSlice(pt.Slice("ns", "web-1", "web", pt.SlicePort("http", "TCP", 8080), pt.Endpoints(pt.Ready("10.0.0.2", "node-a"))))

	got := scrape(t, reg)
	synced := float64(t0.Add(time.Second).Unix())
	queued := float64(t0.Add(2 * time.Second).Unix())
	want := map[string]float64{
		"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=IPv4}":                           1,
		"kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=IPv4}":                             0.03,
		"kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=IPv4,le=0.032}":                 1,
		"kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=IPv4,le=0.016}":                 0,
		"kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=IPv4}":                      1,
		"kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=IPv6}":                   1,
		"kubeproxy_network_programming_duration_seconds_count{ip_family=IPv4}":                        1,
		"kubeproxy_network_programming_duration_seconds_sum{ip_family=IPv4}":                          2.5,
		"kubeproxy_network_programming_duration_seconds_bucket{ip_family=IPv4,le=2}":                  0,
		"kubeproxy_network_programming_duration_seconds_bucket{ip_family=IPv4,le=3}":                  1,
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=IPv4}":                           synced,
		"kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=IPv6}":                  1,
		"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip_family=IPv6}":          1,
		"svcproxy_sync_failures_total{ip_family=IPv6,mode=iptables}":                                  1,
		"svcproxy_sync_failures_total{ip_family=IPv4,mode=iptables}":                                  0,
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=IPv4,traffic_policy=internal}": 2,
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=IPv4,traffic_policy=external}": 1,
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending{}":                                       1,
		"kubeproxy_sync_proxy_rules_endpoint_changes_total{}":                                         2,
		"kubeproxy_sync_proxy_rules_service_changes_pending{}":                                        0,
		"kubeproxy_sync_proxy_rules_service_changes_total{}":                                          2, // one event, two families
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=IPv4}":                    queued,
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=IPv6}":                    queued,
		"kubeproxy_proxy_healthz_total{code=200}":                                                     1,
		"kubeproxy_proxy_healthz_total{code=503}":                                                     1,
		"kubeproxy_proxy_livez_total{code=200}":                                                       1,
		"kubeproxy_sync_proxy_rules_iptables_total{ip_family=IPv4,table=filter}":                      5,
		"kubeproxy_sync_proxy_rules_iptables_total{ip_family=IPv4,table=nat}":                         120,
		"kubeproxy_sync_proxy_rules_iptables_last{ip_family=IPv4,table=filter}":                       3,
		"kubeproxy_sync_proxy_rules_iptables_last{ip_family=IPv4,table=nat}":                          40,
		"kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=IPv4}":                  1,
		"kubeproxy_conntrack_reconciler_sync_duration_seconds_sum{ip_family=IPv4}":                    0.005,
		"kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=IPv4}":                        3,
		"kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=IPv6}":                        0,
		"kubeproxy_iptables_ct_state_invalid_dropped_packets_total{}":                                 0,
		"kubeproxy_iptables_localhost_nodeports_accepted_packets_total{}":                             0,
	}
	var wrong []string
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			wrong = append(wrong, fmt.Sprintf("%s = %v (present %v), want %v", k, g, ok, v))
		}
	}
	// A failed sync is no successful sync: IPv6 has no last timestamp and
	// observes no programming latency.
	for _, absent := range []string{
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=IPv6}",
		"kubeproxy_network_programming_duration_seconds_count{ip_family=IPv6}",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=IPv4}",
		"kubeproxy_sync_proxy_rules_iptables_total{ip_family=IPv6,table=nat}",
		"kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=IPv6}",
	} {
		if _, ok := got[absent]; ok {
			wrong = append(wrong, absent+" is present")
		}
	}
	sort.Strings(wrong)
	for _, w := range wrong {
		t.Error(w)
	}
}

// A sync that fails elsewhere than in iptables-restore (a netlink request
// of the IPVS mode) counts as a failed sync, not as a restore failure.
func TestMetricsCountOnlyRestoreFailuresAsSuch(t *testing.T) {
	clock := clocktesting.NewFakeClock(t0)
	tracker := NewTracker(zap.NewNop(), clock.Now)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, tracker, []model.Family{model.IPv4}, "ipvs", clock)
	m.Observe(&SyncReport{Snapshot: tracker.Snapshot(), Families: []FamilyReport{
		{Family: model.IPv4, Err: errors.New("adding real server: file exists")},
	}})
	got := scrape(t, reg)
	for name, want := range map[string]float64{
		"svcproxy_sync_failures_total{ip_family=IPv4,mode=ipvs}":                     1,
		"kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=IPv4}": 0,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

func TestMetricsBucketsMatchKubeProxy(t *testing.T) {
	if len(syncBuckets) != 15 || syncBuckets[0] != 0.001 || syncBuckets[14] != 16.384 {
		t.Errorf("sync buckets %v, want 0.001 doubling to 16.384", syncBuckets)
	}
	b := programmingBuckets()
	// 0, then 2 + 59 + 12 + 7 steps, the last at 5 minutes.
	if len(b) != 81 || b[0] != 0 || b[1] != 0.25 || b[3] != 1 || b[62] != 60 || b[74] != 120 || b[80] != 300 {
		t.Errorf("network programming buckets %v", b)
	}
}

// Only changes made since svcproxy started count towards the programming
// latency (a restart replays every slice with the time of its last
// change), each in its slice's family, as in kube-proxy.
func TestMetricsProgrammingLatencyOnlyOfChangesSinceStart(t *testing.T) {
	clock := clocktesting.NewFakeClock(t0)
	tracker := NewTracker(zap.NewNop(), clock.Now)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, tracker, []model.Family{model.IPv4, model.IPv6}, "iptables", clock)
	at := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339Nano) }

	tracker.UpsertEndpointSlice(pt.Slice("ns", "old", "web", pt.SlicePort("http", "TCP", 8080),
		pt.Endpoints(pt.Ready("10.0.0.1", "node-a")), pt.TriggerTime(at(-time.Hour))))
	clock.Step(2 * time.Second)
	tracker.UpsertEndpointSlice(pt.Slice("ns", "new", "web", pt.AddressType("IPv6"), pt.SlicePort("http", "TCP", 8080),
		pt.Endpoints(pt.Ready("fd00::1", "node-a")), pt.TriggerTime(at(time.Second))))
	snap := tracker.Snapshot()
	clock.Step(time.Second)
	m.Observe(&SyncReport{Snapshot: snap, Families: []FamilyReport{{Family: model.IPv4}, {Family: model.IPv6}}})

	got := scrape(t, reg)
	if n := got["kubeproxy_network_programming_duration_seconds_count{ip_family=IPv6}"]; n != 1 {
		t.Errorf("IPv6 observations %v, want 1 (the change made after the start)", n)
	}
	if sum := got["kubeproxy_network_programming_duration_seconds_sum{ip_family=IPv6}"]; sum != 2 {
		t.Errorf("IPv6 latency %vs, want 2s", sum)
	}
	if n, ok := got["kubeproxy_network_programming_duration_seconds_count{ip_family=IPv4}"]; ok {
		t.Errorf("IPv4 observed %v latencies: the replayed slice's change predates the start, and the new slice is IPv6", n)
	}
}

// kube-proxy has a change tracker per family: a dual-stack kube-proxy
// counts each Service event once per family and each slice event in its
// family only.
func TestMetricsChangeTotalsPerFamilyAsKubeProxy(t *testing.T) {
	tracker := NewTracker(zap.NewNop(), func() time.Time { return t0 })
	tracker.UpsertService(webService())
	tracker.UpsertService(webService()) // a resync: counted
	tracker.UpsertEndpointSlice(webSlice("web-1", "10.0.0.1"))
	tracker.UpsertEndpointSlice(pt.Slice("ns", "web-2", "web", pt.AddressType("IPv6"), pt.SlicePort("http", "TCP", 8080),
		pt.Endpoints(pt.Ready("fd00::1", "node-a"))))
	for _, c := range []struct {
		families         []model.Family
		services, slices float64
	}{
		{[]model.Family{model.IPv4, model.IPv6}, 4, 2},
		{[]model.Family{model.IPv4}, 2, 1},
		{[]model.Family{model.IPv6}, 2, 1},
	} {
		reg := prometheus.NewRegistry()
		NewMetrics(reg, tracker, c.families, "iptables", clocktesting.NewFakeClock(t0))
		got := scrape(t, reg)
		if s, e := got["kubeproxy_sync_proxy_rules_service_changes_total{}"], got["kubeproxy_sync_proxy_rules_endpoint_changes_total{}"]; s != c.services || e != c.slices {
			t.Errorf("%v: service_changes_total %v, endpoint_changes_total %v; want %v, %v", c.families, s, e, c.services, c.slices)
		}
	}
}

// As in kube-proxy, the rule counts and the nfacct counters are iptables
// mode metrics; the conntrack reconciler's are in both modes.
func TestMetricsOfEachMode(t *testing.T) {
	for _, c := range []struct {
		mode    string
		present bool
	}{{"iptables", true}, {"ipvs", false}} {
		reg := prometheus.NewRegistry()
		m := NewMetrics(reg, NewTracker(zap.NewNop(), time.Now), []model.Family{model.IPv4}, c.mode, clocktesting.NewFakeClock(t0))
		tables := &model.TableRules{NATTotal: 1}
		if c.mode != "iptables" {
			tables = nil
		}
		m.Observe(&SyncReport{Snapshot: &Snapshot{}, Families: []FamilyReport{{Family: model.IPv4, Result: model.SyncResult{Tables: tables}}}})
		got := scrape(t, reg)
		for _, name := range []string{
			"kubeproxy_sync_proxy_rules_iptables_total{ip_family=IPv4,table=nat}",
			"kubeproxy_iptables_ct_state_invalid_dropped_packets_total{}",
			"kubeproxy_iptables_localhost_nodeports_accepted_packets_total{}",
		} {
			if _, ok := got[name]; ok != c.present {
				t.Errorf("%s mode: %s present %v, want %v", c.mode, name, ok, c.present)
			}
		}
		if _, ok := got["kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=IPv4}"]; !ok {
			t.Errorf("%s mode: no conntrack_reconciler_deleted_entries_total", c.mode)
		}
	}
}

type fakePacketCounter struct {
	recordingBackend
	n model.PacketCounts
}

func (c *fakePacketCounter) PacketCounts(context.Context) (model.PacketCounts, error) {
	return c.n, nil
}

// iptables_ct_state_invalid_dropped_packets_total and
// iptables_localhost_nodeports_accepted_packets_total sum the families'
// counts (kube-proxy's one nfacct object of each counts both).
func TestMetricsPacketCountersSumTheBackends(t *testing.T) {
	reg := prometheus.NewRegistry()
	clk := clocktesting.NewFakeClock(t0)
	m := NewMetrics(reg, NewTracker(zap.NewNop(), time.Now), []model.Family{model.IPv4, model.IPv6}, "iptables", clk)
	const invalid = "kubeproxy_iptables_ct_state_invalid_dropped_packets_total{}"
	const localhost = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total{}"
	expect := func(what string, wantInvalid, wantLocalhost float64) {
		t.Helper()
		got := scrape(t, reg)
		if got[invalid] != wantInvalid || got[localhost] != wantLocalhost {
			t.Errorf("%s: invalid %v, localhost %v; want %v, %v", what, got[invalid], got[localhost], wantInvalid, wantLocalhost)
		}
	}
	expect("before the backends are known", 0, 0)
	v4 := &fakePacketCounter{recordingBackend: recordingBackend{family: model.IPv4}, n: model.PacketCounts{InvalidDropped: 4, LocalhostNodePortsAccepted: 2}}
	v6 := &fakePacketCounter{recordingBackend: recordingBackend{family: model.IPv6}, n: model.PacketCounts{InvalidDropped: 3}}
	m.CountPackets([]Backend{v4, v6, &recordingBackend{family: model.IPv4}})
	m.RefreshPacketCounts(context.Background())
	expect("first reading", 7, 2)
	// Scrapes report the last reading; readings come at most every 15 s.
	v4.n = model.PacketCounts{InvalidDropped: 10, LocalhostNodePortsAccepted: 5}
	m.RefreshPacketCounts(context.Background())
	expect("read again within 15 s: the last reading", 7, 2)
	clk.Step(15 * time.Second)
	m.RefreshPacketCounts(context.Background())
	expect("after more packets", 13, 5)
}
