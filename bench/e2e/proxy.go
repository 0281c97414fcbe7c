package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/svcproxy/svcproxy/internal/controlplane"
	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/internal/sandbox"
	"github.com/svcproxy/svcproxy/model"
)

// proxyRun is one proxy at one size, on a sandbox node of its own.
type proxyRun struct {
	cfg       Config
	cp        *controlplane.ControlPlane
	cs        kubernetes.Interface
	proxy     Proxy
	services  int
	kubeProxy string
	id        string // unique within the run: names its node and services
	// dataPlaneOnly: the baseline run, which measures the cold start and
	// the data plane only.
	dataPlaneOnly bool

	sb      *sandbox.Sandbox
	created []string // services this run made, deleted at its end
	// settled is when the proxy last showed, by a connection, the state
	// the last write asked for: the next measured write waits for quiet
	// after it.
	settled time.Time
}

// Probe pods: pod-0 is the client, pods 1 and 2 serve.
const pods = 3

func (r *proxyRun) measure(ctx context.Context) (res Result, err error) {
	res = Result{Proxy: r.proxy.Name, Mode: r.proxy.Mode, Flavor: string(r.proxy.Flavor), Label: r.proxy.Label(),
		Services: r.services, Endpoints: r.cfg.Endpoints}
	sess := &netnstest.Session{}
	defer sess.Close()
	defer r.cleanupAPI()
	dir, err := os.MkdirTemp(r.cfg.WorkDir, "node-"+r.id+"-")
	if err != nil {
		return res, err
	}
	if err := sess.Build(func() {
		sb, err := sandbox.New(ctx, sess, sandbox.Options{ControlPlane: r.cp, Pods: pods,
			NodeName: "node-" + r.id, Binary: r.cfg.Svcproxy, Dir: dir})
		if err != nil {
			sess.Fatal(err)
		}
		r.sb = sb
		for _, p := range sb.Bed.Pods()[1:] {
			sandbox.ServeHTTP(sess, p, webPort)
		}
	}); err != nil {
		return res, err
	}

	// The service the cold start reaches, and later the endpoint changes.
	probe, err := r.create(ctx, "probe-"+r.id, r.pod(1))
	if err != nil {
		return res, err
	}
	p, began, err := r.start()
	if err != nil {
		return res, err
	}
	defer func() {
		// A SIGTERM exit is how kube-proxy ends; only a kill is news.
		if stopErr := p.Stop(10 * time.Second); stopErr != nil && strings.Contains(stopErr.Error(), "killed") {
			fmt.Fprintf(r.cfg.Progress, "  %s did not stop cleanly: %v\n", r.proxy.Name, stopErr)
		}
		if err != nil {
			err = fmt.Errorf("%w; last lines of %s:\n%s", err, p.Log, tail(p.Output(), 20))
		}
	}()
	mem := watchMemory(p.PID())
	defer mem.stop()

	if err := r.coldStart(p, probe, began, &res); err != nil {
		return res, err
	}
	r.settled = time.Now()
	fmt.Fprintf(r.cfg.Progress, "  cold start: connection %.0f ms, first-sync metric %.0f ms\n", res.ColdStartConn, res.ColdStartSync)
	if r.dataPlaneOnly {
		r.dataPlane(ctx, probe, &res)
		return res, nil
	}
	if res.ServiceAdd, err = r.serviceAdds(ctx); err != nil {
		return res, err
	}
	fmt.Fprintf(r.cfg.Progress, "  service add: p50 %.0f ms, max %.0f ms\n", res.ServiceAdd.P50, res.ServiceAdd.Max)
	if res.EndpointNew, res.EndpointOldGone, err = r.endpointChanges(ctx, probe); err != nil {
		return res, err
	}
	fmt.Fprintf(r.cfg.Progress, "  endpoint change: new p50 %.0f ms, old gone p50 %.0f ms\n", res.EndpointNew.P50, res.EndpointOldGone.P50)
	r.dataPlane(ctx, probe, &res)
	if res.IdleCPU, res.IdleSeconds, err = r.idleCPU(ctx, p); err != nil {
		return res, err
	}
	fmt.Fprintf(r.cfg.Progress, "  idle: %.1f%% of a core over %.0f s\n", 100*res.IdleCPU, res.IdleSeconds)

	res.CPUSeconds, err = cpuSeconds(p.PID())
	if err != nil {
		return res, err
	}
	res.PeakOwnRSSBytes = vmHWM(p.PID())
	res.PeakRSSBytes = max(mem.stop(), res.PeakOwnRSSBytes)
	res.RulesLines, res.RulesTool, err = r.rulesSize()
	fmt.Fprintf(r.cfg.Progress, "  peak RSS %.1f MB (its own %.1f MB), CPU %.2f s, %d lines of %s\n",
		float64(res.PeakRSSBytes)/1e6, float64(res.PeakOwnRSSBytes)/1e6, res.CPUSeconds, res.RulesLines, res.RulesTool)
	return res, err
}

