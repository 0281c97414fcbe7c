// Package e2e measures proxies end to end: a real control plane, a sandbox
// node in network namespaces, N services loaded through the API, the proxy
// under test started in the node namespace with kube-proxy's flags, and
// real connections from a pod namespace timing how long after an API write
// traffic follows. It is black-box: svcproxy and the upstream kube-proxy
// are measured the same way, through the API server, the kernel, their
// flags and their metrics only.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/svcproxy/svcproxy/bench"
	"github.com/svcproxy/svcproxy/internal/controlplane"
	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Proxy is one proxy and mode under test.
type Proxy struct {
	Name   string           // "svcproxy" or "kube-proxy"
	Mode   string           // iptables, nftables or ipvs
	Flavor netfilter.Flavor // the iptables flavor (iptables and ipvs modes)
}

// Label names the proxy in tables and plots.
func (p Proxy) Label() string {
	if p.Mode == "nftables" || p.Mode == "ipvs" {
		return p.Name + " " + p.Mode
	}
	return p.Name + " iptables-" + string(p.Flavor)
}

// AllProxies are every proxy and mode that runs on this kernel.
func AllProxies() []Proxy {
	return []Proxy{
		{Name: "svcproxy", Mode: "iptables", Flavor: netfilter.FlavorNFT},
		{Name: "svcproxy", Mode: "iptables", Flavor: netfilter.FlavorLegacy},
		{Name: "kube-proxy", Mode: "iptables", Flavor: netfilter.FlavorNFT},
		{Name: "kube-proxy", Mode: "iptables", Flavor: netfilter.FlavorLegacy},
		{Name: "kube-proxy", Mode: "nftables", Flavor: netfilter.FlavorNFT},
	}
}

// IPVSProxies are the IPVS modes (with iptables-nft for their few
// iptables rules): they run only on a kernel with IPVS, which make bench
// boots in a VM.
func IPVSProxies() []Proxy {
	return []Proxy{
		{Name: "svcproxy", Mode: "ipvs", Flavor: netfilter.FlavorNFT},
		{Name: "kube-proxy", Mode: "ipvs", Flavor: netfilter.FlavorNFT},
	}
}

// Config is one run.
type Config struct {
	BinDir    string // hack/controlplane-bins.sh's directory
	Svcproxy  string // the svcproxy binary
	Sizes     []int  // N: services, ascending; each size runs every proxy
	Endpoints int    // M: endpoints per service
	Samples   int    // K: samples of each change
	Proxies   []Proxy
	WorkDir   string        // logs and control-plane data; removed by the caller
	Timeout   time.Duration // bounds each wait for traffic (a sample, a cold start)
	// ProxyFlags go after every proxy's own, e.g. --v=4 to read in the
	// logs kept with -keep-logs what a figure was made of.
	ProxyFlags []string
	// IdleWindow is how long each proxy is watched with no API change,
	// for its idle CPU; 0 means DefaultIdleWindow.
	IdleWindow time.Duration
	Progress   io.Writer
}

// DefaultIdleWindow is kube-proxy's --sync-period: a window that long
// holds one of its periodic syncs, as every 30 s of an idle node does.
const DefaultIdleWindow = 30 * time.Second

// namespace holds every object of a run.
const namespace = "bench"

// Run runs every size and proxy and returns their results, in order.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.IdleWindow == 0 {
		cfg.IdleWindow = DefaultIdleWindow
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: cfg.BinDir, WorkDir: cfg.WorkDir})
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	rc := cp.RESTConfig()
	rc.QPS, rc.Burst = 2000, 4000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	kubeProxy, err := cp.KubeProxy()
	if err != nil && needsKubeProxy(cfg.Proxies) {
		return nil, err
	}
	var results []Result
	loaded := 0
	base := map[string]Result{}
	baselined := len(cfg.Sizes) > 0 && cfg.Sizes[0] > baseServices
	if baselined {
		if base, err = baseline(ctx, cfg, cp, cs, kubeProxy); err != nil {
			return nil, err
		}
		loaded = baseServices
	}
	for _, n := range cfg.Sizes {
		if err := load(ctx, cs, loaded, n, cfg.Endpoints, cfg.Progress); err != nil {
			return results, err
		}
		loaded = n
		for i, p := range cfg.Proxies {
			run := &proxyRun{cfg: cfg, cp: cp, cs: cs, proxy: p, services: n, kubeProxy: kubeProxy,
				id: fmt.Sprintf("n%d-%d", n, i)}
			fmt.Fprintf(cfg.Progress, "== %s, %d services x %d endpoints\n", p.Label(), n, cfg.Endpoints)
			r, err := run.measure(ctx)
			if err != nil && ctx.Err() != nil {
				return results, fmt.Errorf("%s at %d services: %w", p.Label(), n, err)
			}
			// One proxy failing (say, a cold start past the bound) is a
			// result too; the others still run.
			if err != nil {
				r.Error = err.Error()
				fmt.Fprintf(cfg.Progress, "  failed: %s\n", firstLine(r.Error))
			}
			switch b, ok := base[p.Label()]; {
			case ok:
				r.ConnRateBase, r.ConnRateBaseServices = b.ConnRate, b.Services
			case !baselined:
				// No baseline run: the first size is small enough to be one.
				r.ConnRateBase, r.ConnRateBaseServices = r.ConnRate, n
			}
			// A proxy whose baseline failed has none, rather than its own
			// rate at N, which would read as keeping all of it.
			results = append(results, r)
		}
	}
	return results, nil
}

