package daemon_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/internal/sandbox"
	"github.com/svcproxy/svcproxy/leftovers"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// takeOverCase is kube-proxy in one mode handing a node over to svcproxy
// in one mode.
type takeOverCase struct {
	kubeProxyMode string
	flavor        netfilter.Flavor
	svcproxyMode  string
}

// name is short: it names the test's API namespace and Node, cut to 50
// characters.
func (c takeOverCase) name() string {
	return fmt.Sprintf("%s-%s-to-%s", c.kubeProxyMode, c.flavor, c.svcproxyMode)
}

// takeOverCases are the hand-overs the kernel under test can run: on this
// machine's (the suite's iptables run) kube-proxy's iptables mode under
// each flavor and its nftables mode; in the VM's (-svcproxy.mode=ipvs)
// kube-proxy's ipvs mode to either of svcproxy's.
func takeOverCases() []takeOverCase {
	if *modeFlag == "ipvs" {
		// kube-proxy's ipvs mode writes iptables chains too, so the
		// first case also covers the IPVS mode removing kube-proxy's
		// chains; a case from its iptables mode would add minutes of
		// emulated VM and no code.
		return []takeOverCase{
			{"ipvs", netfilter.FlavorNFT, "ipvs"},
			{"ipvs", netfilter.FlavorNFT, "iptables"},
		}
	}
	return []takeOverCase{
		{"iptables", netfilter.FlavorNFT, "iptables"},
		{"iptables", netfilter.FlavorLegacy, "iptables"},
		{"nftables", netfilter.FlavorNFT, "iptables"},
	}
}

// svcproxy takes a node over from the real kube-proxy, stopped as its
// DaemonSet's deletion stops it (its rules stay): traffic to a service
// flows throughout, an established connection goes on, kube-proxy's
// state is gone (kubelet's chains stay), and a service that then loses
// its endpoints is refused, where kube-proxy's stale rules would still
// send it to the old endpoint.
func TestTakesOverFromKubeProxy(t *testing.T) {
	for _, c := range takeOverCases() {
		t.Run(c.name(), func(t *testing.T) { testTakeOver(t, c) })
	}
}

func testTakeOver(t *testing.T, c takeOverCase) {
	if c.kubeProxyMode == "ipvs" {
		// kube-proxy reads conntrack's sysctls in its namespace, which
		// only namespaces made after the module loads have.
		if out, err := exec.Command("modprobe", "-a", "nf_conntrack", "ip_vs", "ip_vs_rr").CombinedOutput(); err != nil {
			t.Fatalf("modprobe: %v: %s", err, out)
		}
	}
	n := newIdleNode(t, 4) // pods 0 and 1 serve web, pod 2 serves gone, pod 3 is the client
	from := n.pod(3)
	kp := n.startKubeProxy(c.kubeProxyMode, c.flavor)
	if c.kubeProxyMode == "iptables" {
		addKubeletChains(t, n.sb.Bed.Node(), c.flavor)
	}
	web := n.createService(n.service("web", v1.ServiceTypeClusterIP, 80))
	gone := n.createService(n.service("gone", v1.ServiceTypeClusterIP, 80))
	webURL, goneURL := "http://"+web.Spec.ClusterIP+"/", "http://"+gone.Spec.ClusterIP+"/"
	// kube-proxy's ipvs mode in the emulated VM takes a minute or more
	// to program a service: its waits get longer bounds than svcproxy's.
	kubeProxyWait := func(what string, since time.Time, f func() error) {
		t.Helper()
		if _, err := sandbox.WaitFor(scaled(90*time.Second), f); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: working %v after the API write", what, time.Since(since).Round(time.Millisecond))
	}
	kubeProxyWait("web through kube-proxy", n.createSlice(n.slice("web", n.ns, 0, 1)), answers(from, webURL, "pod-0", "pod-1"))
	kubeProxyWait("gone through kube-proxy", n.createSlice(n.slice("gone", n.ns, 2)), answers(from, goneURL, "pod-2"))
	established := dialKeepAlive(t, from, web.Spec.ClusterIP+":80")

	kp.stop()
	probe := startProbe(from, webURL, func() string { return flowsTo(n.sb.Bed.Node(), web.Spec.ClusterIP) })
	n.startProxy(n.sb.Kubeconfig, "--proxy-mode="+c.svcproxyMode)
	n.eventually("kube-proxy's rules and sets gone", time.Now(), func() error { return kubeProxyLeft(n.sb.Bed.Node(), c, false) })
	failures := probe.stop()
	switch {
	case len(failures) > 0 && c.kubeProxyMode == "ipvs" && len(failures)*100 <= probe.count():
		// A known gap, in the README: from kube-proxy's IPVS mode to the
		// iptables mode about one request in 500 hangs in the VM, most
		// likely a reused client port meeting IPVS's leftover entry of
		// an earlier connection; into the IPVS mode once, one of 457
		// (CI of 2026-12-03). Up to 1% is logged, not failed.
		t.Logf("known gap: %d of %d requests to web failed during the take-over, the first: %v", len(failures), probe.count(), failures[0])
		t.Logf("the node's flows to web when the first failed:\n%s", probe.atFirstFailure)
	case len(failures) > 0:
		t.Errorf("%d of %d requests to web failed during the take-over, the first: %v", len(failures), probe.count(), failures[0])
		t.Logf("the node's flows to web when the first failed:\n%s", probe.atFirstFailure)
	default:
		t.Logf("%d requests to web during the take-over, all answered", probe.count())
	}
	if err := established.ask(); err != nil {
		t.Errorf("the connection established through kube-proxy, after the take-over: %v", err)
	}
	if c.svcproxyMode == "iptables" {
		// The iptables mode retires kube-proxy's virtual servers once
		// their connections end: the one kept open, and those IPVS holds
		// in TIME_WAIT for two minutes after each probe went through it.
		established.conn.Close()
		began := time.Now()
		if _, err := sandbox.WaitFor(scaled(30*time.Second)+3*time.Minute, func() error { return kubeProxyLeft(n.sb.Bed.Node(), c, true) }); err != nil {
			t.Fatalf("kube-proxy's virtual servers once their connections ended: %v", err)
		}
		t.Logf("kube-proxy's virtual servers gone %v after the last connection closed", time.Since(began).Round(time.Second))
	}
	if c.kubeProxyMode == "iptables" {
		expectKubeletChains(t, n.sb.Bed.Node(), c.flavor)
	}

	n.eventually("web still spread over both endpoints", time.Now(), func() error {
		counts, err := sandbox.Spread(client(from), webURL, 20)
		if err != nil || counts["pod-0"] == 0 || counts["pod-1"] == 0 {
			return fmt.Errorf("20 requests spread %v (err %v), want both endpoints", counts, err)
		}
		return nil
	})
	n.eventually("gone, without endpoints, refused", n.updateSlice(n.slice("gone", n.ns)), refused(from, goneURL))
}

