package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/conntrack"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
)

// Run runs the proxy until ctx ends (SIGTERM), then stops its servers and
// leaves the rules in place, so traffic flows while it restarts. It
// returns an error for anything that keeps it from starting.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	d := &daemon{cfg: cfg, log: log, kernel: hostKernel(), client: newClient, flows: openConntrack, sysctls: conntrack.HostFiles{}}
	return d.run(ctx)
}

// daemon is Run's wiring with its outside world swappable: the API
// client, the kernel (iptables, IPVS) and conntrack.
type daemon struct {
	cfg    Config
	log    *zap.Logger
	kernel kernelAccess
	client func(Config) (kubernetes.Interface, error)
	flows  func(*zap.Logger) (proxier.FlowCleaner, func())
	// sysctls is where the conntrack tuning reads and writes; nil: none.
	sysctls conntrack.Files
	// takeOverRetry is how soon the take-over looks again at work left
	// (0: retryAfter).
	takeOverRetry time.Duration
}

// proxy is what the startup steps build for the sync loop.
type proxy struct {
	nodeName string
	tracker  *proxier.Tracker
	health   *proxier.Health
	source   *proxier.Source
	// answers reports whether the API server answers at all (a GET of
	// /version), which tells a slow first list from an unreachable server.
	answers  func(context.Context) error
	node     model.NodeInfo
	families []model.Family
	flavor   netfilter.Flavor
	rules    netfilter.Config // what the backends were made with
	backends []proxier.Backend
	// podCIDRs receives the Node's podCIDRs on every change of the Node,
	// the latest only (see watchPodCIDRs).
	podCIDRs chan []netip.Prefix
}

// nodeChanged is the source's OnNode: health judges the Node, and the
// podCIDRs go to watchPodCIDRs, latest first.
func (p *proxy) nodeChanged(n *v1.Node) {
	p.health.SetNode(n)
	if n == nil {
		return
	}
	cidrs := proxier.NodeInfoFromNode(n).PodCIDRs
	select {
	case <-p.podCIDRs:
	default:
	}
	p.podCIDRs <- cidrs
}

func (d *daemon) run(ctx context.Context) error {
	// The informers live as long as run: they stop on a failed start too.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p, err := d.newProxy()
	if err != nil {
		return err
	}
	// A kernel that cannot run the mode is known before anything waits
	// or is written: the operator gets the one line that says so at once,
	// not after the API wait, and no port is bound.
	if err := d.kernel.checkSupport(d.cfg); err != nil {
		return err
	}
	// Health and metrics answer before the startup waits, as kube-proxy's
	// do: waiting for a Node without addresses takes up to --node-timeout,
	// and a liveness probe must not restart the proxy meanwhile. Health
	// counts no change as late before the first sync.
	registry := newRegistry()
	health := &healthHandler{health: p.health.Handler()}
	status := &statusServer{}
	servers, err := d.serve(health, registry, status)
	if err != nil {
		return err
	}
	defer servers.shutdown()
	if err := d.start(ctx, p); err != nil || ctx.Err() != nil {
		return err
	}
	status.ready(d.cfg.Mode, p, d.statusIPVSConfig(p))
	d.tuneConntrack()
	flows, closeFlows := d.flows(d.log)
	defer closeFlows()
	clk := clock.RealClock{}
	syncer := proxier.NewSyncer(p.tracker, p.backends, flows, clk, d.log.Named("sync"))
	metrics := proxier.NewMetrics(registry, p.tracker, p.families, d.cfg.Mode, clk)
	metrics.CountPackets(p.backends)
	health.countWith(metrics)
	checks := proxier.NewHealthCheckServers(healthCheckHosts(p.rules, p.families, d.log), p.health.Healthy, d.log.Named("healthcheck"))
	defer checks.Close()
	syncer.Observe(metrics.Observe)
	syncer.Observe(p.health.Observe)
	syncer.Observe(checks.Observe)
	syncer.Observe(status.recorder.Observe)
	takeOver := d.takeOver(p)
	syncer.Observe(takeOver.Observe)

	p.health.Start(p.families)
	// The integrity check's turns read the packet counters too, so
	// that a scrape never runs iptables.
	check := func(ctx context.Context) bool {
		metrics.RefreshPacketCounts(ctx)
		return syncer.Intact(ctx)
	}
	runner := proxier.NewRunner(d.runnerConfig(), clk, takeOver.Recheck(p.health.Track(syncer.Sync)), check, d.log.Named("runner"))
	runner.WaitForSlicesWith(p.tracker.SliceWaitEnds)
	d.log.Info("svcproxy running", zap.String("mode", d.cfg.Mode), zap.String("node", p.node.Name), zap.Stringers("families", p.families))
	runCtx, stopRun := context.WithCancelCause(ctx)
	var background sync.WaitGroup
	defer func() {
		stopRun(nil)
		background.Wait()
	}()
	background.Go(func() { takeOver.run(runCtx) })
	if d.cfg.DetectLocalMode == localModeNodeCIDR {
		go watchPodCIDRs(runCtx, p.node.PodCIDRs, p.podCIDRs, stopRun)
	}
	runner.Run(runCtx, p.tracker.Changed())
	if err := context.Cause(runCtx); ctx.Err() == nil && err != nil {
		return err
	}
	d.log.Info("svcproxy stopping; the rules stay in place")
	return nil
}

