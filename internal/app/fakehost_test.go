package app

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// fakeHost is iptables of both flavors and families as fake kernels; a
// missing kernel is a family or flavor whose tools fail. It serializes
// every call, since the daemon's runner and the test both use it.
type fakeHost struct {
	mu      sync.Mutex
	kernels map[string]*netfilter.FakeKernel // by kernelKey
}

func kernelKey(flavor netfilter.Flavor, family model.Family) string {
	return string(flavor) + "/" + family.String()
}

func newFakeHost(keys ...string) *fakeHost {
	h := &fakeHost{kernels: map[string]*netfilter.FakeKernel{}}
	for _, k := range keys {
		h.kernels[k] = netfilter.NewFakeKernel()
	}
	return h
}

// Run implements netfilter.Runner, routing by binary name
// ("ip6tables-legacy-save" goes to legacy/IPv6).
func (h *fakeHost) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
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
func (h *fakeHost) access() iptablesAccess {
	return iptablesAccess{run: h, backend: func(cfg netfilter.Config, family model.Family, flavor netfilter.Flavor) (*iptables.Backend, error) {
		rules := lockedRules{h: h, k: h.kernels[kernelKey(flavor, family)]}
		a, err := netfilter.NewApplier(netfilter.ApplierConfig{Family: family, Flavor: flavor,
			Jumps: netfilter.JumpRules(), TopChains: iptables.TopChains(), Run: h, Rules: rules})
		if err != nil {
			return nil, err
		}
		return iptables.NewBackend(cfg, a), nil
	}}
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
