// Command syncbench measures svcproxy's rule sync at scale, in either
// mode: the cold-start full sync, one endpoint change, one service add, a
// periodic full resync and the integrity check, with the kernel
// operations and iptables-restore bytes of each and the peak memory. It
// programs the network namespace it runs in, so it must run in a fresh
// one (make bench runs it under unshare --net; the IPVS mode in the VM).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/bench"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
)

func main() {
	w := bench.Workload{}
	flavorName := flag.String("flavor", "nft", "iptables flavor: nft or legacy")
	mode := flag.String("mode", "iptables", "proxy mode: iptables or ipvs (needs a kernel with IPVS)")
	flag.IntVar(&w.Services, "services", 10000, "services")
	flag.IntVar(&w.Endpoints, "endpoints", 10, "endpoints per service")
	flag.IntVar(&w.Nodes, "nodes", 100, "nodes the endpoints are spread over")
	rounds := flag.Int("rounds", 15, "measured endpoint changes and service adds")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the partial syncs to this file")
	flag.StringVar(&checkProfile, "check-cpuprofile", "", "write a CPU profile of the integrity checks to this file")
	flag.StringVar(&heapProfile, "heapprofile", "", "write a heap profile at the end (what was allocated where, and what is live) to this file")
	ownNetns := flag.Bool("in-own-netns", false, "required: confirms this process runs in a network namespace of its own")
	flag.Parse()

	if !*ownNetns {
		fail("refusing to program iptables without -in-own-netns; run it under `unshare --net` (make bench does)")
	}
	flavor, err := netfilter.ParseFlavor(*flavorName)
	if err != nil {
		fail(err.Error())
	}
	if err := run(w, *mode, flavor, *rounds); err != nil {
		fail(err.Error())
	}
}

var cpuProfile, checkProfile, heapProfile string

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "syncbench:", msg)
	os.Exit(1)
}

// harness is the pipeline the daemon runs, minus the informers.
type harness struct {
	tracker *proxier.Tracker
	syncer  *proxier.Syncer
	backend proxier.Backend
	last    *proxier.SyncReport
}

func newBackend(mode string, flavor netfilter.Flavor) (proxier.Backend, error) {
	switch mode {
	case "iptables":
		return iptables.New(netfilter.Config{}, model.IPv4, flavor)
	case "ipvs":
		if err := ipvs.CheckSupport(ipvs.DefaultScheduler); err != nil {
			return nil, err
		}
		fixed, err := ipvs.ConnReuseFixed()
		if err != nil {
			return nil, err
		}
		return ipvs.New(ipvs.Config{ConnReuseFixed: fixed}, model.IPv4, flavor)
	}
	return nil, fmt.Errorf("mode %q: want iptables or ipvs", mode)
}

func newHarness(mode string, flavor netfilter.Flavor) (*harness, error) {
	backend, err := newBackend(mode, flavor)
	if err != nil {
		return nil, err
	}
	h := &harness{backend: backend}
	h.tracker = proxier.NewTracker(zap.NewNop(), time.Now)
	h.tracker.SetNode(model.NodeInfo{Name: bench.NodeName})
	h.syncer = proxier.NewSyncer(h.tracker, []proxier.Backend{backend}, nil, clock.RealClock{}, zap.NewNop())
	h.syncer.Observe(func(r *proxier.SyncReport) { h.last = r })
	return h, nil
}

// sample is one timed sync.
type sample struct {
	elapsed time.Duration
	result  model.SyncResult
}

func (h *harness) sync(full bool) (sample, error) {
	start := time.Now()
	_, err := h.syncer.Sync(context.Background(), full)
	s := sample{elapsed: time.Since(start)}
	if len(h.last.Families) > 0 {
		s.result = h.last.Families[0].Result
	}
	return s, err
}

