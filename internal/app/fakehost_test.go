package app

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// fakeHost is iptables of both flavors and families as fake kernels (a
// missing kernel is a family or flavor whose tools fail) and IPVS, links
// and sets as one fake kernel. It serializes every call, since the
// daemon's runner and the test both use it.
type fakeHost struct {
	mu      sync.Mutex
	kernels map[string]*netfilter.FakeKernel // by kernelKey

	// ipvsMu guards ipvs apart from mu: an IPVS sync holds the kernel
	// it opened while it runs iptables-restore.
	ipvsMu sync.Mutex
	ipvs   *ipvs.FakeKernel
	// ipvsLoaded says IPVS is in the kernel, as /proc/net/ip_vs would.
	ipvsLoaded bool
	// noIPVS, if set, is what the IPVS support check finds missing.
	noIPVS error
	// nftTables are the nftables tables "nft list tables" shows ("ip
	// kube-proxy"); without nft, nft is not installed.
	nftTables []string
	nft       bool
	// beforeRun, if set, is called with each program Run is asked to
	// run, before it takes the lock: a test can hold one there.
	beforeRun func(name string, args []string)
}

func kernelKey(flavor netfilter.Flavor, family model.Family) string {
	return string(flavor) + "/" + family.String()
}

func newFakeHost(keys ...string) *fakeHost {
	h := &fakeHost{kernels: map[string]*netfilter.FakeKernel{}, ipvs: ipvs.NewFakeKernel()}
	for _, k := range keys {
		h.kernels[k] = netfilter.NewFakeKernel()
	}
	return h
}

// Run implements netfilter.Runner, routing by binary name
// ("ip6tables-legacy-save" goes to legacy/IPv6).
func (h *fakeHost) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	if h.beforeRun != nil {
		h.beforeRun(name, args)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if name == "nft" {
		return h.runNFT(name, args, stdin)
	}
	base, rest, _ := strings.Cut(name, "-")
	flavor, _, _ := strings.Cut(rest, "-")
	family := model.IPv4
	if base == "ip6tables" {
		family = model.IPv6
	}
	k := h.kernels[kernelKey(netfilter.Flavor(flavor), family)]
	if k == nil {
		return nil, &netfilter.ExecError{Name: name, Args: args, Stderr: "not installed", Err: fmt.Errorf("exit status 127")}
	}
	if strings.HasSuffix(name, "-save") && len(args) == 0 {
		// DetectFlavor's whole-host save.
		return []byte(k.Save(netfilter.TableFilter) + k.Save(netfilter.TableNAT)), nil
	}
	return k.Run(ctx, name, args, stdin)
}

// runNFT answers "nft list tables" and deletes tables as "nft -f -" asks.
func (h *fakeHost) runNFT(name string, args []string, stdin []byte) ([]byte, error) {
	if !h.nft {
		return nil, &netfilter.ExecError{Name: name, Args: args, Err: exec.ErrNotFound}
	}
	if len(args) == 5 && strings.Join(args[:3], " ") == "-t list table" {
		if !slices.Contains(h.nftTables, args[3]+" "+args[4]) {
			return nil, &netfilter.ExecError{Name: name, Args: args, Stderr: "Error: No such file or directory", Err: errors.New("exit status 1")}
		}
		return []byte("table " + args[3] + " " + args[4] + " {\n}\n"), nil
	}
	switch strings.Join(args, " ") {
	case "-f -":
		for _, line := range strings.Split(strings.TrimSpace(string(stdin)), "\n") {
			table, ok := strings.CutPrefix(line, "delete table ")
			if !ok || !slices.Contains(h.nftTables, table) {
				return nil, &netfilter.ExecError{Name: name, Args: args, Stderr: "Error: No such file or directory", Err: errors.New("exit status 1")}
			}
			h.nftTables = slices.DeleteFunc(h.nftTables, func(t string) bool { return t == table })
		}
		return nil, nil
	}
	return nil, &netfilter.ExecError{Name: name, Args: args, Err: errors.New("exit status 1")}
}