func (r *proxyRun) pod(i int) *netnstest.NS { return r.sb.Bed.Pod(i) }

// create makes a service whose one endpoint is the bed pod given and
// returns its URL.
func (r *proxyRun) create(ctx context.Context, name string, backend *netnstest.NS) (string, error) {
	if err := createService(ctx, r.cs, name, []string{backend.IPv4().String()}); err != nil {
		return "", err
	}
	r.created = append(r.created, name)
	svc, err := r.cs.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return "http://" + svc.Spec.ClusterIP + ":80/", nil
}

// cleanupAPI deletes this run's services, slices and Node, so the next
// proxy sees the same N.
func (r *proxyRun) cleanupAPI() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, name := range r.created {
		_ = r.cs.CoreV1().Services(namespace).Delete(ctx, name, metav1.DeleteOptions{})
		_ = r.cs.DiscoveryV1().EndpointSlices(namespace).Delete(ctx, name+"-1", metav1.DeleteOptions{})
	}
	_ = r.cs.CoreV1().Nodes().Delete(ctx, "node-"+r.id, metav1.DeleteOptions{})
}

// Both proxies get kube-proxy's flags, the same ones.
func commonFlags() []string {
	return []string{
		"--conntrack-max-per-core=0",
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=0.0.0.0:10256",
	}
}

func (r *proxyRun) start() (*sandbox.Process, time.Time, error) {
	began := time.Now()
	if r.proxy.Name == "kube-proxy" {
		p, err := r.sb.StartKubeProxy(sandbox.KubeProxy{Binary: r.kubeProxy, Mode: r.proxy.Mode, Flavor: r.proxy.Flavor, Extra: r.cfg.ProxyFlags})
		return p, began, err
	}
	args := append([]string{"--proxy-mode=" + r.proxy.Mode, "--iptables-flavor=" + string(r.proxy.Flavor)}, commonFlags()...)
	p, err := r.sb.StartProxy(append(args, r.cfg.ProxyFlags...)...)
	return p, began, err
}

// client opens one new connection per request from pod-0.
// client is the probe's: a connection the proxy has not programmed yet
// is a SYN into the void, and the sample cannot end before the client
// gives up on it, so the timeout is the resolution of every latency; a
// request to a pod here takes a millisecond or two.
func (r *proxyRun) client() *http.Client { return sandbox.Client(r.pod(0), probeTimeout) }

// probeTimeout bounds one probe request.
const probeTimeout = 100 * time.Millisecond

// poll calls f every 20 ms until it returns true, the timeout passes, or
// the proxy exits.
func (r *proxyRun) poll(p *sandbox.Process, what string, f func() bool) error {
	return r.pollSpaced(p, what, f, func(time.Duration) time.Duration { return 20 * time.Millisecond })
}

