package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
)

// inspectOptions are the flags of `svcproxy list` and `explain`.
type inspectOptions struct {
	address string // the daemon's metrics address
	output  string // "", "wide" or "json"
	kernel  bool   // look in the kernel too
}

// Inspect runs `svcproxy list` (every service port this node serves) and
// `svcproxy explain NAMESPACE/NAME` (one service, why each endpoint is or
// is not used, and the kernel objects that implement it). It asks the
// daemon what it believes over its local status endpoint and looks in the
// kernel itself, in the network namespace it runs in: the node's.
func Inspect(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "explain") {
		return fmt.Errorf("usage: svcproxy list|explain NAMESPACE/NAME [--address HOST:PORT] [-o wide|json]")
	}
	cmd := args[0]
	fs := pflag.NewFlagSet("svcproxy "+cmd, pflag.ContinueOnError)
	var o inspectOptions
	fs.StringVar(&o.address, "address", "127.0.0.1:10249", "the svcproxy metrics server to ask (its --metrics-bind-address)")
	fs.StringVarP(&o.output, "output", "o", "", "output format: wide or json")
	fs.BoolVar(&o.kernel, "kernel", true, "check what the kernel holds (needs the node's network namespace and root)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.output != "" && o.output != "wide" && o.output != "json" {
		return fmt.Errorf("--output %q: want wide or json", o.output)
	}
	var service string
	switch {
	case cmd == "explain" && fs.NArg() != 1:
		return fmt.Errorf("usage: svcproxy explain NAMESPACE/NAME")
	case cmd == "explain":
		service = fs.Arg(0)
		if ns, name, ok := strings.Cut(service, "/"); !ok || ns == "" || name == "" {
			return fmt.Errorf("explain %q: want NAMESPACE/NAME", service)
		}
	case fs.NArg() != 0:
		return fmt.Errorf("usage: svcproxy list [--address HOST:PORT] [-o wide|json]")
	}
	doc, err := fetchStatus(ctx, o.address, service)
	if err != nil {
		return err
	}
	ports := inspectPorts(ctx, hostKernel(), doc, o.kernel)
	switch {
	case cmd == "explain" && len(ports) == 0:
		return fmt.Errorf("svcproxy serves no port of service %s on this node", service)
	case o.output == "json":
		return writeJSON(out, inspectDoc{Mode: doc.Mode, Flavor: doc.Flavor, Node: doc.Node.Name, Ports: ports})
	case cmd == "explain":
		return writeExplain(out, doc, ports)
	}
	return writeList(out, ports, o.output == "wide")
}

// fetchStatus asks the daemon for its status, of every port or one service's.
func fetchStatus(ctx context.Context, address, service string) (*statusDoc, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("--address %q: %w", address, err)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		host = "127.0.0.1" // bound to every address: ask over loopback
		if a.Is6() {
			host = "::1"
		}
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: StatusPath}
	if service != "" {
		u.RawQuery = url.Values{"service": {service}}.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking svcproxy at %s (is it running, with this --metrics-bind-address?): %w", address, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("svcproxy at %s: %s: %s", address, resp.Status, strings.TrimSpace(string(body)))
	}
	var doc statusDoc
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return nil, fmt.Errorf("reading svcproxy's status from %s: %w", address, err)
	}
	return &doc, nil
}

// inspectDoc is what `list -o json` and `explain -o json` print.
type inspectDoc struct {
	Mode   string           `json:"mode"`
	Flavor netfilter.Flavor `json:"iptablesFlavor"`
	Node   string           `json:"node"`
	Ports  []inspectedPort  `json:"ports"`
}

// inspectedPort is one service port: the daemon's view of it and what the
// kernel holds of it.
type inspectedPort struct {
	Family model.Family `json:"family"`
	portStatusDoc
	// Kernel sums up Objects (model.PortStatus), or says why the kernel
	// was not read.
	Kernel  string               `json:"kernel"`
	Objects []model.KernelObject `json:"objects,omitempty"`
	// LastError is the error of the family's last sync, if it failed.
	LastError string `json:"lastError,omitempty"`
}

