package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func TestSummariseNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 10; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := summarise(ds)
	if s.P50 != 5 || s.P90 != 9 || s.P99 != 10 || s.Max != 10 {
		t.Errorf("summarise 1..10 ms = %+v", s)
	}
	if got := summarise(nil); len(got.Samples) != 0 || got.Max != 0 {
		t.Errorf("summarise of nothing = %+v", got)
	}
}

func TestTableComparesKubeProxyWithSvcproxyOfItsFlavor(t *testing.T) {
	rep := Report{Endpoints: 10, Samples: 1, Results: []Result{
		{Proxy: "svcproxy", Flavor: "nft", Label: "svcproxy iptables-nft", Services: 1000, ServiceAdd: Stats{P50: 100}},
		{Proxy: "kube-proxy", Flavor: "nft", Label: "kube-proxy iptables-nft", Services: 1000, ServiceAdd: Stats{P50: 300}},
	}}
	var b bytes.Buffer
	WriteTable(&b, rep)
	if !strings.Contains(b.String(), "3.00x") {
		t.Errorf("no 3.00x ratio in:\n%s", b.String())
	}
	if svg := string(SVG(rep)); !strings.HasPrefix(svg, "<svg") || !strings.Contains(svg, "kube-proxy iptables-nft") {
		t.Errorf("SVG:\n%s", svg)
	}
}

// kube-proxy's IPVS mode is compared with svcproxy's, not with svcproxy's
// iptables mode of the same flavor.
func TestPeerOfTheIPVSModeIsTheIPVSMode(t *testing.T) {
	results := []Result{
		{Proxy: "svcproxy", Mode: "iptables", Flavor: "nft", Services: 1000},
		{Proxy: "svcproxy", Mode: "ipvs", Flavor: "nft", Services: 1000},
	}
	if p, ok := peer(results, Result{Proxy: "kube-proxy", Mode: "ipvs", Flavor: "nft", Services: 1000}); !ok || p.Mode != "ipvs" {
		t.Errorf("kube-proxy ipvs is compared with %+v", p)
	}
	for _, mode := range []string{"iptables", "nftables"} {
		if p, ok := peer(results, Result{Proxy: "kube-proxy", Mode: mode, Flavor: "nft", Services: 1000}); !ok || p.Mode != "iptables" {
			t.Errorf("kube-proxy %s is compared with %+v", mode, p)
		}
	}
}

// A rate is better when higher: its ratio puts svcproxy on top, so above 1
// still means svcproxy is better.
func TestTableRatioOfARateFavoursTheFaster(t *testing.T) {
	rep := Report{Endpoints: 10, Samples: 1, Results: []Result{
		{Proxy: "svcproxy", Flavor: "nft", Label: "svcproxy iptables-nft", Services: 1000, ConnRate: 8000, ConnRateBase: 8000},
		{Proxy: "kube-proxy", Flavor: "nft", Label: "kube-proxy iptables-nft", Services: 1000, ConnRate: 2000, ConnRateBase: 8000},
	}}
	var b bytes.Buffer
	WriteTable(&b, rep)
	var row string
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "kept at N") {
			row = line
		}
	}
	if f := strings.Fields(row); len(f) < 3 || f[len(f)-3] != "100" || f[len(f)-2] != "25.0" || f[len(f)-1] != "4.00x" {
		t.Errorf("kept-rate row %q, want 100, 25.0 and a ratio of 4.00x; table:\n%s", row, b.String())
	}
	if !strings.Contains(b.String(), "4.00x") {
		t.Errorf("no 4.00x ratio for the rate in:\n%s", b.String())
	}
}

func TestCombinedPlotHoldsEveryRun(t *testing.T) {
	dir := t.TempDir()
	for i, n := range []int{1000, 10000} {
		rep := Report{Started: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC), Results: []Result{
			{Proxy: "svcproxy", Flavor: "nft", Label: "svcproxy iptables-nft", Services: n, ServiceAdd: Stats{P50: float64(n)}},
		}}
		if _, _, err := Write(dir, rep); err != nil {
			t.Fatal(err)
		}
	}
	path, err := WriteCombinedPlot(dir)
	if err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{">1000<", ">10000<"} {
		if !strings.Contains(string(svg), want) {
			t.Errorf("combined plot lacks N %s", want)
		}
	}
}

// A dial that runs out of time is a timeout, whatever its wrapping.
func TestFailureKindOfADialTimeout(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	var d net.Dialer
	_, err := d.DialContext(ctx, "tcp", "127.0.0.1:9") // out of time before it starts
	if err == nil {
		t.Skip("the dial did not fail")
	}
	if got := failureKind(err); got != "timed out" {
		t.Errorf("failureKind(%v) = %q, want timed out", err, got)
	}
}