func run(w bench.Workload, mode string, flavor netfilter.Flavor, rounds int) error {
	h, err := newHarness(mode, flavor)
	if err != nil {
		return err
	}
	fmt.Printf("svcproxy %s sync, iptables flavor %s: %d services x %d endpoints (%d nodes)\n",
		mode, flavor, w.Services, w.Endpoints, w.Nodes)

	heap := watchHeap("load")
	loadStart := time.Now()
	for i := 0; i < w.Services; i++ {
		h.tracker.UpsertService(w.Service(i))
		h.tracker.UpsertEndpointSlice(w.Slice(i, 0))
	}
	fmt.Printf("  %-34s %10s\n", "load objects into tracker", round(time.Since(loadStart)))

	heap.enter("cold start")
	cold, err := h.sync(true)
	if err != nil {
		return fmt.Errorf("cold full sync: %w", err)
	}
	report("cold-start full sync", []sample{cold})

	stopProfile, err := startProfile(cpuProfile)
	if err != nil {
		return err
	}
	heap.enter("partial syncs")
	var changes []sample
	for r := 1; r <= rounds; r++ {
		i := (r * 7919) % w.Services
		h.tracker.UpsertEndpointSlice(w.Slice(i, r))
		s, err := h.sync(false)
		if err != nil {
			return fmt.Errorf("endpoint change: %w", err)
		}
		changes = append(changes, s)
	}
	report("one endpoint change (partial)", changes)

	var adds []sample
	for r := 0; r < rounds; r++ {
		i := w.Services + r
		h.tracker.UpsertService(w.Service(i))
		h.tracker.UpsertEndpointSlice(w.Slice(i, 0))
		s, err := h.sync(false)
		if err != nil {
			return fmt.Errorf("service add: %w", err)
		}
		adds = append(adds, s)
	}
	report("one service add (partial)", adds)
	stopProfile()

	heap.enter("full resync")
	resync, err := h.sync(true)
	if err != nil {
		return fmt.Errorf("periodic full sync: %w", err)
	}
	report("periodic full resync", []sample{resync})

	heap.enter("checks")
	if err := measureChecks(h, 3); err != nil {
		return err
	}

	heap.print()
	printMemory()
	err = writeHeapProfile(heapProfile)
	runtime.KeepAlive(h) // its tracker and views are what the profile shows in use
	return err
}

// writeHeapProfile writes the heap profile into path (none if path is
// empty), after a collection, so that its in-use figures are what the
// harness still holds.
func writeHeapProfile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	runtime.GC()
	return pprof.WriteHeapProfile(f)
}

// startProfile starts a CPU profile into path (none if path is empty);
// stop ends it and closes the file.
func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// measureChecks runs the integrity check n times on the last applied
// view and prints the median, profiling the checks if asked.
func measureChecks(h *harness, n int) error {
	stopProfile, err := startProfile(checkProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	var took []time.Duration
	for range n {
		start := time.Now()
		intact, err := h.backend.Intact(context.Background(), h.last.Families[0].View)
		if err != nil || !intact {
			return fmt.Errorf("integrity check after syncs: intact=%v err=%v", intact, err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	fmt.Printf("  %-34s %10s  (median of %d, worst %s)\n", "integrity check (Intact)", round(took[n/2]), n, round(took[n-1]))
	return nil
}

// report prints the median and worst of a set of samples, with the
// restore size and chain count of the median one.
func report(name string, samples []sample) {
	slices.SortFunc(samples, func(a, b sample) int { return int(a.elapsed - b.elapsed) })
	med := samples[len(samples)/2]
	worst := samples[len(samples)-1]
	// Written is chains in the iptables mode; virtual and real servers,
	// addresses, set entries and chains in the IPVS mode.
	what := fmt.Sprintf("%d kernel ops, %d objects written, %d rules, restore %s",
		med.result.KernelOps, med.result.Written, med.result.Rules, size(med.result.Bytes))
	if len(samples) == 1 {
		fmt.Printf("  %-34s %10s  %s\n", name, round(med.elapsed), what)
		return
	}
	fmt.Printf("  %-34s p50 %8s  max %8s  %s (n=%d)\n", name, round(med.elapsed), round(worst.elapsed), what, len(samples))
}

func printMemory() {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	// Maxrss is in KiB on Linux.
	fmt.Printf("  %-34s %7.0f MiB (largest iptables-restore child: %.0f MiB)\n",
		"peak RSS, svcproxy process", float64(self.Maxrss)/1024, float64(children.Maxrss)/1024)
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(10 * time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d
}

func size(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