// watchPodCIDRs stops the run, as kube-proxy exits, when the Node's
// podCIDRs differ from those the rules were made with (detectLocalMode
// NodeCIDR tells pods by them): the DaemonSet restarts svcproxy, which
// makes the rules with the new ones, and the rules stay in place
// meanwhile. A Node that had none at the start and gains some counts too.
func watchPodCIDRs(ctx context.Context, started []netip.Prefix, changes <-chan []netip.Prefix, stop context.CancelCauseFunc) {
	for {
		select {
		case <-ctx.Done():
			return
		case cidrs := <-changes:
			if !slices.Equal(cidrs, started) {
				stop(fmt.Errorf("the Node's podCIDRs changed from %v to %v: under detectLocalMode NodeCIDR the rules tell pods by them, "+
					"so svcproxy exits to be restarted with the new ones, as kube-proxy does (the rules stay in place)", started, cidrs))
				return
			}
		}
	}
}

// newProxy makes the API client, the change tracker, the health judge and
// the informer source, none of which reach the network yet: a bad
// kubeconfig is reported before any port is bound.
func (d *daemon) newProxy() (*proxy, error) {
	client, err := d.client(d.cfg)
	if err != nil {
		return nil, err
	}
	p := &proxy{tracker: proxier.NewTracker(d.log.Named("tracker"), time.Now), podCIDRs: make(chan []netip.Prefix, 1),
		answers: serverAnswers(client, d.cfg.APITimeout)}
	if p.nodeName, err = d.nodeName(); err != nil {
		return nil, err
	}
	p.health = proxier.NewHealth(proxier.HealthConfig{
		// kube-proxy's rule: a change may wait twice the sync period.
		Timeout: 2 * d.cfg.SyncPeriod, Pending: p.tracker.OldestPending, Clock: clock.RealClock{},
	})
	p.source, err = proxier.NewSource(proxier.SourceConfig{Client: client, NodeName: p.nodeName,
		Resync: d.cfg.ConfigSyncPeriod, Tracker: p.tracker, OnNode: p.nodeChanged, Log: d.log.Named("source"),
		WaitForPodCIDRs: d.cfg.DetectLocalMode == localModeNodeCIDR})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// start starts the informers and waits, bounded, for what the first sync
// needs: every Service and EndpointSlice, and this node's addresses, which
// decide the IP families; then it makes the backends. Stopped while
// waiting (ctx done), it returns nil early: not an error.
func (d *daemon) start(ctx context.Context, p *proxy) error {
	p.source.Start(ctx)
	if err := d.waitForAPI(ctx, p); err != nil || ctx.Err() != nil {
		return err
	}
	p.node = d.waitForNode(ctx, p.source, p.nodeName)
	if ctx.Err() != nil {
		return nil
	}
	return d.makeBackends(ctx, p)
}

func (d *daemon) nodeName() (string, error) {
	if d.cfg.NodeName != "" {
		return d.cfg.NodeName, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("finding this node's name (set --hostname-override): %w", err)
	}
	return strings.ToLower(strings.TrimSpace(host)), nil
}

// newClient is kube-proxy's: the kubeconfig and --master when given, else
// the in-cluster configuration.
func newClient(cfg Config) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig == "" && cfg.Master == "" {
		if rc, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("no --kubeconfig or --master given and not running in a pod: %w", err)
		}
	} else {
		loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: cfg.Master}})
		if rc, err = loader.ClientConfig(); err != nil {
			return nil, fmt.Errorf("kubeconfig %q: %w", cfg.Kubeconfig, oneLine(err))
		}
	}
	rc.ContentType, rc.QPS, rc.Burst = cfg.ContentType, cfg.QPS, int(cfg.Burst)
	rc.UserAgent = "svcproxy"
	return kubernetes.NewForConfig(rc)
}

