package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is what one run writes to its JSON file.
type Report struct {
	Started   time.Time `json:"started"`
	Endpoints int       `json:"endpoints_per_service"`
	Samples   int       `json:"samples"`
	Results   []Result  `json:"results"`
}

// JSON is the report, indented.
func (r Report) JSON() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }

// figure is one row of the table.
type figure struct {
	name string
	get  func(Result) float64
	unit string
	// higher: more is better (a rate), so its ratio is svcproxy / kube-proxy.
	higher bool
}

var figures = slices.Concat(
	[]figure{
		{"cold start: first connection", func(r Result) float64 { return r.ColdStartConn }, "ms", false},
		{"cold start: first-sync metric", func(r Result) float64 { return r.ColdStartSync }, "ms", false},
	},
	latencyFigures("service add", func(r Result) Stats { return r.ServiceAdd }),
	latencyFigures("endpoint change, new reached", func(r Result) Stats { return r.EndpointNew }),
	latencyFigures("endpoint change, old gone", func(r Result) Stats { return r.EndpointOldGone }),
	[]figure{
		{"peak RSS (children included)", func(r Result) float64 { return float64(r.PeakRSSBytes) / 1e6 }, "MB", false},
		{"peak RSS of the proxy alone", func(r Result) float64 { return float64(r.PeakOwnRSSBytes) / 1e6 }, "MB", false},
		{"CPU (children included)", func(r Result) float64 { return r.CPUSeconds }, "s", false},
		{"CPU while idle (children included)", func(r Result) float64 { return 100 * r.IdleCPU }, "% core", false},
		{"rules programmed", func(r Result) float64 { return float64(r.RulesLines) }, "lines", false},
		{"new connections through one ClusterIP", func(r Result) float64 { return r.ConnRate }, "/s", true},
		{"the same with 10 services (N if fewer)", func(r Result) float64 { return r.ConnRateBase }, "/s", true},
		{"kept at N of its rate with 10", keptRate, "%", true},
		{"new connections that failed", func(r Result) float64 { return 100 * r.ConnFailedShare }, "%", false},
	},
)

// keptRate is the share of its new-connection rate with few services a
// proxy keeps at N.
func keptRate(r Result) float64 {
	if r.ConnRateBase <= 0 {
		return 0
	}
	return 100 * r.ConnRate / r.ConnRateBase
}

// latencyFigures are the p50, p90, p99 and max rows of one sampled latency.
func latencyFigures(label string, of func(Result) Stats) []figure {
	return []figure{
		{label + " p50", func(r Result) float64 { return of(r).P50 }, "ms", false},
		{label + " p90", func(r Result) float64 { return of(r).P90 }, "ms", false},
		{label + " p99", func(r Result) float64 { return of(r).P99 }, "ms", false},
		{label + " max", func(r Result) float64 { return of(r).Max }, "ms", false},
	}
}

// peer is the svcproxy result a kube-proxy result is compared with: the
// same size, the same mode and flavor if there is one (the ipvs modes),
// else the same iptables flavor (nft for the nftables mode).
func peer(results []Result, kp Result) (Result, bool) {
	for _, r := range results {
		if r.Proxy == "svcproxy" && r.Services == kp.Services && r.Mode == kp.Mode && r.Flavor == kp.Flavor {
			return r, true
		}
	}
	for _, r := range results {
		if r.Proxy == "svcproxy" && r.Services == kp.Services && r.Flavor == kp.Flavor && r.Mode != "ipvs" {
			return r, true
		}
	}
	for _, r := range results {
		if r.Proxy == "svcproxy" && r.Services == kp.Services {
			return r, true
		}
	}
	return Result{}, false
}