// kubeProxyLeft describes what of kube-proxy's state the node still
// holds: chains in either flavor, nftables tables, ipsets, and with
// virtualServers, in svcproxy's iptables mode, any virtual server or
// kube-ipvs0 (and only then the sets); nil when none.
func kubeProxyLeft(node *netnstest.NS, c takeOverCase, virtualServers bool) error {
	var left []string
	for _, flavor := range netfilter.Flavors() {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			for _, table := range leftovers.Tables() {
				save, err := node.Run(flavor.Binary(family, "-save"), "-t", string(table))
				if err != nil {
					return err
				}
				for _, chain := range leftovers.ParseSave(table, []byte(save)).Chains {
					if leftovers.IsKubeProxyChain(table, chain) {
						left = append(left, fmt.Sprintf("%s %s %s chain %s", flavor, family, table, chain))
					}
				}
			}
		}
	}
	if tables, err := node.Run("nft", "list", "tables"); err == nil {
		for _, line := range strings.Split(tables, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "table" && (f[1] == "ip" || f[1] == "ip6") && f[2] == "kube-proxy" {
				left = append(left, "nftables table "+f[1]+" "+f[2])
			}
		}
	}
	// The iptables mode destroys kube-proxy's sets once their virtual
	// servers are gone.
	if sets, err := node.Run("ipset", "list", "-n"); err == nil && (virtualServers || c.svcproxyMode != "iptables") {
		for _, s := range strings.Fields(sets) {
			if strings.HasPrefix(s, "KUBE-") {
				left = append(left, "ipset "+s)
			}
		}
	}
	if virtualServers && c.svcproxyMode == "iptables" {
		if vs, err := node.Run("cat", "/proc/net/ip_vs"); err == nil && virtualServerLine.MatchString(vs) {
			left = append(left, "IPVS virtual servers:\n"+vs)
		}
		if _, err := node.Run("ip", "link", "show", "kube-ipvs0"); err == nil {
			left = append(left, "kube-ipvs0")
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("left: %s", strings.Join(left, "; "))
	}
	return nil
}

