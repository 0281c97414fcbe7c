package sandbox

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/netfilter"
)

func TestKubeProxyFlags(t *testing.T) {
	s := &Sandbox{opts: Options{NodeName: "node-a"}, Kubeconfig: "/k/admin"}
	kp, err := KubeProxy{Binary: "kube-proxy", Mode: "nftables", Extra: []string{"--v=4"}}.withDefaults(s)
	if err != nil {
		t.Fatal(err)
	}
	if kp.Flavor != netfilter.FlavorNFT {
		t.Errorf("default flavor %q, want nft", kp.Flavor)
	}
	args := kp.args(s)
	for _, want := range []string{
		"--proxy-mode=nftables", "--kubeconfig=/k/admin", "--hostname-override=node-a",
		"--cluster-cidr=10.244.0.0/16,fd00:244::/64", "--conntrack-max-per-core=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=0.0.0.0:10256",
	} {
		if !slices.Contains(args, want) {
			t.Errorf("kube-proxy args %q lack %s", args, want)
		}
	}
	if args[len(args)-1] != "--v=4" {
		t.Errorf("kube-proxy args %q: want the extra flags last, where they win", args)
	}

	for _, bad := range []KubeProxy{
		{Mode: "iptables"},
		{Binary: "kube-proxy", Mode: "userspace"},
		{Binary: "kube-proxy", Mode: "iptables", Flavor: "xtables"},
	} {
		if _, err := bad.withDefaults(s); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestReachableBindAddress(t *testing.T) {
	for bind, want := range map[string]string{
		"0.0.0.0:10256":   "127.0.0.1:10256",
		"[::]:10256":      "127.0.0.1:10256",
		":10256":          "127.0.0.1:10256",
		"127.0.0.1:10249": "127.0.0.1:10249",
		"[::1]:10249":     "[::1]:10249",
	} {
		if got := reachable(bind); got != want {
			t.Errorf("reachable(%q) = %q, want %q", bind, got, want)
		}
	}
}

// The tools kube-proxy finds first on its PATH run the chosen flavor's
// binaries under iptables's own names.
func TestIPTablesToolsRunTheFlavor(t *testing.T) {
	for _, flavor := range netfilter.Flavors() {
		if _, err := exec.LookPath("iptables-" + string(flavor) + "-restore"); err != nil {
			t.Skipf("no iptables-%s here: %v", flavor, err)
		}
		s := &Sandbox{opts: Options{Dir: t.TempDir()}}
		dir, err := s.iptablesTools(flavor)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := s.iptablesTools(flavor); err != nil || again != dir {
			t.Errorf("second call: %q, %v; want %q again", again, err, dir)
		}
		for _, name := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
			script, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			flavored := strings.Replace(name, "tables", "tables-"+string(flavor), 1)
			if !strings.Contains(string(script), "/"+flavored+" \"$@\"") {
				t.Errorf("%s of flavor %s runs:\n%s\nwant %s", name, flavor, script, flavored)
			}
		}
		if left, _ := filepath.Glob(filepath.Join(s.opts.Dir, ".iptables-*")); len(left) != 0 {
			t.Errorf("temporary directories left: %v", left)
		}
	}
}