// waitForAPI waits for the informers' first lists. It gives up after
// --api-timeout when a list failed or the API server does not answer
// (unreachable, refusing), but waits on, with a warning every
// --api-timeout, while the server answers and its lists are merely slow,
// as kube-proxy waits: a loaded API server may take longer than that to
// list 10,000 services, and a proxy that exits then is only restarted
// into the same wait, adding its own list to the load.
func (d *daemon) waitForAPI(ctx context.Context, p *proxy) error {
	start := time.Now()
	for {
		wait, cancel := context.WithTimeout(ctx, d.cfg.APITimeout)
		err := p.source.WaitForSync(wait)
		cancel()
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, proxier.ErrStillListing) {
			// A refused connection may leave no list error behind
			// (client-go retries it inside the request), so ask.
			if probeErr := p.answers(ctx); probeErr != nil {
				err = fmt.Errorf("%w; and /version: %w", err, probeErr)
			} else {
				d.log.Warn("the API server answers but has not finished listing; waiting on",
					zap.String("apiServer", apiServer(d.cfg)), zap.Duration("waited", time.Since(start).Round(time.Second)),
					zap.Error(err))
				continue
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("waited %v for the API server %s: %w", time.Since(start).Round(time.Second), apiServer(d.cfg), err)
	}
}

// serverAnswers asks the API server for its version, waiting up to
// within: the cheapest request every server answers, whatever its load.
func serverAnswers(client kubernetes.Interface, within time.Duration) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		answered := make(chan error, 1)
		// ServerVersion takes no context; a hung request is left to the
		// client's own timeouts and ends with the process.
		go func() {
			_, err := client.Discovery().ServerVersion()
			answered <- err
		}()
		select {
		case err := <-answered:
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // the URL is in the message already
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("no answer within %v", within)
		}
	}
}

// apiServer names the API server cfg points at, for the error that says
// it could not be reached: the first thing an operator needs to check.
func apiServer(cfg Config) string {
	if cfg.Master != "" {
		return cfg.Master
	}
	if cfg.Kubeconfig == "" {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" {
			return "(in-cluster)"
		}
		return "https://" + net.JoinHostPort(host, port) + " (in-cluster)"
	}
	loaded, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig}, nil).ClientConfig()
	if err != nil {
		return "of " + cfg.Kubeconfig
	}
	return loaded.Host
}

func (d *daemon) waitForNode(ctx context.Context, source *proxier.Source, name string) model.NodeInfo {
	wait, cancel := context.WithTimeout(ctx, d.cfg.NodeTimeout)
	defer cancel()
	node, ok := source.WaitForNode(wait)
	if !ok {
		d.log.Warn("this node's Node object is missing or has no address; running without its addresses "+
			"(IPv4 primary, no topology zone) until it appears",
			zap.String("node", name), zap.Duration("waited", d.cfg.NodeTimeout))
	}
	return node
}

// makeBackends picks the iptables flavor (the IPVS mode writes iptables
// rules too) and the families and makes one backend of the mode per family.
func (d *daemon) makeBackends(ctx context.Context, p *proxy) error {
	var err error
	if p.flavor, err = d.kernel.flavor(ctx, d.cfg.Flavor); err != nil {
		return err
	}
	p.families, err = chooseFamilies(p.node, func(f model.Family) error { return d.kernel.works(ctx, f, p.flavor) })
	if err != nil {
		return err
	}
	rules := d.iptablesConfig(p.node)
	p.rules = rules
	for _, fam := range p.families {
		b, err := d.kernel.newBackend(d.cfg, rules, fam, p.flavor)
		if err != nil {
			return err
		}
		p.backends = append(p.backends, b)
	}
	programming := "programming iptables"
	if d.cfg.Mode == modeIPVS {
		programming = "programming IPVS"
	}
	d.log.Info(programming, zap.String("mode", d.cfg.Mode), zap.String("flavor", string(p.flavor)),
		zap.Stringers("families", p.families))
	return nil
}

func (d *daemon) iptablesConfig(node model.NodeInfo) netfilter.Config {
	cfg := netfilter.Config{ClusterCIDRs: d.cfg.ClusterCIDRs, MasqueradeAll: d.cfg.MasqueradeAll,
		NodePortAddresses: d.cfg.NodePortAddresses, MasqueradeBit: d.cfg.MasqueradeBit, NodeIPs: primaryNodeIPs(node)}
	cfg.ClusterCIDRs, cfg.PodInterface = PodTraffic(d.cfg, node, d.log)
	if d.cfg.MasqueradeBit == 0 {
		d.log.Warn("masquerade bit 0 is not supported by the iptables backend; using 14")
	}
	if d.cfg.NodePortPrimary {
		cfg.NodePortAddresses = primaryNodePortAddresses(node)
		if len(cfg.NodePortAddresses) == 0 {
			d.log.Warn("--nodeport-addresses=primary: the Node has no address; node ports answer on every local address")
		}
	}
	cfg.LocalhostNodePorts = d.localhostNodePorts(cfg.NodePortAddresses)
	return cfg
}