// baseline loads baseServices services and measures each proxy's data plane
// there, the figure every size's is compared with. A proxy failing here
// gets no baseline; the others still do.
func baseline(ctx context.Context, cfg Config, cp *controlplane.ControlPlane, cs kubernetes.Interface, kubeProxy string) (map[string]Result, error) {
	if err := load(ctx, cs, 0, baseServices, cfg.Endpoints, cfg.Progress); err != nil {
		return nil, err
	}
	base := map[string]Result{}
	for i, p := range cfg.Proxies {
		run := &proxyRun{cfg: cfg, cp: cp, cs: cs, proxy: p, services: baseServices, kubeProxy: kubeProxy,
			id: fmt.Sprintf("base-%d", i), dataPlaneOnly: true}
		fmt.Fprintf(cfg.Progress, "== %s, %d services: the data plane's baseline\n", p.Label(), baseServices)
		r, err := run.measure(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s at %d services: %w", p.Label(), baseServices, ctx.Err())
		}
		if err != nil {
			fmt.Fprintf(cfg.Progress, "  failed: %s\n", firstLine(err.Error()))
			continue
		}
		base[p.Label()] = r
	}
	return base, nil
}

func needsKubeProxy(ps []Proxy) bool {
	for _, p := range ps {
		if p.Name == "kube-proxy" {
			return true
		}
	}
	return false
}

// load creates services from..to-1 with m endpoints each (addresses nothing
// answers on: they make the rules, the probes use services of their own),
// with parallel workers and a progress line.
func load(ctx context.Context, cs kubernetes.Interface, from, to, m int, progress io.Writer) error {
	if to <= from {
		return nil
	}
	start := time.Now()
	const workers = 32
	var done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := createService(ctx, cs, bench.ServiceName(i), endpointAddrs(i, m)); err != nil {
					errOnce.Do(func() { firstErr = err })
				}
				done.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				fmt.Fprintf(progress, "\rloading services: %d/%d", int(done.Load())+from, to)
			}
		}
	}()
feed:
	for i := from; i < to; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(stop)
	fmt.Fprintf(progress, "\rloading services: %d/%d in %v\n", int(done.Load())+from, to, time.Since(start).Round(time.Millisecond))
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func endpointAddrs(i, m int) []string {
	addrs := make([]string, m)
	for j := range addrs {
		addrs[j] = bench.EndpointIP(i, j, 0).String()
	}
	return addrs
}

// webPort is where the bed's pods serve HTTP.
const webPort = 8080

// createService creates a selector-less ClusterIP Service on port 80 and
// its EndpointSlice of ready endpoints on webPort; it returns the Service.
func createService(ctx context.Context, cs kubernetes.Interface, name string, addrs []string) error {
	_, err := cs.CoreV1().Services(namespace).Create(ctx, service(name), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating service %s: %w", name, err)
	}
	_, err = cs.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice(name, addrs), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating the slice of %s: %w", name, err)
	}
	return nil
}

