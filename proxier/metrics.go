package proxier

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svcproxy/svcproxy/model"
	"k8s.io/utils/clock"
)

// Metrics records kube-proxy's metrics (pkg/proxy/metrics in Kubernetes
// 1.35: the same names, types, labels and buckets), so dashboards and
// alerts written for kube-proxy keep working. Per-family metrics carry
// ip_family="IPv4" or "IPv6".
//
// The iptables-restore failure counters count what they say, in either
// mode (the IPVS mode restores its iptables rules too); every failed sync,
// whatever failed (a netlink request in the IPVS mode, a save or jump-rule
// insert), counts in svcproxy's own svcproxy_sync_failures_total, by mode.
type Metrics struct {
	clock clock.PassiveClock

	syncDuration           *prometheus.HistogramVec
	fullSyncDuration       *prometheus.HistogramVec
	partialSyncDuration    *prometheus.HistogramVec
	programmingDuration    *prometheus.HistogramVec
	lastSynced             *prometheus.GaugeVec
	restoreFailures        *prometheus.CounterVec
	partialRestoreFailures *prometheus.CounterVec
	syncFailures           *prometheus.CounterVec
	mode                   string
	noLocalEndpoints       *prometheus.GaugeVec
	healthz                *prometheus.CounterVec
	livez                  *prometheus.CounterVec
	iptablesTotal          *prometheus.GaugeVec
	iptablesLast           *prometheus.GaugeVec
	conntrackDuration      *prometheus.HistogramVec
	conntrackDeleted       *prometheus.CounterVec
	packetCounters         atomic.Pointer[[]PacketCounter]
	// invalidDropped and localhostAccepted are the last reading of
	// packetCounters, at packetsRead: what a scrape reports.
	invalidDropped, localhostAccepted atomic.Uint64
	packetsRead                       time.Time
}

// packetCountPeriod is how often the backends' packet counters are read.
const packetCountPeriod = 15 * time.Second

// PacketCounter is a backend whose rules count the packets kube-proxy
// counts with nfacct objects (the iptables mode's).
type PacketCounter interface {
	PacketCounts(context.Context) (model.PacketCounts, error)
}

const metricsSubsystem = "kubeproxy"

// syncBuckets are kube-proxy's sync duration buckets: 1ms to about 16s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// programmingBuckets are kube-proxy's network programming buckets, from 0
// through 0.25s steps, 1s steps, 5s steps, to 5 minutes.
func programmingBuckets() []float64 {
	b := []float64{0}
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	return append(b, prometheus.LinearBuckets(120, 30, 7)...)
}

// NewMetrics registers the metrics with reg; the change counters and the
// last-queued time are read from tracker when scraped. mode ("iptables",
// "ipvs") labels svcproxy's own failure counter and decides, as in
// kube-proxy, which mode's metrics exist: the rule counts by table and
// the nfacct packet counters only in the iptables mode.
//
// kube-proxy counts two kinds of packets with nfacct objects its rules
// name (-m nfacct). svcproxy's rules name none: it reads
// iptables_ct_state_invalid_dropped_packets_total and
// iptables_localhost_nodeports_accepted_packets_total from its own rules'
// counters (see CountPackets).
func NewMetrics(reg prometheus.Registerer, tracker *Tracker, families []model.Family, mode string, clk clock.PassiveClock) *Metrics {
	family := []string{"ip_family"}
	histogram := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: metricsSubsystem, Name: name, Help: help, Buckets: buckets,
		}, family)
	}
	m := &Metrics{
		clock:               clk,
		mode:                mode,
		syncDuration:        histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets),
		fullSyncDuration:    histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets),
		partialSyncDuration: histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets),
		programmingDuration: histogram("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", programmingBuckets()),
		lastSynced: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: metricsSubsystem,
			Name: "sync_proxy_rules_last_timestamp_seconds", Help: "The last time proxy rules were successfully synced"}, family),
		restoreFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: metricsSubsystem,
			Name: "sync_proxy_rules_iptables_restore_failures_total", Help: "Cumulative proxy iptables restore failures"}, family),
		partialRestoreFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: metricsSubsystem,
			Name: "sync_proxy_rules_iptables_partial_restore_failures_total", Help: "Cumulative proxy iptables partial restore failures"}, family),
		syncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "svcproxy",
			Name: "sync_failures_total", Help: "Cumulative failed syncs of a family, whatever failed"}, []string{"ip_family", "mode"}),
		noLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: metricsSubsystem,
			Name: "sync_proxy_rules_no_local_endpoints_total", Help: "Number of services with a Local traffic policy and no endpoints"},
			[]string{"ip_family", "traffic_policy"}),
		healthz: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: metricsSubsystem,
			Name: "proxy_healthz_total", Help: "Cumulative proxy healthz HTTP status"}, []string{"code"}),
		livez: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: metricsSubsystem,
			Name: "proxy_livez_total", Help: "Cumulative proxy livez HTTP status"}, []string{"code"}),
		iptablesTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: metricsSubsystem,
			Name: "sync_proxy_rules_iptables_total", Help: "Total number of iptables rules owned by kube-proxy"},
			[]string{"table", "ip_family"}),
		iptablesLast: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: metricsSubsystem,
			Name: "sync_proxy_rules_iptables_last", Help: "Number of iptables rules written by kube-proxy in last sync"},
			[]string{"table", "ip_family"}),
		conntrackDuration: histogram("conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds", syncBuckets),
		conntrackDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: metricsSubsystem,
			Name: "conntrack_reconciler_deleted_entries_total", Help: "Cumulative conntrack flows deleted by conntrack reconciler"}, family),
	}
	// Failure counters exist from the start at 0, so a scrape (and an alert
	// on their rate) sees them before the first failure.
	for _, f := range families {
		m.restoreFailures.WithLabelValues(f.String())
		m.partialRestoreFailures.WithLabelValues(f.String())
		m.syncFailures.WithLabelValues(f.String(), mode)
		m.conntrackDeleted.WithLabelValues(f.String())
	}
	reg.MustRegister(m.syncDuration, m.fullSyncDuration, m.partialSyncDuration, m.programmingDuration,
		m.lastSynced, m.restoreFailures, m.partialRestoreFailures, m.syncFailures, m.noLocalEndpoints, m.healthz, m.livez,
		m.conntrackDuration, m.conntrackDeleted, newChangeCollector(tracker, families))
	if mode == "iptables" {
		reg.MustRegister(m.iptablesTotal, m.iptablesLast,
			prometheus.NewCounterFunc(prometheus.CounterOpts{Subsystem: metricsSubsystem,
				Name: "iptables_ct_state_invalid_dropped_packets_total",
				Help: "packets dropped by iptables to work around conntrack problems"}, counterOf(&m.invalidDropped)),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Subsystem: metricsSubsystem,
				Name: "iptables_localhost_nodeports_accepted_packets_total",
				Help: "Number of packets accepted on nodeports of loopback interface"}, counterOf(&m.localhostAccepted)))
	}
	return m
}