// pollSpaced is poll with a pause after each call that gap works out from
// how long the call took.
func (r *proxyRun) pollSpaced(p *sandbox.Process, what string, f func() bool, gap func(took time.Duration) time.Duration) error {
	deadline := time.Now().Add(r.cfg.Timeout)
	for {
		start := time.Now()
		if f() {
			return nil
		}
		took := time.Since(start)
		if done, exitErr := p.Exited(); done {
			return fmt.Errorf("%s: %s exited: %v", what, r.proxy.Name, exitErr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w after %v", what, errTimeout, r.cfg.Timeout)
		}
		time.Sleep(gap(took))
	}
}

// scrapeGap spaces the scrapes that wait for the first-sync metric. A
// scrape makes the proxy render every metric: on the VM's emulated CPU
// that is tens of milliseconds, and one every 20 ms made the first sync
// it waits for twice as long (svcproxy's IPVS mode, 10 services: 4.4 and
// 5.1 s for the two families, against 3.0 and 2.3 s scraped every
// 300 ms). Ten times what the last scrape took keeps them to a tenth of
// the time; on the host that is still every 20 ms.
func scrapeGap(took time.Duration) time.Duration { return max(20*time.Millisecond, 10*took) }

func (r *proxyRun) answeredBy(c *http.Client, url string) string {
	got, err := sandbox.Get(c, url)
	if err != nil {
		return ""
	}
	backend, _, _ := strings.Cut(got, " ")
	return backend
}

func (r *proxyRun) coldStart(p *sandbox.Process, probe string, began time.Time, res *Result) error {
	var wg sync.WaitGroup
	var syncErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		mc := sandbox.Client(r.sb.Bed.Node(), 300*time.Millisecond)
		syncErr = r.pollSpaced(p, "first-sync metric", func() bool { return firstSynced(mc) }, scrapeGap)
		if syncErr == nil {
			res.ColdStartSync = ms(time.Since(began))
		}
	}()
	c := r.client()
	err := r.poll(p, "cold start connection", func() bool { return r.answeredBy(c, probe) == r.pod(1).Name })
	if err == nil {
		res.ColdStartConn = ms(time.Since(began))
	}
	wg.Wait()
	if err != nil {
		return err
	}
	return syncErr
}

func firstSynced(c *http.Client) bool {
	resp, err := c.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	buf := new(strings.Builder)
	_, _ = ioCopy(buf, resp)
	return strings.Contains(buf.String(), "\nkubeproxy_sync_proxy_rules_last_timestamp_seconds")
}

func (r *proxyRun) serviceAdds(ctx context.Context) (Stats, error) {
	var ds []time.Duration
	c := r.client()
	for k := range r.cfg.Samples {
		name := fmt.Sprintf("add-%s-%d", r.id, k)
		r.waitQuiet()
		t0 := time.Now()
		url, err := r.create(ctx, name, r.pod(1+k%2))
		if err != nil {
			return Stats{}, err
		}
		want := r.pod(1 + k%2).Name
		err = r.pollNoProcess(ctx, "service add", func() bool { return r.answeredBy(c, url) == want })
		if err != nil {
			return Stats{}, err
		}
		r.settled = time.Now()
		ds = append(ds, r.settled.Sub(t0))
	}
	return summarise(ds), nil
}

func (r *proxyRun) pollNoProcess(ctx context.Context, what string, f func() bool) error {
	deadline := time.Now().Add(r.cfg.Timeout)
	for !f() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w after %v", what, errTimeout, r.cfg.Timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// quiet is how long the API and the proxy stay still before each
// measured write: longer than both proxies' default --min-sync-period
// (1 s), so a sample times the proxy's reaction to a change, not its rate
// limit on syncs.
const quiet = 1200 * time.Millisecond

// waitQuiet sleeps until quiet has passed since the proxy last settled.
// An endpoint change's sample ends with settle, longer than quiet, so
// the next one starts at once.
func (r *proxyRun) waitQuiet() { time.Sleep(time.Until(r.settled.Add(quiet))) }

// settle is how long the old endpoint must stay unseen, with the new one
// answering, before it counts as gone.
const settle = 1500 * time.Millisecond

// endpointChanges replaces the probe's one endpoint K times, between pods
// 1 and 2, timing the first answer from the new one and the last from the
// old one.
func (r *proxyRun) endpointChanges(ctx context.Context, probe string) (Stats, Stats, error) {
	var news, olds []time.Duration
	c := r.client()
	name := "probe-" + r.id
	for k := range r.cfg.Samples {
		oldPod, newPod := r.pod(1+k%2), r.pod(2-k%2)
		cur, err := r.cs.DiscoveryV1().EndpointSlices(namespace).Get(ctx, name+"-1", metav1.GetOptions{})
		if err != nil {
			return Stats{}, Stats{}, err
		}
		s := slice(name, []string{newPod.IPv4().String()})
		s.ResourceVersion = cur.ResourceVersion
		r.waitQuiet()
		t0 := time.Now()
		if _, err := r.cs.DiscoveryV1().EndpointSlices(namespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return Stats{}, Stats{}, err
		}
		var firstNew, lastOld time.Duration
		err = r.pollNoProcess(ctx, "endpoint change", func() bool {
			switch r.answeredBy(c, probe) {
			case newPod.Name:
				if firstNew == 0 {
					firstNew = time.Since(t0)
				}
			case oldPod.Name:
				lastOld = time.Since(t0)
			}
			return firstNew > 0 && time.Since(t0)-max(lastOld, firstNew) > settle
		})
		if err != nil {
			return Stats{}, Stats{}, err
		}
		// The old one never answering after the write is gone at once, as
		// far as new connections show: the first answer from the new one.
		if lastOld == 0 {
			lastOld = firstNew
		}
		r.settled = t0.Add(max(lastOld, firstNew))
		news, olds = append(news, firstNew), append(olds, lastOld)
	}
	return summarise(news), summarise(olds), nil
}

// dataPlane measures the rate of new connections through the probe's
// ClusterIP. A data plane that fails is a finding, not the end of the
// proxy's figures: it is noted and the others are still measured.
func (r *proxyRun) dataPlane(ctx context.Context, probe string, res *Result) {
	target, err := hostPort(probe)
	if err == nil {
		res.ConnRate, res.ConnFailedShare, res.ConnFirstFailure, err = connRate(ctx, r.pod(0), target)
	}
	if err != nil {
		res.DataPlaneError = err.Error()
		fmt.Fprintf(r.cfg.Progress, "  data plane failed: %v\n", err)
		return
	}
	fmt.Fprintf(r.cfg.Progress, "  data plane: %.0f new connections/s through one ClusterIP, %.1f%% failed\n", res.ConnRate, 100*res.ConnFailedShare)
	if res.ConnFirstFailure != "" {
		fmt.Fprintf(r.cfg.Progress, "    first failure: %s\n", res.ConnFirstFailure)
	}
}

// idleCPU watches the proxy for IdleWindow with no API change (the last
// write, an endpoint change's, is seconds old by now) and returns the
// share of one core it and its children used, and the window's length.
// A child still running at either end is counted when it ends, so a
// window may gain or lose one program's run.
func (r *proxyRun) idleCPU(ctx context.Context, p *sandbox.Process) (share, seconds float64, err error) {
	before, err := cpuSeconds(p.PID())
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	case <-time.After(r.cfg.IdleWindow):
	}
	after, err := cpuSeconds(p.PID())
	if err != nil {
		return 0, 0, err
	}
	seconds = time.Since(start).Seconds()
	return (after - before) / seconds, seconds, nil
}

