package app

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
)

// kernelAccess is how the daemon reaches the kernel: the real binaries,
// netlink and /proc, or fakes in tests.
type kernelAccess struct {
	// run runs iptables binaries: the probes and the flavor detection.
	run netfilter.Runner
	// iptables and ipvs make a mode's backend of one family and flavor
	// (the IPVS mode writes its iptables rules with the flavor too).
	iptables func(cfg netfilter.Config, family model.Family, flavor netfilter.Flavor) (*iptables.Backend, error)
	ipvs     func(cfg ipvs.Config, family model.Family, flavor netfilter.Flavor) (*ipvs.Backend, error)
	// ipvsSupport tells whether the kernel can run the IPVS mode with a
	// scheduler; it may load modules, but writes nothing.
	ipvsSupport func(scheduler string) error
	// ipvsLoaded tells whether IPVS is in the kernel already, without
	// loading anything: where it is not, no IPVS state can exist.
	ipvsLoaded func() bool
	// connReuseFixed tells whether the kernel no longer needs IPVS's
	// conn_reuse_mode turned off.
	connReuseFixed func() (bool, error)
	// lookPath finds the binaries run needs (see Binaries) for the
	// preflight; nil skips it (fakes run none).
	lookPath lookPathFunc
}

func hostKernel() kernelAccess {
	return kernelAccess{run: netfilter.ExecRunner{}, iptables: iptables.New, ipvs: ipvs.New,
		ipvsSupport: ipvs.CheckSupport, ipvsLoaded: hostIPVSLoaded, connReuseFixed: ipvs.ConnReuseFixed,
		lookPath: exec.LookPath}
}

// hostIPVSLoaded: the kernel lists IPVS connections in /proc/net/ip_vs
// from the moment the module is loaded (or if built in).
func hostIPVSLoaded() bool {
	_, err := os.Stat("/proc/net/ip_vs")
	return err == nil
}

// works checks that a family's iptables of a flavor can be used here: the
// binary exists and the kernel has the family's nat table.
func (k kernelAccess) works(ctx context.Context, family model.Family, flavor netfilter.Flavor) error {
	_, err := k.run.Run(ctx, flavor.Binary(family, "-save"), []string{"-t", string(netfilter.TableNAT)}, nil)
	return err
}

// flavor resolves --iptables-flavor.
func (k kernelAccess) flavor(ctx context.Context, name string) (netfilter.Flavor, error) {
	if name == "auto" {
		return netfilter.DetectFlavor(ctx, k.run)
	}
	return netfilter.ParseFlavor(name)
}

// checkSupport fails the start when a binary the mode needs is missing,
// or, for the IPVS mode, on a kernel that cannot run it, with the one
// line that says what is missing. It needs nothing
// from the API server, so it comes before any wait on it.
func (k kernelAccess) checkSupport(cfg Config) error {
	if k.lookPath != nil {
		if err := requireBinaries(cfg, k.lookPath); err != nil {
			return err
		}
	}
	if cfg.Mode != modeIPVS {
		return nil
	}
	if err := k.ipvsSupport(cfg.IPVS.Scheduler); err != nil {
		return fmt.Errorf("proxy mode ipvs: %w", err)
	}
	return nil
}

// newBackend makes the backend of the configured mode for one family and
// flavor: the one place that knows which package programs which mode.
func (k kernelAccess) newBackend(cfg Config, rules netfilter.Config, family model.Family, flavor netfilter.Flavor) (proxier.Backend, error) {
	if cfg.Mode != modeIPVS {
		return k.iptables(rules, family, flavor)
	}
	fixed, err := k.connReuseFixed()
	if err != nil {
		return nil, fmt.Errorf("reading the kernel's version (IPVS's conn_reuse_mode depends on it): %w", err)
	}
	return k.ipvs(ipvsConfig(cfg, rules, fixed), family, flavor)
}

// ipvsConfig is what the IPVS backends run with.
func ipvsConfig(cfg Config, rules netfilter.Config, connReuseFixed bool) ipvs.Config {
	return ipvs.Config{
		Rules:          rules,
		Scheduler:      cfg.IPVS.Scheduler,
		StrictARP:      cfg.IPVS.StrictARP,
		ConnReuseFixed: connReuseFixed,
		Timeouts:       ipvs.Timeouts{TCP: cfg.IPVS.TCPTimeout, TCPFin: cfg.IPVS.TCPFinTimeout, UDP: cfg.IPVS.UDPTimeout},
		ExcludeCIDRs:   cfg.IPVS.ExcludeCIDRs,
		DrainTimeout:   cfg.IPVS.DrainTimeout,
	}
}

// removeIPVSState removes the IPVS state svcproxy made (virtual servers,
// kube-ipvs0 and its addresses, ipsets) and nothing else, in each family
// of flavors, where IPVS is loaded (see eachIPVSFamily). The iptables
// rules naming the sets must be gone already. Gently, a virtual server
// some connection still uses stays (see ipvs.Backend.RetireIPVSState). It
// reports whether IPVS was loaded and how many virtual servers stay.
func (k kernelAccess) removeIPVSState(ctx context.Context, cfg Config, flavors map[model.Family]netfilter.Flavor, log *zap.Logger, gently bool) (loaded bool, inUse int, err error) {
	loaded, err = k.eachIPVSFamily(cfg, flavors, func(family model.Family, b *ipvs.Backend) error {
		left, err := 0, error(nil)
		if gently {
			left, err = b.RetireIPVSState(ctx)
		} else {
			err = b.RemoveIPVSState(ctx)
		}
		if err != nil {
			return err
		}
		inUse += left
		if left > 0 {
			log.Info("removed the IPVS state no connection uses; virtual servers with connections stay until those end",
				zap.Stringer("family", family), zap.Int("inUse", left))
			return nil
		}
		log.Info("removed svcproxy's IPVS state (virtual servers, kube-ipvs0 addresses, ipsets), if there was any",
			zap.Stringer("family", family))
		return nil
	})
	return loaded, inUse, err
}