// nftList is what "nft list tables" would show.
func (h *fakeHost) nftList() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.nftTables)
}

// load restores rules into one kernel, as another program would.
func (h *fakeHost) load(key string, rules []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.kernels[key].Run(context.Background(), "iptables-restore", []string{"--noflush"}, rules)
	return err
}

// calls lists the calls one kernel saw.
func (h *fakeHost) calls(key string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.kernels[key].Calls)
}

// save dumps one table of one kernel.
func (h *fakeHost) save(key string, table netfilter.Table) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if k := h.kernels[key]; k != nil {
		return k.Save(table)
	}
	return ""
}

func (h *fakeHost) addChain(key string, table netfilter.Table, chain string, rules ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.kernels[key].AddChain(table, chain, rules...)
}

// access is the daemon's view of this host.
func (h *fakeHost) access() kernelAccess {
	return kernelAccess{
		run: h,
		iptables: func(cfg netfilter.Config, family model.Family, flavor netfilter.Flavor) (*iptables.Backend, error) {
			a, err := h.applier(netfilter.ApplierConfig{Family: family, Flavor: flavor, Jumps: netfilter.JumpRules(), TopChains: iptables.TopChains()})
			if err != nil {
				return nil, err
			}
			return iptables.NewBackend(cfg, a), nil
		},
		ipvs: func(cfg ipvs.Config, family model.Family, flavor netfilter.Flavor) (*ipvs.Backend, error) {
			a, err := h.applier(ipvs.RulesConfig(family, flavor))
			if err != nil {
				return nil, err
			}
			return ipvs.NewBackend(cfg, family, a, h.openIPVS, clock.RealClock{}), nil
		},
		ipvsSupport:    func(string) error { return h.noIPVS },
		ipvsLoaded:     func() bool { return h.ipvsLoaded },
		connReuseFixed: func() (bool, error) { return true, nil },
	}
}

func (h *fakeHost) applier(cfg netfilter.ApplierConfig) (*netfilter.Applier, error) {
	cfg.Run, cfg.Rules = h, lockedRules{h: h, k: h.kernels[kernelKey(cfg.Flavor, cfg.Family)]}
	return netfilter.NewApplier(cfg)
}

// openIPVS opens the IPVS fake for one sync, holding it until Close.
func (h *fakeHost) openIPVS() (ipvs.Kernel, error) {
	h.ipvsMu.Lock()
	return lockedIPVS{FakeKernel: h.ipvs, unlock: h.ipvsMu.Unlock}, nil
}

// lockedIPVS is the IPVS fake as one open holds it.
type lockedIPVS struct {
	*ipvs.FakeKernel
	unlock func()
}

func (k lockedIPVS) Close() { k.unlock() }

// withIPVS runs f on the IPVS fake under its lock.
func (h *fakeHost) withIPVS(f func(k *ipvs.FakeKernel)) {
	h.ipvsMu.Lock()
	defer h.ipvsMu.Unlock()
	f(h.ipvs)
}

// ipvsState dumps what the IPVS fake holds of a family.
func (h *fakeHost) ipvsState(family model.Family) string {
	var dump string
	h.withIPVS(func(k *ipvs.FakeKernel) { dump = k.State(family).Dump() })
	return dump
}

// lockedRules is a fake kernel's RuleEditor under the host's lock.
type lockedRules struct {
	h *fakeHost
	k *netfilter.FakeKernel
}

func (r lockedRules) Exists(table, chain string, rule ...string) (bool, error) {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	return r.k.Exists(table, chain, rule...)
}

func (r lockedRules) Insert(table, chain string, pos int, rule ...string) error {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	return r.k.Insert(table, chain, pos, rule...)
}

func (r lockedRules) DeleteIfExists(table, chain string, rule ...string) error {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	return r.k.DeleteIfExists(table, chain, rule...)
}

func (r lockedRules) ChainExists(table, chain string) (bool, error) {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	return r.k.ChainExists(table, chain)
}
