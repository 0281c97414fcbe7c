// Command e2ebench measures svcproxy and the upstream kube-proxy end to
// end, side by side: a real control plane on loopback, a sandbox node in
// network namespaces of its own (never the host's), N services loaded
// through the API, and real connections from a pod namespace (see package
// bench/e2e). It prints a table and writes a JSON file and an SVG plot into
// -out. It accepts syncbench's flags too, so make bench's BENCH_ARGS reach
// both.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/bench/e2e"
)

func main() {
	binDir := flag.String("controlplane-bin-dir", "", "directory of etcd, kube-apiserver and kube-proxy (hack/controlplane-bins.sh prints it)")
	svcproxy := flag.String("svcproxy", "bin/svcproxy", "the svcproxy binary")
	services := flag.Int("services", 1000, "services (N); -sizes overrides it")
	sizes := flag.String("sizes", "", "comma-separated N to run one after the other, e.g. 1000,10000")
	endpoints := flag.Int("endpoints", 10, "endpoints per service (M)")
	rounds := flag.Int("rounds", 10, "samples (K) of each change")
	proxies := flag.String("proxies", "all", "comma-separated labels to run (e.g. \"svcproxy iptables-nft,kube-proxy nftables\"), or all, or svcproxy, or ipvs (svcproxy's and kube-proxy's ipvs modes: a kernel with IPVS)")
	out := flag.String("out", "bench/results", "results folder")
	timeout := flag.Duration("timeout", 30*time.Minute, "bound on the whole run")
	proxyFlags := flag.String("proxy-flags", "", "space-separated flags added to every proxy's, e.g. --v=4")
	keepLogs := flag.Bool("keep-logs", false, "copy every proxy's log into the results folder (logs-<time>/)")
	wait := flag.Duration("wait", 2*time.Minute, "bound on each wait for traffic")
	idle := flag.Duration("idle", e2e.DefaultIdleWindow, "how long each proxy is watched with no API change, for its idle CPU")
	// syncbench's flags, accepted so one BENCH_ARGS serves both.
	flag.Int("nodes", 0, "ignored (syncbench's)")
	flag.String("mode", "", "ignored (syncbench's)")
	flag.String("flavor", "", "ignored (syncbench's)")
	flag.String("cpuprofile", "", "ignored (syncbench's)")
	flag.String("check-cpuprofile", "", "ignored (syncbench's)")
	flag.Parse()

	if *binDir == "" {
		fail("-controlplane-bin-dir is required")
	}
	cfg := e2e.Config{BinDir: *binDir, Svcproxy: *svcproxy, Endpoints: *endpoints, Samples: *rounds,
		Timeout: *wait, IdleWindow: *idle, Progress: os.Stderr, Sizes: []int{*services}}
	if *sizes != "" {
		cfg.Sizes = nil
		for _, s := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 0 {
				fail("-sizes: " + s)
			}
			cfg.Sizes = append(cfg.Sizes, n)
		}
	}
	cfg.Proxies = pick(*proxies)
	work, err := os.MkdirTemp("", "e2ebench-")
	if err != nil {
		fail(err.Error())
	}
	cfg.WorkDir = work
	cfg.ProxyFlags = strings.Fields(*proxyFlags)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	rep := e2e.Report{Started: time.Now(), Endpoints: cfg.Endpoints, Samples: cfg.Samples}
	rep.Results, err = e2e.Run(ctx, cfg)
	cancel()
	stop()
	if *keepLogs {
		keepProxyLogs(work, filepath.Join(*out, "logs-"+rep.Started.Format("20060102-150405")))
	}
	os.RemoveAll(work)
	if len(rep.Results) > 0 {
		e2e.WriteTable(os.Stdout, rep)
		jsonPath, svgPath, werr := e2e.Write(*out, rep)
		if werr != nil {
			fail(werr.Error())
		}
		allPath, werr := e2e.WriteCombinedPlot(*out)
		if werr != nil {
			fail(werr.Error())
		}
		fmt.Printf("\nwritten: %s, %s; every run in %s against N: %s\n", jsonPath, svgPath, *out, allPath)
	}
	if err != nil {
		fail(err.Error())
	}
}

func pick(spec string) []e2e.Proxy {
	all := e2e.AllProxies()
	switch spec {
	case "all":
		return all
	case "svcproxy":
		return all[:2]
	case "ipvs":
		return e2e.IPVSProxies()
	}
	all = append(all, e2e.IPVSProxies()...)
	var ps []e2e.Proxy
	for _, want := range strings.Split(spec, ",") {
		found := false
		for _, p := range all {
			if p.Label() == strings.TrimSpace(want) {
				ps, found = append(ps, p), true
			}
		}
		if !found {
			fail("-proxies: no proxy " + want)
		}
	}
	return ps
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "e2ebench:", msg)
	os.Exit(1)
}

// keepProxyLogs copies the proxies' logs of the work folder (one folder per
// proxy run) to dst, where they outlive the run.
func keepProxyLogs(work, dst string) {
	logs, _ := filepath.Glob(filepath.Join(work, "node-*", "*proxy-*.log"))
	for _, log := range logs {
		b, err := os.ReadFile(log)
		if err == nil {
			err = os.MkdirAll(dst, 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, filepath.Base(filepath.Dir(log))+"-"+filepath.Base(log)), b, 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "keeping %s: %v\n", log, err)
		}
	}
	if len(logs) > 0 {
		fmt.Fprintf(os.Stderr, "the proxies' logs: %s\n", dst)
	}
}