// CountPackets has the nfacct-style counters read the backends that count
// such packets (one per family, summed as kube-proxy's one nfacct object
// counts both families); until then, and without such backends, they
// read 0.
func (m *Metrics) CountPackets(backends []Backend) {
	var counters []PacketCounter
	for _, b := range backends {
		if c, ok := b.(PacketCounter); ok {
			counters = append(counters, c)
		}
	}
	m.packetCounters.Store(&counters)
}

// RefreshPacketCounts reads the backends' packet counters for the scrapes
// to report, at most once every packetCountPeriod; call it from the
// runner's goroutine (with the integrity check). A scrape never runs
// iptables itself: on a busy node, or in an emulated VM, that could
// outlast the scrape's timeout. A counter that cannot be read gives its
// last count.
func (m *Metrics) RefreshPacketCounts(ctx context.Context) {
	counters := m.packetCounters.Load()
	now := m.clock.Now()
	if counters == nil || (!m.packetsRead.IsZero() && now.Sub(m.packetsRead) < packetCountPeriod) {
		return
	}
	m.packetsRead = now
	var sum model.PacketCounts
	for _, c := range *counters {
		v, _ := c.PacketCounts(ctx)
		sum.InvalidDropped += v.InvalidDropped
		sum.LocalhostNodePortsAccepted += v.LocalhostNodePortsAccepted
	}
	m.invalidDropped.Store(sum.InvalidDropped)
	m.localhostAccepted.Store(sum.LocalhostNodePortsAccepted)
}

// counterOf reads a counter's last reading for a scrape.
func counterOf(v *atomic.Uint64) func() float64 { return func() float64 { return float64(v.Load()) } }

// Observe records one sync; register it with Syncer.Observe.
func (m *Metrics) Observe(r *SyncReport) {
	now := m.clock.Now()
	for _, f := range r.Families {
		fam := f.Family.String()
		full := r.Full || f.Result.Full
		m.syncDuration.WithLabelValues(fam).Observe(f.Duration.Seconds())
		if full {
			m.fullSyncDuration.WithLabelValues(fam).Observe(f.Duration.Seconds())
		} else {
			m.partialSyncDuration.WithLabelValues(fam).Observe(f.Duration.Seconds())
		}
		if f.View != nil {
			internal, external := countNoLocalEndpoints(f.View)
			m.noLocalEndpoints.WithLabelValues(fam, "internal").Set(float64(internal))
			m.noLocalEndpoints.WithLabelValues(fam, "external").Set(float64(external))
		}
		if ct := f.Conntrack; ct != nil {
			m.conntrackDuration.WithLabelValues(fam).Observe(ct.Duration.Seconds())
			m.conntrackDeleted.WithLabelValues(fam).Add(float64(ct.Deleted))
		}
		if t := f.Result.Tables; t != nil {
			m.iptablesTotal.WithLabelValues("filter", fam).Set(float64(t.FilterTotal))
			m.iptablesTotal.WithLabelValues("nat", fam).Set(float64(t.NATTotal))
			m.iptablesLast.WithLabelValues("filter", fam).Set(float64(t.FilterWritten))
			m.iptablesLast.WithLabelValues("nat", fam).Set(float64(t.NATWritten))
		}
		if f.Err != nil {
			m.syncFailures.WithLabelValues(fam, m.mode).Inc()
			if f.Result.RestoreFailed {
				m.restoreFailures.WithLabelValues(fam).Inc()
				if !full {
					m.partialRestoreFailures.WithLabelValues(fam).Inc()
				}
			}
			continue
		}
		m.lastSynced.WithLabelValues(fam).Set(unixSeconds(now))
		for _, trigger := range r.Snapshot.TriggerTimes {
			if trigger.Family == f.Family {
				m.programmingDuration.WithLabelValues(fam).Observe(now.Sub(trigger.Time).Seconds())
			}
		}
	}
}