// statusIPVSConfig is, in the IPVS mode, what the backends compile with,
// for the status endpoint (conn_reuse_mode, which the kernel's version
// decides, changes no object `svcproxy list` looks for).
func (d *daemon) statusIPVSConfig(p *proxy) *ipvs.Config {
	if d.cfg.Mode != modeIPVS {
		return nil
	}
	cfg := ipvsConfig(d.cfg, p.rules, false)
	return &cfg
}

func (d *daemon) runnerConfig() proxier.RunnerConfig {
	rc := proxier.DefaultRunnerConfig()
	rc.SyncPeriod, rc.MinSyncPeriod = d.cfg.SyncPeriod, d.cfg.MinSyncPeriod
	return rc
}

// openConntrack opens this network namespace's conntrack table for the
// stale-flow cleanup; without it svcproxy still works, stale UDP flows
// just age out.
func openConntrack(log *zap.Logger) (proxier.FlowCleaner, func()) {
	k, err := conntrack.Open(netns.None())
	if err != nil {
		log.Warn("conntrack unavailable; stale UDP and SCTP flows will only time out", zap.Error(err))
		return nil, func() {}
	}
	return conntrack.Cleaner{Table: k, Log: log.Named("conntrack")}, k.Close
}

func newRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.MustRegister(restClient().collectors()...)
	return r
}

// healthHandler serves /healthz and /livez from before the startup waits.
// Their answers are counted once the metrics exist, which needs the IP
// families the startup finds: probes answered during the waits are not.
type healthHandler struct {
	health  http.Handler
	counted atomic.Pointer[http.Handler]
}

func (h *healthHandler) countWith(m *proxier.Metrics) {
	counted := m.InstrumentHealth(h.health)
	h.counted.Store(&counted)
}

func (h *healthHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if counted := h.counted.Load(); counted != nil {
		(*counted).ServeHTTP(w, r)
		return
	}
	h.health.ServeHTTP(w, r)
}

// servers are the health and metrics HTTP servers.
type servers []*http.Server

// serve starts the health server (/healthz, /livez) and the metrics server
// (/metrics, plus kube-proxy's /healthz and /proxyMode there, and
// svcproxy's status for `svcproxy list`; the proxy's metrics join the
// process's once the startup is done). An address that cannot be bound
// stops the start: another proxy probably runs.
func (d *daemon) serve(health http.Handler, registry *prometheus.Registry, status http.Handler) (servers, error) {
	metrics := http.NewServeMux()
	metrics.Handle(StatusPath, status)
	metrics.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	metrics.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	metrics.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, d.cfg.Mode) })
	if d.cfg.EnableProfiling {
		metrics.HandleFunc("/debug/pprof/", pprof.Index)
		metrics.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		metrics.HandleFunc("/debug/pprof/profile", pprof.Profile)
		metrics.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		metrics.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	var s servers
	for _, srv := range []struct {
		name, addr string
		handler    http.Handler
	}{{"health", d.cfg.HealthzBindAddress, health}, {"metrics", d.cfg.MetricsBindAddress, metrics}} {
		if srv.addr == "" {
			continue
		}
		l, err := net.Listen(listenNetwork(srv.addr), srv.addr)
		if err != nil {
			s.shutdown()
			return nil, fmt.Errorf("%s server: %w", srv.name, err)
		}
		h := &http.Server{Handler: srv.handler, ReadHeaderTimeout: 10 * time.Second}
		go d.serveOn(srv.name, h, l)
		s = append(s, h)
	}
	return s, nil
}

// listenNetwork keeps an IPv4 address IPv4-only, as kube-proxy does: Go
// would make 0.0.0.0 a dual-stack socket.
func listenNetwork(addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		return "tcp4"
	}
	return "tcp"
}

func (d *daemon) serveOn(name string, h *http.Server, l net.Listener) {
	d.log.Info("serving", zap.String("server", name), zap.Stringer("address", l.Addr()))
	if err := h.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		d.log.Error("server stopped", zap.String("server", name), zap.Error(err))
	}
}

func (s servers) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, h := range s {
		_ = h.Shutdown(ctx)
	}
}
