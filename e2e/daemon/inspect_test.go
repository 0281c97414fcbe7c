package daemon_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// listed is what `svcproxy list -o json` and `explain -o json` print, as
// much of it as the test reads.
type listed struct {
	Mode   string `json:"mode"`
	Flavor string `json:"iptablesFlavor"`
	Ports  []struct {
		Name struct {
			Namespace, Name string
		} `json:"name"`
		Kernel     string `json:"kernel"`
		Programmed *struct {
			Waited time.Duration `json:"waited"`
		} `json:"programmed"`
		Endpoints []struct {
			Addr   string   `json:"addr"`
			Scopes []string `json:"scopes"`
			Why    string   `json:"why"`
		} `json:"endpoints"`
		Objects []struct {
			Kind, Name, State string
		} `json:"objects"`
	} `json:"ports"`
}

// inspect runs `svcproxy <args> -o json` in the node's namespace.
func (n *node) inspect(args ...string) (*listed, error) {
	out, err := n.sb.Bed.Node().Run(svcproxyBin, append(args, "-o", "json")...)
	if err != nil {
		return nil, fmt.Errorf("svcproxy %v: %v\n%s", args, err, out)
	}
	var l listed
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return nil, fmt.Errorf("svcproxy %v: %v\n%s", args, err, out)
	}
	return &l, nil
}

// kernelStates are the KERNEL column of `svcproxy list` for the test's
// services, by name.
func (n *node) kernelStates() (map[string]string, error) {
	l, err := n.inspect("list")
	if err != nil {
		return nil, err
	}
	states := map[string]string{}
	for _, p := range l.Ports {
		if p.Name.Namespace == n.ns {
			states[p.Name.Name] = p.Kernel
		}
	}
	return states, nil
}

func (n *node) expectKernel(want map[string]string) func() error {
	return func() error {
		got, err := n.kernelStates()
		if err != nil {
			return err
		}
		for name, state := range want {
			if got[name] != state {
				return fmt.Errorf("svcproxy list: %s is %q, want %q (all: %v)", name, got[name], state, got)
			}
		}
		return nil
	}
}

// `svcproxy list` and `explain`, run on the node beside the daemon, show
// what it believes and what the kernel holds: a healthy service in sync,
// with its endpoints explained and its programming latency; and a
// service one of whose rules another program deleted as drifted, naming
// the rule. The full resync is an hour away, so nothing repairs the
// drift meanwhile (the drift check looks only at the hooks: the rule of
// a port is the port's own).
func TestListAndExplainShowWhatTheKernelHolds(t *testing.T) {
	n := newNode(t, 3, "--sync-period=1h")
	healthy := n.createService(n.service("healthy", v1.ServiceTypeClusterIP, 80))
	slice := n.slice("healthy", n.ns, 0, 1)
	slice.Endpoints[1].Conditions.Ready = ptr(false)
	slice.Endpoints[1].Conditions.Serving = ptr(false)
	wrote := n.createSlice(slice)
	n.createService(n.service("empty", v1.ServiceTypeNodePort, 80))
	n.eventually("healthy answers", wrote, answers(n.pod(2), "http://"+healthy.Spec.ClusterIP+"/", "pod-0"))
	n.eventually("both listed in sync", wrote, n.expectKernel(map[string]string{"healthy": "in sync", "empty": "in sync"}))

	got, err := n.inspect("explain", n.ns+"/healthy")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Ports) != 1 || got.Mode != *modeFlag {
		t.Fatalf("explain healthy: %d ports in mode %q, want 1 in %q", len(got.Ports), got.Mode, *modeFlag)
	}
	port := got.Ports[0]
	if port.Programmed == nil || port.Programmed.Waited <= 0 {
		t.Errorf("explain healthy: no programming latency: %+v", port.Programmed)
	}
	for i, want := range []struct{ scopes, why string }{{"cluster", "ready"}, {"", "not serving"}} {
		ep := n.pod(i).IPv4().String()
		j := slices.IndexFunc(port.Endpoints, func(e struct {
			Addr   string   `json:"addr"`
			Scopes []string `json:"scopes"`
			Why    string   `json:"why"`
		}) bool {
			return strings.HasPrefix(e.Addr, ep+":")
		})
		if j < 0 {
			t.Errorf("explain healthy: endpoint %s not shown: %+v", ep, port.Endpoints)
			continue
		}
		if e := port.Endpoints[j]; strings.Join(e.Scopes, ",") != want.scopes || !strings.HasPrefix(e.Why, want.why) {
			t.Errorf("explain healthy: %s used for %v because %q; want %q because %q", ep, e.Scopes, e.Why, want.scopes, want.why)
		}
	}
	if len(port.Objects) == 0 {
		t.Errorf("explain healthy: no kernel object shown")
	}

	// Another program deletes one of the rules refusing "empty".
	got, err = n.inspect("explain", n.ns+"/empty")
	if err != nil {
		t.Fatal(err)
	}
	var reject string
	for _, o := range got.Ports[0].Objects {
		if o.Kind == "rule" && strings.HasPrefix(o.Name, "filter SVCPROXY-FILTER ") && strings.Contains(o.Name, "REJECT") {
			reject = strings.TrimPrefix(o.Name, "filter SVCPROXY-FILTER ")
			break
		}
	}
	if reject == "" {
		t.Fatalf("explain empty shows no REJECT rule: %+v", got.Ports[0].Objects)
	}
	// With the daemon's flavor ("nft" or "legacy").
	if _, err := n.sb.Bed.Node().RunStdin([]byte("*filter\n-D SVCPROXY-FILTER "+reject+"\nCOMMIT\n"),
		"iptables-"+got.Flavor+"-restore", "--noflush"); err != nil {
		t.Fatal(err)
	}
	n.eventually("empty listed drifted", time.Now(), n.expectKernel(map[string]string{"healthy": "in sync", "empty": "drifted"}))
	out, err := n.sb.Bed.Node().Run(svcproxyBin, "explain", n.ns+"/empty")
	if err != nil {
		t.Fatalf("svcproxy explain: %v\n%s", err, out)
	}
	missingLine := slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
		return strings.HasPrefix(strings.TrimSpace(l), "missing") && strings.HasSuffix(l, "filter SVCPROXY-FILTER "+reject)
	})
	if !strings.Contains(out, "kernel:     drifted") || !missingLine {
		t.Errorf("svcproxy explain does not show the deleted rule %q missing:\n%s", reject, out)
	}
	table, err := n.sb.Bed.Node().Run(svcproxyBin, "list", "-o", "wide")
	if err != nil || !strings.Contains(table, "KERNEL") || !strings.Contains(table, "drifted") {
		t.Errorf("svcproxy list -o wide (%v):\n%s", err, table)
	}
	healthyOut, err := n.sb.Bed.Node().Run(svcproxyBin, "explain", n.ns+"/healthy")
	if err != nil || !strings.Contains(healthyOut, "not serving") {
		t.Errorf("svcproxy explain %s/healthy (%v) does not show the endpoint that is not serving:\n%s", n.ns, err, healthyOut)
	}
	t.Logf("svcproxy explain %s/healthy:\n%s\nsvcproxy explain %s/empty:\n%s\nsvcproxy list -o wide:\n%s", n.ns, healthyOut, n.ns, out, table)
}