// countNoLocalEndpoints counts, as kube-proxy does, the service ports that
// have endpoints but none this node may use for a Local policy: internal
// (the ClusterIP drops traffic) and external (outside traffic is dropped).
func countNoLocalEndpoints(v *model.NodeView) (internal, external int) {
	for _, sp := range v.Services {
		if !sp.HasEndpoints {
			continue
		}
		if sp.InternalPolicyLocal && len(sp.ClusterEndpoints) == 0 {
			internal++
		}
		if sp.ExternalPolicyLocal && sp.ExternallyAccessible() && len(sp.LocalEndpoints) == 0 {
			external++
		}
	}
	return internal, external
}

// InstrumentHealth counts the answers of a /healthz and /livez handler by
// status code, as kube-proxy's proxy_healthz_total and proxy_livez_total.
func (m *Metrics) InstrumentHealth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		switch r.URL.Path {
		case "/healthz":
			m.healthz.WithLabelValues(strconv.Itoa(rec.code)).Inc()
		case "/livez":
			m.livez.WithLabelValues(strconv.Itoa(rec.code)).Inc()
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// changeCollector reads the tracker's change counts once per scrape, so
// the pending gauges and totals are as of the scrape and agree.
type changeCollector struct {
	tracker  *Tracker
	families []model.Family

	endpointsPending, endpointsTotal, servicesPending, servicesTotal, lastQueued *prometheus.Desc
}

func newChangeCollector(tracker *Tracker, families []model.Family) *changeCollector {
	name := func(n string) string { return prometheus.BuildFQName(metricsSubsystem, "", n) }
	return &changeCollector{
		tracker:          tracker,
		families:         families,
		endpointsPending: prometheus.NewDesc(name("sync_proxy_rules_endpoint_changes_pending"), "Pending proxy rules Endpoint changes", nil, nil),
		endpointsTotal:   prometheus.NewDesc(name("sync_proxy_rules_endpoint_changes_total"), "Cumulative proxy rules Endpoint changes", nil, nil),
		servicesPending:  prometheus.NewDesc(name("sync_proxy_rules_service_changes_pending"), "Pending proxy rules Service changes", nil, nil),
		servicesTotal:    prometheus.NewDesc(name("sync_proxy_rules_service_changes_total"), "Cumulative proxy rules Service changes", nil, nil),
		lastQueued: prometheus.NewDesc(name("sync_proxy_rules_last_queued_timestamp_seconds"),
			"The last time a sync of proxy rules was queued", []string{"ip_family"}, nil),
	}
}

func (c *changeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.endpointsPending
	ch <- c.endpointsTotal
	ch <- c.servicesPending
	ch <- c.servicesTotal
	ch <- c.lastQueued
}

func (c *changeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.tracker.Stats()
	ch <- prometheus.MustNewConstMetric(c.endpointsPending, prometheus.GaugeValue, float64(st.EndpointsPending))
	// kube-proxy has a change tracker per family: each counts the events
	// of its family's slices and every Service event, so a dual-stack
	// kube-proxy counts each Service event twice.
	var sliceEvents uint64
	for _, f := range c.families {
		sliceEvents += st.SliceEvents[familyIndex(f)]
	}
	ch <- prometheus.MustNewConstMetric(c.endpointsTotal, prometheus.CounterValue, float64(sliceEvents))
	ch <- prometheus.MustNewConstMetric(c.servicesPending, prometheus.GaugeValue, float64(st.ServicesPending))
	ch <- prometheus.MustNewConstMetric(c.servicesTotal, prometheus.CounterValue, float64(st.ServiceEvents*uint64(len(c.families))))
	// One tracker feeds every family, so a change is queued for all of them.
	for _, f := range c.families {
		ch <- prometheus.MustNewConstMetric(c.lastQueued, prometheus.GaugeValue, unixSeconds(st.LastQueued), f.String())
	}
}
