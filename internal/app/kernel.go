package app

import (
	"context"
	"fmt"
	"net/netip"

	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// iptablesAccess is how the daemon reaches iptables: the real binaries,
// or fake kernels in tests.
type iptablesAccess struct {
	// run runs iptables binaries: the probes and the flavor detection.
	run netfilter.Runner
	// backend makes the backend of one family and flavor.
	backend func(cfg netfilter.Config, family model.Family, flavor netfilter.Flavor) (*iptables.Backend, error)
}

func hostIPTables() iptablesAccess {
	return iptablesAccess{run: netfilter.ExecRunner{}, backend: iptables.New}
}

// works checks that a family's iptables of a flavor can be used here: the
// binary exists and the kernel has the family's nat table.
func (a iptablesAccess) works(ctx context.Context, family model.Family, flavor netfilter.Flavor) error {
	_, err := a.run.Run(ctx, flavor.Binary(family, "-save"), []string{"-t", string(netfilter.TableNAT)}, nil)
	return err
}

// flavor resolves --iptables-flavor.
func (a iptablesAccess) flavor(ctx context.Context, name string) (netfilter.Flavor, error) {
	if name == "auto" {
		return netfilter.DetectFlavor(ctx, a.run)
	}
	return netfilter.ParseFlavor(name)
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

// primaryNodePortAddresses is kube-proxy's --nodeport-addresses=primary:
// the node's primary IP of each family, loopback left out.
func primaryNodePortAddresses(node model.NodeInfo) []netip.Prefix {
	var out []netip.Prefix
	seen := map[model.Family]bool{}
	for _, a := range node.Addresses {
		fam := model.FamilyOf(a)
		if seen[fam] || a.IsLoopback() {
			continue
		}
		seen[fam] = true
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// Cleanup removes everything svcproxy programmed, in both families and
// both flavors, wherever their tools work: --cleanup.
func Cleanup(ctx context.Context, log *zap.Logger) error {
	return cleanup(ctx, hostIPTables(), log)
}

func cleanup(ctx context.Context, ipt iptablesAccess, log *zap.Logger) error {
	var errs []error
	for _, flavor := range []netfilter.Flavor{netfilter.FlavorNFT, netfilter.FlavorLegacy} {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			if err := ipt.works(ctx, family, flavor); err != nil {
				log.Debug("nothing to clean up: iptables unusable", zap.String("flavor", string(flavor)),
					zap.Stringer("family", family), zap.Error(err))
				continue
			}
			b, err := ipt.backend(netfilter.Config{}, family, flavor)
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
	return joinErrors(errs...)
}