// removeKubeProxySets destroys the ipsets kube-proxy's ipvs mode left in
// each family of flavors, where IPVS is loaded (kube-proxy's ipvs mode
// loads it; without it there are none), and says which it destroyed.
func (k kernelAccess) removeKubeProxySets(ctx context.Context, cfg Config, flavors map[model.Family]netfilter.Flavor) ([]string, error) {
	var destroyed []string
	_, err := k.eachIPVSFamily(cfg, flavors, func(_ model.Family, b *ipvs.Backend) error {
		sets, err := b.RemoveKubeProxySets(ctx)
		destroyed = append(destroyed, sets...)
		return err
	})
	return destroyed, err
}

// eachIPVSFamily runs f with an IPVS backend of each family of flavors
// (which names the iptables that works for it: a backend is made with
// one, though f touches no rule), where IPVS is loaded: a kernel without
// it holds no IPVS state, and the iptables mode must not load it. It
// reports whether IPVS was loaded, and the failures, a line each.
func (k kernelAccess) eachIPVSFamily(cfg Config, flavors map[model.Family]netfilter.Flavor, f func(model.Family, *ipvs.Backend) error) (bool, error) {
	if !k.ipvsLoaded() {
		return false, nil
	}
	var errs []error
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		flavor, ok := flavors[family]
		if !ok {
			continue
		}
		b, err := k.ipvs(ipvsConfig(cfg, netfilter.Config{}, false), family, flavor)
		if err == nil {
			err = f(family, b)
		}
		if err != nil {
			// One line: the applier joins an error per object it could not remove.
			errs = append(errs, fmt.Errorf("%s IPVS state: %s", family, strings.ReplaceAll(err.Error(), "\n", "; ")))
		}
	}
	return true, joinErrors(errs...)
}

// chooseFamilies follows kube-proxy. The primary family is that of the
// node's primary IP (its first InternalIP, else ExternalIP; IPv4 for a
// node svcproxy knows nothing of), and it must work. The other family is
// programmed too whenever its iptables works, whatever the node's
// addresses say: kube-proxy runs dual-stack whenever the host can, so that
// services of the other family, and a node that gains an address of it,
// are served without a restart, and the cost of an idle family is a few
// empty chains.
func chooseFamilies(node model.NodeInfo, works func(model.Family) error) ([]model.Family, error) {
	primary, secondary := model.IPv4, model.IPv6
	if len(node.Addresses) > 0 && model.FamilyOf(node.Addresses[0]) == model.IPv6 {
		primary, secondary = model.IPv6, model.IPv4
	}
	if err := works(primary); err != nil {
		return nil, fmt.Errorf("no support for the node's primary IP family %s: %w", primary, err)
	}
	if works(secondary) != nil {
		return []model.Family{primary}, nil
	}
	return []model.Family{primary, secondary}, nil
}

// primaryNodeIPs are the node's primary IPs, the first of each family
// (kube-proxy's node IPs, which loadBalancerSourceRanges are checked
// against); a family without one is left out, and the rules take loopback.
func primaryNodeIPs(node model.NodeInfo) []netip.Addr {
	var out []netip.Addr
	seen := map[model.Family]bool{}
	for _, a := range node.Addresses {
		if fam := model.FamilyOf(a); !seen[fam] {
			seen[fam] = true
			out = append(out, a)
		}
	}
	return out
}

// primaryNodePortAddresses is kube-proxy's --nodeport-addresses=primary:
// the node's primary IP of each family (primaryNodeIPs), a loopback one
// left out. A family left without one serves its node ports on every
// address, as in kube-proxy (a single-stack Node's other family, too).
func primaryNodePortAddresses(node model.NodeInfo) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range primaryNodeIPs(node) {
		if !a.IsLoopback() {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// Cleanup removes everything svcproxy programmed in either mode:
// --cleanup. Of cfg it reads only the IPVS exclude CIDRs.
func Cleanup(ctx context.Context, cfg Config, log *zap.Logger) error {
	return cleanup(ctx, hostKernel(), cfg, log)
}

// cleanup removes the iptables rules of both families and flavors
// wherever their tools work (those of both modes: they share the chain
// prefix), then, where IPVS is loaded, the IPVS state of both families,
// which the rules no longer name.
func cleanup(ctx context.Context, k kernelAccess, cfg Config, log *zap.Logger) error {
	usable := map[model.Family]netfilter.Flavor{}
	var errs []error
	for _, flavor := range []netfilter.Flavor{netfilter.FlavorNFT, netfilter.FlavorLegacy} {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			if err := k.works(ctx, family, flavor); err != nil {
				log.Debug("nothing to clean up: iptables unusable", zap.String("flavor", string(flavor)),
					zap.Stringer("family", family), zap.Error(err))
				continue
			}
			if _, ok := usable[family]; !ok {
				usable[family] = flavor
			}
			b, err := k.iptables(netfilter.Config{}, family, flavor)
			if err == nil {
				err = b.Cleanup(ctx)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("cleaning up %s %s: %w", flavor, family, err))
				continue
			}
			log.Info("cleaned up", zap.String("flavor", string(flavor)), zap.Stringer("family", family))
		}
	}
	loaded, _, err := k.removeIPVSState(ctx, cfg, usable, log, false)
	if !loaded {
		log.Debug("no IPVS state to clean up: IPVS is not loaded in the kernel")
	}
	return joinErrors(append(errs, err)...)
}
