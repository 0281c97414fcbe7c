package app

import (
	"context"
	"math"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

// restClientMetrics are client-go's rest_client_* metrics with the names,
// labels, help and buckets kube-proxy serves them under (the adapters of
// k8s.io/component-base/metrics/prometheus/restclient, which register
// with component-base's global registry; svcproxy's is a plain Prometheus
// registry). client-go's metric hooks are process-wide and can be set
// once, so there is one set per process: every registry made registers
// the same collectors.
type restClientMetrics struct {
	requestLatency, rateLimiterLatency, requestSize, responseSize      *prometheus.HistogramVec
	requestResult, requestRetry, execPluginCalls, transportCreateCalls *prometheus.CounterVec
	transportCacheEntries                                              prometheus.Gauge
	certRotation                                                       prometheus.Histogram
	certTTL                                                            prometheus.GaugeFunc
	certExpiry                                                         atomic.Pointer[time.Time]
}

var restClient = sync.OnceValue(newRestClientMetrics)

func newRestClientMetrics() *restClientMetrics {
	latency := []float64{0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0}
	size := []float64{64, 256, 512, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216}
	histogram := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, []string{"verb", "host"})
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &restClientMetrics{
		requestLatency:     histogram("rest_client_request_duration_seconds", "Request latency in seconds. Broken down by verb, and host.", latency),
		rateLimiterLatency: histogram("rest_client_rate_limiter_duration_seconds", "Client side rate limiter latency in seconds. Broken down by verb, and host.", latency),
		requestSize:        histogram("rest_client_request_size_bytes", "Request size in bytes. Broken down by verb and host.", size),
		responseSize:       histogram("rest_client_response_size_bytes", "Response size in bytes. Broken down by verb and host.", size),
		requestResult:      counter("rest_client_requests_total", "Number of HTTP requests, partitioned by status code, method, and host.", "code", "method", "host"),
		requestRetry:       counter("rest_client_request_retries_total", "Number of request retries, partitioned by status code, verb, and host.", "code", "verb", "host"),
		execPluginCalls: counter("rest_client_exec_plugin_call_total", "Number of calls to an exec plugin, partitioned by the type of "+
			"event encountered (no_error, plugin_execution_error, plugin_not_found_error, client_internal_error) and an optional exit code. "+
			"The exit code will be set to 0 if and only if the plugin call was successful.", "code", "call_status"),
		transportCreateCalls: counter("rest_client_transport_create_calls_total", "Number of calls to get a new transport, partitioned by the result of the operation "+
			"hit: obtained from the cache, miss: created and added to the cache, uncacheable: created and not cached", "result"),
		transportCacheEntries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "rest_client_transport_cache_entries",
			Help: "Number of transport entries in the internal cache."}),
		certRotation: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rest_client_exec_plugin_certificate_rotation_age",
			Help: "Histogram of the number of seconds the last auth exec plugin client certificate lived before being rotated. " +
				"If auth exec plugin client certificates are unused, histogram will contain no data.",
			Buckets: []float64{600, 1800, 3600, 14400, 86400, 604800, 2592000, 7776000, 15552000, 31104000, 124416000}}),
	}
	m.certTTL = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rest_client_exec_plugin_ttl_seconds",
		Help: "Gauge of the shortest TTL (time-to-live) of the client certificate(s) managed by the auth exec plugin. " +
			"The value is in seconds until certificate expiry (negative if already expired). " +
			"If auth exec plugins are unused or manage no TLS certificates, the value will be +INF."},
		func() float64 {
			if e := m.certExpiry.Load(); e != nil {
				return time.Until(*e).Seconds()
			}
			return math.Inf(1)
		})
	clientmetrics.Register(clientmetrics.RegisterOpts{
		ClientCertExpiry:      expiryAdapter{m},
		ClientCertRotationAge: durationAdapter{m.certRotation},
		RequestLatency:        latencyAdapter{m.requestLatency},
		RateLimiterLatency:    latencyAdapter{m.rateLimiterLatency},
		RequestSize:           sizeAdapter{m.requestSize},
		ResponseSize:          sizeAdapter{m.responseSize},
		RequestResult:         resultAdapter{m.requestResult},
		RequestRetry:          resultAdapter{m.requestRetry},
		ExecPluginCalls:       callsAdapter{m.execPluginCalls},
		TransportCacheEntries: gaugeAdapter{m.transportCacheEntries},
		TransportCreateCalls:  createCallsAdapter{m.transportCreateCalls},
	})
	return m
}

func (m *restClientMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requestLatency, m.rateLimiterLatency, m.requestSize, m.responseSize,
		m.requestResult, m.requestRetry, m.execPluginCalls, m.transportCreateCalls, m.transportCacheEntries,
		m.certRotation, m.certTTL}
}

type latencyAdapter struct{ m *prometheus.HistogramVec }

func (a latencyAdapter) Observe(_ context.Context, verb string, u url.URL, latency time.Duration) {
	a.m.WithLabelValues(verb, u.Host).Observe(latency.Seconds())
}

type sizeAdapter struct{ m *prometheus.HistogramVec }

func (a sizeAdapter) Observe(_ context.Context, verb, host string, size float64) {
	a.m.WithLabelValues(verb, host).Observe(size)
}

// resultAdapter serves both requests_total (code, method, host) and
// request_retries_total (code, verb, host).
type resultAdapter struct{ m *prometheus.CounterVec }

func (a resultAdapter) Increment(_ context.Context, code, method, host string) {
	a.m.WithLabelValues(code, method, host).Inc()
}

func (a resultAdapter) IncrementRetry(_ context.Context, code, method, host string) {
	a.m.WithLabelValues(code, method, host).Inc()
}

type callsAdapter struct{ m *prometheus.CounterVec }

func (a callsAdapter) Increment(code int, status string) {
	a.m.WithLabelValues(strconv.Itoa(code), status).Inc()
}

type createCallsAdapter struct{ m *prometheus.CounterVec }

func (a createCallsAdapter) Increment(result string) { a.m.WithLabelValues(result).Inc() }

type gaugeAdapter struct{ m prometheus.Gauge }

func (a gaugeAdapter) Observe(value int) { a.m.Set(float64(value)) }

type durationAdapter struct{ m prometheus.Histogram }

func (a durationAdapter) Observe(d time.Duration) { a.m.Observe(d.Seconds()) }

type expiryAdapter struct{ m *restClientMetrics }

func (a expiryAdapter) Set(expiry *time.Time) { a.m.certExpiry.Store(expiry) }
