package iptables_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// What PortRules gives each port is what the full plan writes for it: its
// own chains whole, its shared rules among the chain's; and every rule of
// a chain that only ports fill is some port's (HEALTHCHECK's fixed head,
// the localnet filter, aside).
func TestPortRulesAreWhatTheFullPlanWrites(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			full := iptables.Compile(sc.cfg, sc.view, nil)
			claimed := map[netfilter.ChainKey]map[string]bool{}
			for _, r := range netfilter.NewRules(sc.cfg, sc.view.Family).LocalnetFilterRules() {
				claimed[netfilter.FilterKey(netfilter.ChainHealthCheck)] = map[string]bool{r: true}
			}
			claim := func(k netfilter.ChainKey, rule string) {
				if claimed[k] == nil {
					claimed[k] = map[string]bool{}
				}
				claimed[k][rule] = true
			}
			for name, pr := range iptables.PortRules(sc.cfg, sc.view) {
				for _, ch := range pr.Own {
					if !slices.Equal(full.Write[ch.Key], ch.Rules) {
						t.Errorf("%v: own chain %v is %q, the plan writes %q", name, ch.Key, ch.Rules, full.Write[ch.Key])
					}
					for _, r := range ch.Rules {
						claim(ch.Key, r)
					}
				}
				for _, r := range pr.Shared {
					if !slices.Contains(full.Write[r.Chain], r.Text) {
						t.Errorf("%v: shared rule %v %q is not in the plan", name, r.Chain, r.Text)
					}
					claim(r.Chain, r.Text)
				}
			}
			for k, rules := range full.Write {
				if !portFilled(k) {
					continue
				}
				for _, r := range rules {
					if !claimed[k][r] {
						t.Errorf("%v rule %q is no port's", k, r)
					}
				}
			}
		})
	}
}

// portFilled: chains whose every rule some port contributes.
func portFilled(k netfilter.ChainKey) bool {
	for _, p := range []string{"SVC-", "SVI-", "SVL-", "EXT-", "FW-", "DST-", "NODEPORTS", "HAIRPIN", "HEALTHCHECK"} {
		if strings.HasPrefix(k.Name, netfilter.ChainPrefix+p) {
			return true
		}
	}
	return false
}

// Checked against the rules a full plan wrote, every port is in sync; a
// rule taken from one port's chain drifts that port and no other, and a
// port whose rules are all gone is missing.
func TestInspectTellsDriftedFromMissing(t *testing.T) {
	sc := scenarioNamed(t, "internal-local")
	full := iptables.Compile(sc.cfg, sc.view, nil)
	ports := iptables.PortRules(sc.cfg, sc.view)
	status := func(saved netfilter.SavedRules) map[model.ServicePortName]string {
		out := map[model.ServicePortName]string{}
		for name, pr := range ports {
			out[name] = model.PortStatus(pr.Check(saved))
		}
		return out
	}
	for name, s := range status(netfilter.SavedRules(maps.Clone(full.Write))) {
		if s != model.StatusInSync {
			t.Errorf("%v is %s under the full plan's rules", name, s)
		}
	}

	web := model.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: model.TCP}
	drifted := netfilter.SavedRules(maps.Clone(full.Write))
	own := ports[web].Own[0]
	drifted[own.Key] = own.Rules[1:]
	for name, s := range status(drifted) {
		if want := map[bool]string{true: model.StatusDrifted, false: model.StatusInSync}[name == web]; s != want {
			t.Errorf("one rule of %v's %s gone: %v is %s, want %s", web, own.Key.Name, name, s, want)
		}
	}
	objs := ports[web].Check(drifted)
	if objs[0].State != model.Differs || !strings.Contains(objs[0].Detail, "missing: "+own.Rules[0]) {
		t.Errorf("the chain's check is %+v, want it to name the missing rule %q", objs[0], own.Rules[0])
	}

	missing := netfilter.SavedRules(maps.Clone(full.Write))
	for _, ch := range ports[web].Own {
		delete(missing, ch.Key)
	}
	for _, r := range ports[web].Shared {
		missing[r.Chain] = slices.DeleteFunc(slices.Clone(missing[r.Chain]), func(s string) bool { return s == r.Text })
	}
	if s := status(missing)[web]; s != model.StatusMissing {
		t.Errorf("every rule of %v gone: it is %s, want %s", web, s, model.StatusMissing)
	}
}

func scenarioNamed(t *testing.T, name string) scenario {
	for _, sc := range scenarios() {
		if sc.name == name {
			return sc
		}
	}
	t.Fatalf("no scenario %q", name)
	return scenario{}
}
