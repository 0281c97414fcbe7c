package daemon_test

import (
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/internal/sandbox"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// kubeProxy is the upstream kube-proxy running in a test's node namespace:
// the program svcproxy takes nodes over from.
type kubeProxy struct {
	n     *node
	opts  sandbox.KubeProxy
	proc  *sandbox.Process
	ended bool
}

// startKubeProxy runs the upstream kube-proxy of the control plane's
// release in n's node namespace, in mode (iptables, nftables or ipvs) and,
// for the iptables-based modes, with the given iptables flavor, against the
// test's apiserver as n's Node, and waits for its first sync. extra flags
// go last. The test's cleanup stops it if the test has not, and a failed
// test shows its log.
func (n *node) startKubeProxy(mode string, flavor netfilter.Flavor, extra ...string) *kubeProxy {
	n.t.Helper()
	bin, err := cp.KubeProxy()
	if err != nil {
		n.t.Fatal(err)
	}
	kp := &kubeProxy{n: n, opts: sandbox.KubeProxy{Binary: bin, Mode: mode, Flavor: flavor, Extra: extra}}
	kp.proc, err = n.sb.StartKubeProxy(kp.opts)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() {
		kp.stop()
		if n.t.Failed() {
			n.t.Logf("kube-proxy (%s mode, %s) output:\n%s", mode, flavor, tail(kp.proc.Output(), 80))
		}
	})
	if err := n.sb.WaitKubeProxySynced(kp.proc, kp.opts, scaled(60*time.Second)); err != nil {
		n.t.Fatal(err)
	}
	return kp
}

// stop ends kube-proxy with SIGTERM, sent to its PID only, and waits for
// it. kube-proxy has no SIGTERM handler: it dies of the signal, leaving its
// rules behind, which is what a node svcproxy takes over looks like. Any
// other end (a crash before, or needing SIGKILL) fails the test.
func (kp *kubeProxy) stop() {
	kp.n.t.Helper()
	if kp.ended {
		return
	}
	kp.ended = true
	pid := kp.proc.PID()
	if done, err := kp.proc.Exited(); done {
		kp.n.t.Errorf("kube-proxy (pid %d) had already ended: %v", pid, err)
		return
	}
	err := kp.proc.Stop(10 * time.Second)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return
		}
	}
	kp.n.t.Errorf("kube-proxy (pid %d) on SIGTERM: %v, want it to end of the signal", pid, err)
}

// The upstream kube-proxy runs in a sandbox node against the test's
// apiserver: in its iptables mode under each iptables flavor and in its
// nftables mode, a Service's ClusterIP carries real traffic to both
// endpoints, and once kube-proxy is stopped its rules are still there, in
// the flavor it was given and not in the other.
func TestKubeProxyRunsInSandbox(t *testing.T) {
	if *modeFlag != "iptables" {
		// In the VM (-svcproxy.mode=ipvs) the suite checks svcproxy's IPVS
		// mode; kube-proxy's modes are checked on the host's kernel.
		t.Skipf("kube-proxy's own modes are checked in the suite's iptables run, not with -svcproxy.mode=%s", *modeFlag)
	}
	cases := []struct {
		name, mode string
		flavor     netfilter.Flavor
	}{
		{"iptables-nft", "iptables", netfilter.FlavorNFT},
		{"iptables-legacy", "iptables", netfilter.FlavorLegacy},
		{"nftables", "nftables", netfilter.FlavorNFT},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := newIdleNode(t, 3) // pods 0 and 1 serve, pod 2 is the client
			began := time.Now()
			kp := n.startKubeProxy(c.mode, c.flavor)
			t.Logf("kube-proxy started and synced in %v", time.Since(began).Round(time.Millisecond))

			svc := n.createService(n.service("web", v1.ServiceTypeClusterIP, 80))
			wrote := n.createSlice(n.slice("web", n.ns, 0, 1))
			url := "http://" + svc.Spec.ClusterIP + "/"
			n.eventually("ClusterIP through kube-proxy", wrote, answers(n.pod(2), url, "pod-0", "pod-1"))
			counts, err := sandbox.Spread(client(n.pod(2)), url, 20)
			if err != nil || counts["pod-0"] == 0 || counts["pod-1"] == 0 {
				t.Fatalf("20 requests spread %v (err %v), want both endpoints used", counts, err)
			}

			kp.stop()
			if err := syscall.Kill(kp.proc.PID(), 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("kube-proxy (pid %d) still exists after stop (kill -0: %v)", kp.proc.PID(), err)
			}
			if c.mode == "nftables" {
				n.expectNFTablesLeftovers(svc.Spec.ClusterIP)
			} else {
				n.expectIPTablesLeftovers(c.flavor, svc.Spec.ClusterIP)
			}
		})
	}
}

// expectIPTablesLeftovers checks that kube-proxy's iptables rules outlived
// it, in flavor's nat table and not in the other flavor's.
func (n *node) expectIPTablesLeftovers(flavor netfilter.Flavor, clusterIP string) {
	n.t.Helper()
	for _, f := range netfilter.Flavors() {
		nat, err := n.sb.Bed.Node().Run(f.Binary(model.IPv4, "-save"), "-t", "nat")
		if err != nil {
			n.t.Fatal(err)
		}
		has := strings.Contains(nat, "\n:KUBE-SERVICES ") && strings.Contains(nat, "-d "+clusterIP+"/32")
		switch {
		case f == flavor && !has:
			n.t.Errorf("after kube-proxy ended, its KUBE-SERVICES rules for %s are not in %s's nat table:\n%s", clusterIP, f, nat)
		case f != flavor && has:
			n.t.Errorf("kube-proxy was given iptables-%s, yet %s's nat table has its rules:\n%s", flavor, f, nat)
		}
	}
}

// expectNFTablesLeftovers checks that kube-proxy's nftables table outlived
// it, with the service in it.
func (n *node) expectNFTablesLeftovers(clusterIP string) {
	n.t.Helper()
	table, err := n.sb.Bed.Node().Run("nft", "list", "table", "ip", "kube-proxy")
	if err != nil {
		n.t.Fatalf("after kube-proxy ended: %v", err)
	}
	if !strings.Contains(table, clusterIP) {
		n.t.Errorf("after kube-proxy ended, table ip kube-proxy does not mention %s:\n%s", clusterIP, table)
	}
	if _, err := n.sb.Bed.Node().Run("nft", "list", "table", "ip6", "kube-proxy"); err != nil {
		n.t.Errorf("after kube-proxy ended, its IPv6 table is gone: %v", err)
	}
}