func service(name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{
			Type:  v1.ServiceTypeClusterIP,
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
}

func slice(svc string, addrs []string) *discoveryv1.EndpointSlice {
	ready, port, name, proto := true, int32(webPort), "http", v1.ProtocolTCP
	eps := make([]discoveryv1.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: svc + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
}

// Stats summarises samples, in milliseconds.
type Stats struct {
	Samples []float64 `json:"samples_ms"`
	P50     float64   `json:"p50_ms"`
	P90     float64   `json:"p90_ms"`
	P99     float64   `json:"p99_ms"`
	Max     float64   `json:"max_ms"`
}

func summarise(ds []time.Duration) Stats {
	s := Stats{}
	for _, d := range ds {
		s.Samples = append(s.Samples, ms(d))
	}
	if len(s.Samples) == 0 {
		return s
	}
	sorted := append([]float64(nil), s.Samples...)
	sort.Float64s(sorted)
	q := func(p float64) float64 {
		i := int(p*float64(len(sorted))+0.999999) - 1 // nearest rank
		return sorted[max(0, min(i, len(sorted)-1))]
	}
	s.P50, s.P90, s.P99, s.Max = q(0.50), q(0.90), q(0.99), sorted[len(sorted)-1]
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Result is one proxy at one size.
type Result struct {
	Proxy     string `json:"proxy"`
	Mode      string `json:"mode"`
	Flavor    string `json:"flavor"`
	Label     string `json:"label"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`
	// ColdStartConn: process start to the first connection through a
	// service that existed before; ColdStartSync: to the first-sync metric.
	ColdStartConn float64 `json:"cold_start_connection_ms"`
	ColdStartSync float64 `json:"cold_start_first_sync_metric_ms"`
	// ServiceAdd: the Service's API write to the first connection to it.
	ServiceAdd Stats `json:"service_add"`
	// EndpointNew: the write replacing the endpoint to the first connection
	// reaching the new one; EndpointOldGone: to the last reaching the old.
	EndpointNew     Stats `json:"endpoint_change_new"`
	EndpointOldGone Stats `json:"endpoint_change_old_gone"`
	// PeakRSS: the largest resident set of the proxy and its children, sampled
	// every 100 ms, or the proxy's own VmHWM if larger.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// PeakOwnRSS: the proxy's own VmHWM, without the iptables-restore or
	// nft it runs (at 10,000 services those are most of the peak).
	PeakOwnRSSBytes int64   `json:"peak_own_rss_bytes"`
	CPUSeconds      float64 `json:"cpu_seconds"` // user+system, waited-for children included
	// IdleCPU: the share of one core the proxy and the programs it ran
	// used over IdleSeconds with no API change (its periodic work: an
	// integrity check, a periodic sync).
	IdleCPU     float64 `json:"idle_cpu_share_of_a_core"`
	IdleSeconds float64 `json:"idle_seconds"`
	// RulesLines: lines of iptables-save (both families) in the iptables
	// mode, of `nft list ruleset` in the nftables mode, of /proc/net/ip_vs
	// and iptables-save in the ipvs mode.
	RulesLines int    `json:"rules_lines"`
	RulesTool  string `json:"rules_tool"`
	// ConnRate: new TCP connections per second a client pod opens through
	// one ClusterIP with these N services programmed; ConnRateBase: the
	// same proxy's with ConnRateBaseServices (10, or N when N is smaller).
	ConnRate             float64 `json:"new_connections_per_s"`
	ConnRateBase         float64 `json:"new_connections_per_s_base"`
	ConnRateBaseServices int     `json:"base_services"`
	// ConnFailedShare: the share of those connection attempts that failed
	// at N, ConnFirstFailure the first one's error; DataPlaneError says
	// why there is no rate, if there is none.
	ConnFailedShare  float64 `json:"new_connections_failed_share"`
	ConnFirstFailure string  `json:"new_connections_first_failure,omitempty"`
	DataPlaneError   string  `json:"data_plane_error,omitempty"`
	// Error says why the proxy's figures stop where they do, if they do.
	Error string `json:"error,omitempty"`
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Missing names the figures a result lacks (used by the tiny test).
func (r Result) Missing() []string {
	var missing []string
	check := func(name string, ok bool) {
		if !ok {
			missing = append(missing, name)
		}
	}
	check("cold start to connection", r.ColdStartConn > 0)
	check("cold start to first-sync metric", r.ColdStartSync > 0)
	for name, s := range map[string]Stats{"service add": r.ServiceAdd, "endpoint new": r.EndpointNew, "endpoint old gone": r.EndpointOldGone} {
		check(name, len(s.Samples) > 0 && s.Max > 0)
	}
	check("peak RSS", r.PeakRSSBytes > 0)
	check("peak own RSS", r.PeakOwnRSSBytes > 0)
	check("CPU seconds", r.CPUSeconds > 0)
	check("idle CPU", r.IdleSeconds > 0) // an idle proxy may well use none
	check("rules lines", r.RulesLines > 0)
	check("new connections/s", r.ConnRate > 0 && r.DataPlaneError == "")
	check("new connections/s at the base size", r.ConnRateBase > 0 && r.ConnRateBaseServices > 0)
	return missing
}

// errTimeout is a wait for traffic that ran out of time.
var errTimeout = errors.New("timed out")

// writeFile writes data to dir/name, making dir.
func writeFile(dir, name string, data []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, data, 0o644)
}

// countLines counts the non-empty lines of s.
func countLines(s string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

var _ = netnstest.MaxPods