// virtualServerLine is a virtual server in /proc/net/ip_vs (its header
// lines start with "IP", "Prot" and "  ->").
var virtualServerLine = regexp.MustCompile(`(?m)^(TCP|UDP|SCTP)\s`)

// kubeletChains are what kubelet keeps in a node's iptables, which a
// take-over must leave.
var kubeletChains = []struct{ table, chain, jumpFrom string }{
	{"mangle", "KUBE-KUBELET-CANARY", ""},
	{"filter", "KUBE-FIREWALL", "INPUT"},
}

func addKubeletChains(t *testing.T, node *netnstest.NS, flavor netfilter.Flavor) {
	t.Helper()
	bin := flavor.Binary(model.IPv4, "")
	for _, c := range kubeletChains {
		if _, err := node.Run(bin, "-w", "-t", c.table, "-S", c.chain); err != nil {
			node.MustRun(bin, "-w", "-t", c.table, "-N", c.chain)
		}
		if c.jumpFrom != "" {
			if _, err := node.Run(bin, "-w", "-t", c.table, "-C", c.jumpFrom, "-j", c.chain); err != nil {
				node.MustRun(bin, "-w", "-t", c.table, "-I", c.jumpFrom, "-j", c.chain)
			}
		}
	}
}

func expectKubeletChains(t *testing.T, node *netnstest.NS, flavor netfilter.Flavor) {
	t.Helper()
	bin := flavor.Binary(model.IPv4, "")
	for _, c := range kubeletChains {
		if _, err := node.Run(bin, "-w", "-t", c.table, "-S", c.chain); err != nil {
			t.Errorf("kubelet's %s chain %s is gone: %v", c.table, c.chain, err)
		}
		if c.jumpFrom != "" {
			if _, err := node.Run(bin, "-w", "-t", c.table, "-C", c.jumpFrom, "-j", c.chain); err != nil {
				t.Errorf("kubelet's jump from %s to %s is gone: %v", c.jumpFrom, c.chain, err)
			}
		}
	}
}

// keptConn is one HTTP/1.1 connection kept open, to ask again later.
type keptConn struct {
	conn net.Conn
	r    *bufio.Reader
	addr string
}

func dialKeepAlive(t *testing.T, from *netnstest.NS, addr string) *keptConn {
	t.Helper()
	var conn net.Conn
	if err := from.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &keptConn{conn: conn, r: bufio.NewReader(conn), addr: addr}
	if err := c.ask(); err != nil {
		t.Fatalf("first request on the kept connection: %v", err)
	}
	return c
}

// ask sends one request on the connection and reads the answer.
func (c *keptConn) ask() error {
	if err := c.conn.SetDeadline(time.Now().Add(scaled(5 * time.Second))); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(c.conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", c.addr); err != nil {
		return err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	_, err = bufio.NewReader(resp.Body).ReadString('\n')
	return err
}

// probe fetches a URL over and over, each time on a new connection,
// until stopped: at most every 50 ms and 3,000 times. At its first
// failure it keeps what snapshot says of the node then.
type probe struct {
	done           chan struct{}
	wg             sync.WaitGroup
	mu             sync.Mutex
	n              int
	failures       []error
	atFirstFailure string
}

func startProbe(from *netnstest.NS, url string, snapshot func() string) *probe {
	p := &probe{done: make(chan struct{})}
	// The client's timeout is stretched with the suite's: in the emulated
	// VM one request in some hundreds outlasted 1.5 s.
	c := sandbox.Client(from, scaled(1500*time.Millisecond))
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		failed := false
		for range 3000 {
			_, err := sandbox.Get(c, url)
			if err != nil && !failed {
				failed = true
				seen := snapshot()
				p.mu.Lock()
				p.atFirstFailure = seen
				p.mu.Unlock()
			}
			p.mu.Lock()
			p.n++
			if err != nil {
				p.failures = append(p.failures, err)
			}
			p.mu.Unlock()
			select {
			case <-p.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return p
}

// flowsTo is what the node's conntrack table and, where IPVS is loaded,
// its IPVS connection table hold of flows to addr: which entry a request
// that hung met.
func flowsTo(node *netnstest.NS, addr string) string {
	ct, err := node.Run("conntrack", "-L", "-p", "tcp", "-d", addr)
	if err != nil {
		ct += err.Error()
	}
	ipvs, _ := node.Run("cat", "/proc/net/ip_vs_conn")
	return "conntrack:\n" + ct + "\nIPVS connections:\n" + ipvs
}

func (p *probe) stop() []error {
	close(p.done)
	p.wg.Wait()
	return p.failures
}

func (p *probe) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}