// inspectPorts pairs each port of the document with what the kernel holds
// of it, one backend of the daemon's mode per family reading the kernel.
func inspectPorts(ctx context.Context, k kernelAccess, doc *statusDoc, kernel bool) []inspectedPort {
	var out []inspectedPort
	for i := range doc.Families {
		f := &doc.Families[i]
		var objects map[model.ServicePortName][]model.KernelObject
		verdict := "not checked"
		if kernel {
			var err error
			if objects, err = inspectFamily(ctx, k, doc, f); err != nil {
				verdict = "unknown: " + err.Error()
			}
		}
		for _, p := range f.Ports {
			ip := inspectedPort{Family: f.Family, portStatusDoc: p, Kernel: verdict, LastError: f.LastError}
			if objs, ok := objects[p.Name]; ok {
				ip.Objects, ip.Kernel = objs, model.PortStatus(objs)
			}
			out = append(out, ip)
		}
	}
	return out
}

// inspectFamily makes a backend like the daemon's and lets it read the kernel.
func inspectFamily(ctx context.Context, k kernelAccess, doc *statusDoc, f *familyStatusDoc) (map[model.ServicePortName][]model.KernelObject, error) {
	var b proxier.Backend
	var err error
	if doc.Mode == modeIPVS {
		if doc.IPVS == nil {
			return nil, fmt.Errorf("the daemon runs the IPVS mode but gave no IPVS settings")
		}
		b, err = k.ipvs(*doc.IPVS, f.Family, doc.Flavor)
	} else {
		b, err = k.iptables(doc.Rules, f.Family, doc.Flavor)
	}
	if err != nil {
		return nil, err
	}
	return b.Inspect(ctx, f.view(doc.Node))
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeList prints the ports as kubectl prints objects.
func writeList(out io.Writer, ports []inspectedPort, wide bool) error {
	w := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
	header := "NAMESPACE\tNAME\tPORT\tFAMILY\tCLUSTER-IP\tEXTERNAL\tNODE-PORT\tENDPOINTS\tKERNEL"
	if wide {
		header += "\tPOLICY\tAFFINITY\tPROGRAMMED\tWAITED"
	}
	fmt.Fprintln(w, header)
	for _, p := range ports {
		sp := p.ServicePort
		line := []string{sp.Name.Namespace, sp.Name.Name, portName(sp.Name), p.Family.String(),
			netip.AddrPortFrom(sp.ClusterIP, sp.Port).String(), orDash(externalAddrs(sp)), orDash(nodePort(sp)),
			endpointSummary(sp), p.Kernel}
		if wide {
			programmed, waited := "-", "-"
			if p.Programmed != nil {
				programmed = p.Programmed.At.UTC().Format(time.RFC3339)
				if p.Programmed.Waited > 0 {
					waited = p.Programmed.Waited.Round(time.Millisecond).String()
				}
			}
			line = append(line, policies(sp), affinity(sp), programmed, waited)
		}
		fmt.Fprintln(w, strings.Join(line, "\t"))
	}
	return w.Flush()
}

// writeExplain prints one service: per port its addresses, policies,
// endpoints with why each is or is not used, the last sync that
// programmed it, and the kernel objects that implement it.
func writeExplain(out io.Writer, doc *statusDoc, ports []inspectedPort) error {
	for i, p := range ports {
		if i > 0 {
			fmt.Fprintln(out)
		}
		sp := p.ServicePort
		fmt.Fprintf(out, "Service %s/%s port %s (%s), mode %s, iptables %s\n", sp.Name.Namespace, sp.Name.Name, portName(sp.Name), p.Family, doc.Mode, doc.Flavor)
		fmt.Fprintf(out, "  addresses:  cluster IP %s", netip.AddrPortFrom(sp.ClusterIP, sp.Port))
		if e := externalAddrs(sp); e != "" {
			fmt.Fprintf(out, "; external %s", e)
		}
		if np := nodePort(sp); np != "" {
			fmt.Fprintf(out, "; node port %s", np)
		}
		fmt.Fprintln(out)
		fmt.Fprintf(out, "  policies:   %s; session affinity %s", policies(sp), affinity(sp))
		if len(sp.SourceRanges) > 0 {
			fmt.Fprintf(out, "; source ranges %s", joinStrings(sp.SourceRanges))
		}
		fmt.Fprintln(out)
		fmt.Fprintf(out, "  endpoints:  %s\n", endpointSummary(sp))
		fmt.Fprintf(out, "  programmed: %s\n", programmedText(p.Programmed))
		if p.LastError != "" {
			fmt.Fprintf(out, "  last sync failed: %s\n", p.LastError)
		}
		fmt.Fprintf(out, "  kernel:     %s\n", p.Kernel)
		if len(p.Endpoints) > 0 {
			w := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(w, "\n  ENDPOINT\tNODE\tZONE\tCONDITIONS\tUSED FOR\tWHY")
			for _, e := range p.Endpoints {
				fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\n", e.Addr, orDash(e.Node), orDash(e.Zone), conditions(e), orDash(strings.Join(e.Scopes, ",")), e.Why)
			}
			if err := w.Flush(); err != nil {
				return err
			}
		}
		if len(p.Objects) > 0 {
			w := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(w, "\n  STATE\tKIND\tOBJECT")
			for _, o := range p.Objects {
				name := o.Name
				if o.Detail != "" {
					name += " (" + o.Detail + ")"
				}
				fmt.Fprintf(w, "  %s\t%s\t%s\n", o.State, o.Kind, name)
			}
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func portName(n model.ServicePortName) string {
	if n.Port == "" {
		return n.Protocol.String()
	}
	return n.Port + "/" + n.Protocol.String()
}

func externalAddrs(sp *model.ServicePort) string {
	var parts []string
	for _, a := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
		parts = append(parts, a.String())
	}
	return strings.Join(parts, ",")
}

func nodePort(sp *model.ServicePort) string {
	if sp.NodePort == 0 {
		return ""
	}
	return strconv.Itoa(int(sp.NodePort))
}

// endpointSummary counts the endpoints of each scope new connections use,
// and says when they are the terminating fallback.
func endpointSummary(sp *model.ServicePort) string {
	var parts []string
	add := func(n int, scope string, eps []model.Endpoint) {
		s := fmt.Sprintf("%d %s", n, scope)
		if slices.ContainsFunc(eps, func(e model.Endpoint) bool { return !e.Ready }) {
			s += " (terminating fallback)"
		}
		parts = append(parts, s)
	}
	add(len(sp.ClusterEndpoints), map[bool]string{true: "local (internal policy)", false: "cluster"}[sp.InternalPolicyLocal], sp.ClusterEndpoints)
	if sp.ExternallyAccessible() && sp.ExternalPolicyLocal {
		add(len(sp.LocalEndpoints), "local (external policy)", sp.LocalEndpoints)
	}
	if sp.InternalPolicyLocal && sp.ExternallyAccessible() {
		add(len(sp.ExternalClusterEndpoints), "external", sp.ExternalClusterEndpoints)
	}
	if !sp.HasEndpoints {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func policies(sp *model.ServicePort) string {
	internal, external := "Cluster", "Cluster"
	if sp.InternalPolicyLocal {
		internal = "Local"
	}
	if sp.ExternalPolicyLocal {
		external = "Local"
	}
	if !sp.ExternallyAccessible() {
		return "internal " + internal
	}
	return "internal " + internal + ", external " + external
}

func affinity(sp *model.ServicePort) string {
	if sp.AffinitySeconds == 0 {
		return "None"
	}
	return fmt.Sprintf("ClientIP %ds", sp.AffinitySeconds)
}

func conditions(e proxier.EndpointUse) string {
	var c []string
	for _, x := range []struct {
		set  bool
		name string
	}{{e.Ready, "ready"}, {e.Serving, "serving"}, {e.Terminating, "terminating"}, {e.Local, "local"}} {
		if x.set {
			c = append(c, x.name)
		}
	}
	return orDash(strings.Join(c, ","))
}

func programmedText(info *proxier.SyncInfo) string {
	if info == nil {
		return "not by this process (unchanged since it started, or never)"
	}
	kind := "partial"
	if info.Full {
		kind = "full"
	}
	s := fmt.Sprintf("%s by a %s sync that took %v", info.At.UTC().Format(time.RFC3339Nano), kind, info.Took.Round(time.Microsecond))
	if info.Waited > 0 {
		s += fmt.Sprintf(", %v after the change was queued", info.Waited.Round(time.Microsecond))
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinStrings[T fmt.Stringer](xs []T) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = x.String()
	}
	return strings.Join(parts, ",")
}
