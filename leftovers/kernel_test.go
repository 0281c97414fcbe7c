package leftovers

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// TestRemoveIPTablesInKernel loads kube-proxy's leftovers into real
// iptables of each flavor and family, in a namespace of its own, and
// removes them: what stays must be what the fake kernel leaves (the golden
// files), so the restore input is one the real tools take.
func TestRemoveIPTablesInKernel(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, flavor := range netfilter.Flavors() {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			for _, fixture := range []string{"kube-proxy-iptables.rules", "kube-proxy-ipvs.rules"} {
				t.Run(string(flavor)+"/"+family.String()+"/"+fixture, func(t *testing.T) {
					testRemoveInKernel(t, flavor, family, fixture)
				})
			}
		}
	}
}

func testRemoveInKernel(t *testing.T, flavor netfilter.Flavor, family model.Family, fixture string) {
	ns := netnstest.NewNS(t, "leftovers")
	text, err := os.ReadFile(filepath.Join("testdata", fixture))
	if err != nil {
		t.Fatal(err)
	}
	rules := string(text)
	if family == model.IPv6 {
		rules = sixify(rules)
	}
	for _, set := range kubeProxySetsNamed(rules) {
		ns.MustRun("ipset", "create", set, "hash:ip", "family", map[model.Family]string{model.IPv4: "inet", model.IPv6: "inet6"}[family])
	}
	if _, err := ns.RunStdin([]byte(rules), flavor.Binary(family, "-restore"), "--noflush"); err != nil {
		t.Fatalf("loading the leftovers: %v", err)
	}

	var removed Removed
	err = ns.Do(func() (err error) {
		removed, err = Remover{Run: netfilter.ExecRunner{}}.RemoveIPTables(context.Background(), family, flavor)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed.Removed) == 0 {
		t.Fatal("nothing removed")
	}

	// The fake kernel, loaded alike, is what the real one must now hold.
	k := netfilter.NewFakeKernel()
	if _, err := k.Run(context.Background(), "iptables-nft-restore", []string{"--noflush"}, []byte(rules)); err != nil {
		t.Fatal(err)
	}
	if _, err := (Remover{Run: k}).RemoveIPTables(context.Background(), family, flavor); err != nil {
		t.Fatal(err)
	}
	for _, table := range Tables() {
		got := ns.MustRun(flavor.Binary(family, "-save"), "-t", string(table))
		if g, w := chainsAndRules(got), chainsAndRules(k.Save(table)); g != w {
			t.Errorf("%s table:\n%s\nwant\n%s", table, g, w)
		}
	}
}

// kubeProxySetsNamed lists the sets the rules match on: they must exist
// for the rules to load.
func kubeProxySetsNamed(rules string) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range regexp.MustCompile(`--match-set (\S+)`).FindAllStringSubmatch(rules, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			out = append(out, m[1])
		}
	}
	return out
}

// chainsAndRules keeps the declarations (without policies and counters)
// and rules of a save, sorted: the kernel and the fake agree on neither
// the order of user chains nor how a few matches are spelt, so rules are
// compared by the chain and target they belong to.
func chainsAndRules(save string) string {
	var lines []string
	for _, l := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			lines = append(lines, ":"+name)
		case strings.HasPrefix(l, "-A "):
			chain, rule, _ := strings.Cut(l[3:], " ")
			lines = append(lines, "-A "+chain+" -> "+netfilter.JumpTarget(rule))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// sixify turns the IPv4 fixture into its IPv6 twin, as kube-proxy writes
// it for ip6tables (kubelet's localnet rule is IPv4 only).
func sixify(rules string) string {
	var keep []string
	for _, l := range strings.Split(rules, "\n") {
		if !strings.Contains(l, "127.0.0.0/8") {
			keep = append(keep, l)
		}
	}
	return strings.NewReplacer(
		"10.96.0.10/32", "fd00:96::10/128", "10.96.0.20/32", "fd00:96::20/128",
		"10.244.0.0/16", "fd00:244::/64", "10.244.0.7/32", "fd00:244::7/128",
		"10.244.1.5/32", "fd00:244::1:5/128", "10.244.2.9/32", "fd00:244::2:9/128",
		"10.244.0.7:80", "[fd00:244::7]:80", "10.244.1.5:8080", "[fd00:244::1:5]:8080",
		"10.244.2.9:8080", "[fd00:244::2:9]:8080",
		"icmp-port-unreachable", "icmp6-port-unreachable",
		"KUBE-LOAD-BALANCER dst", "KUBE-6-LOAD-BALANCER dst",
		"KUBE-CLUSTER-IP", "KUBE-6-CLUSTER-IP", "KUBE-IPVS-IPS", "KUBE-6-IPVS-IPS",
		"KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-6-HEALTH-CHECK-NODE-PORT",
		"KUBE-LOAD-BALANCER-FW", "KUBE-6-LOAD-BALANCER-FW",
		"KUBE-NODE-PORT-TCP", "KUBE-6-NODE-PORT-TCP", "KUBE-LOOP-BACK", "KUBE-6-LOOP-BACK",
	).Replace(strings.Join(keep, "\n"))
}