// WriteTable prints, per size, every figure of every proxy, and for each
// kube-proxy mode the ratio kube-proxy / svcproxy (above 1: svcproxy is
// faster or smaller).
func WriteTable(w io.Writer, rep Report) {
	sizes := map[int][]Result{}
	var ns []int
	for _, r := range rep.Results {
		if _, ok := sizes[r.Services]; !ok {
			ns = append(ns, r.Services)
		}
		sizes[r.Services] = append(sizes[r.Services], r)
	}
	sort.Ints(ns)
	for _, n := range ns {
		rs := sizes[n]
		fmt.Fprintf(w, "\nend to end: %d services x %d endpoints, %d samples each (ratio of kube-proxy to svcproxy of the same flavor: above 1, svcproxy is faster or smaller)\n",
			n, rep.Endpoints, rep.Samples)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		header := []string{"figure", "unit"}
		for _, r := range rs {
			header = append(header, r.Label)
		}
		for _, r := range rs {
			if r.Proxy == "kube-proxy" {
				if sp, ok := peer(rs, r); ok {
					header = append(header, "ratio "+strings.TrimPrefix(r.Label, "kube-proxy ")+"/"+strings.TrimPrefix(sp.Label, "svcproxy "))
				}
			}
		}
		fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
		for _, f := range figures {
			row := []string{f.name, f.unit}
			for _, r := range rs {
				if v := f.get(r); v == 0 && r.Error != "" {
					row = append(row, "-")
				} else {
					row = append(row, format(v))
				}
			}
			for _, r := range rs {
				if r.Proxy == "kube-proxy" {
					if sp, ok := peer(rs, r); ok && f.higher {
						row = append(row, ratio(f.get(sp), f.get(r)))
					} else if ok {
						row = append(row, ratio(f.get(r), f.get(sp)))
					}
				}
			}
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
		for _, r := range rs {
			if r.Error != "" {
				fmt.Fprintf(w, "%s failed: %s\n", r.Label, firstLine(r.Error))
			}
			if r.DataPlaneError != "" {
				fmt.Fprintf(w, "%s: %s\n", r.Label, r.DataPlaneError)
			}
		}
	}
}

func format(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// ratio is worse / better as a factor: above 1, the second is better.
func ratio(worse, better float64) string {
	if better <= 0 || worse <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", worse/better)
}

// SVG plots service-add p50 latency, peak RSS and the data plane's
// new-connection rate against N, one line per proxy and mode.
func SVG(rep Report) []byte {
	const w, h, panelW, panelH, left, top = 1440, 420, 380, 300, 70, 50
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	labels := []string{}
	seen := map[string]bool{}
	for _, r := range rep.Results {
		if !seen[r.Label] {
			seen[r.Label] = true
			labels = append(labels, r.Label)
		}
	}
	colors := []string{"#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"}
	panels := []struct {
		title string
		get   func(Result) float64
	}{
		{"service add p50 (ms): API write to first connection", func(r Result) float64 { return r.ServiceAdd.P50 }},
		{"peak RSS (MB), children included", func(r Result) float64 { return float64(r.PeakRSSBytes) / 1e6 }},
		{"new connections/s through one ClusterIP", func(r Result) float64 { return r.ConnRate }},
	}
	minN, maxN, maxY := math.Inf(1), math.Inf(-1), make([]float64, len(panels))
	for _, r := range rep.Results {
		minN, maxN = math.Min(minN, float64(r.Services)), math.Max(maxN, float64(r.Services))
		for i, p := range panels {
			maxY[i] = math.Max(maxY[i], p.get(r))
		}
	}
	if maxN == minN {
		minN, maxN = minN/2, maxN*1.5
	}
	for pi, p := range panels {
		x0 := left + pi*(panelW+100)
		y0 := top
		ymax := niceCeil(maxY[pi])
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", x0, y0-15, p.title)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>`+"\n", x0, y0, panelW, panelH)
		for t := 0; t <= 4; t++ {
			yv := ymax * float64(t) / 4
			y := y0 + panelH - int(float64(panelH)*float64(t)/4)
			fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#eee"/><text x="%d" y="%d" text-anchor="end">%s</text>`+"\n",
				x0, y, x0+panelW, y, x0-5, y+4, format(yv))
		}
		px := func(n float64) float64 {
			return float64(x0) + float64(panelW)*(math.Log(n)-math.Log(minN))/(math.Log(maxN)-math.Log(minN))
		}
		py := func(v float64) float64 { return float64(y0+panelH) - float64(panelH)*v/ymax }
		ns := map[int]bool{}
		for _, r := range rep.Results {
			ns[r.Services] = true
		}
		for n := range ns {
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", px(float64(n)), y0+panelH+16, n)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">services (N, log scale)</text>`+"\n", x0+panelW/2, y0+panelH+34)
		for li, label := range labels {
			var pts []string
			for _, r := range rep.Results {
				if r.Label != label || p.get(r) == 0 { // not measured
					continue
				}
				x, y := px(float64(r.Services)), py(p.get(r))
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x, y, colors[li%len(colors)])
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), colors[li%len(colors)])
		}
	}
	for li, label := range labels {
		x := left + li*170
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			x, h-25, colors[li%len(colors)], x+16, h-15, label)
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// Write saves the report's JSON and SVG into dir and returns their paths.
func Write(dir string, rep Report) (string, string, error) {
	data, err := rep.JSON()
	if err != nil {
		return "", "", err
	}
	stamp := rep.Started.UTC().Format("20060102-150405")
	jsonPath, err := writeFile(dir, "e2e-"+stamp+".json", data)
	if err != nil {
		return "", "", err
	}
	svgPath, err := writeFile(dir, "e2e-"+stamp+".svg", SVG(rep))
	return jsonPath, svgPath, err
}

// WriteCombinedPlot plots every report in dir (e2e-*.json) together into
// dir/e2e-all.svg, so runs at different sizes make one plot against N.
func WriteCombinedPlot(dir string) (string, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "e2e-*.json"))
	if err != nil {
		return "", err
	}
	sort.Strings(paths)
	// The newest run of each proxy and size wins.
	latest := map[string]Result{}
	var all Report
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		var rep Report
		if err := json.Unmarshal(data, &rep); err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		for _, r := range rep.Results {
			latest[fmt.Sprintf("%s/%08d", r.Label, r.Services)] = r
		}
	}
	keys := make([]string, 0, len(latest))
	for k := range latest {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		all.Results = append(all.Results, latest[k])
	}
	return writeFile(dir, "e2e-all.svg", SVG(all))
}