// rulesSize counts what the proxy programmed in the node namespace.
func (r *proxyRun) rulesSize() (int, string, error) {
	node := r.sb.Bed.Node()
	if r.proxy.Mode == "nftables" {
		out, err := node.Run("nft", "list", "ruleset")
		return countLines(out), "nft list ruleset", err
	}
	total, tool := 0, "iptables-"+string(r.proxy.Flavor)+"-save (v4+v6)"
	if r.proxy.Mode == "ipvs" {
		// The virtual and real servers, one line each.
		out, err := node.Run("cat", "/proc/net/ip_vs")
		if err != nil {
			return 0, "", err
		}
		total, tool = countLines(out), "/proc/net/ip_vs and "+tool
	}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		out, err := node.Run(r.proxy.Flavor.Binary(fam, "-save"))
		if err != nil {
			return 0, "", err
		}
		total += countLines(out)
	}
	return total, tool, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// memoryWatch samples the resident set of a process tree.
type memoryWatch struct {
	quit chan struct{}
	done chan struct{}
	peak int64
	once sync.Once
}

func watchMemory(pid int) *memoryWatch {
	w := &memoryWatch{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			w.peak = max(w.peak, treeRSS(pid))
			select {
			case <-w.quit:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *memoryWatch) stop() int64 {
	w.once.Do(func() { close(w.quit) })
	<-w.done
	return w.peak
}

// treeRSS is the summed VmRSS of pid and its descendants.
func treeRSS(pid int) int64 {
	total := statusKB(pid, "VmRSS:") * 1024
	for _, child := range children(pid) {
		total += treeRSS(child)
	}
	return total
}

func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

func vmHWM(pid int) int64 { return statusKB(pid, "VmHWM:") * 1024 }

func statusKB(pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// cpuSeconds is utime+stime+cutime+cstime of /proc/PID/stat: the process
// and every child it has waited for (iptables-restore and kin).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	// Fields after the command name, which ends at the last ')'.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime (fields 14-17)
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	const clkTck = 100 // USER_HZ on Linux
	return float64(ticks) / clkTck, nil
}

func ioCopy(dst *strings.Builder, resp *http.Response) (int64, error) {
	return io.Copy(dst, io.LimitReader(resp.Body, 32<<20))
}
