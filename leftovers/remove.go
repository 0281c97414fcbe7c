package leftovers

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Remover removes kube-proxy's leftovers through the iptables and nft
// binaries, in the network namespace of the calling thread.
type Remover struct {
	Run netfilter.Runner
}

// Removed is what a removal took out of one family's iptables of one
// flavor, and what of kube-proxy's it left (see TablePlan.Kept).
type Removed struct {
	Family  model.Family
	Flavor  netfilter.Flavor
	Removed []netfilter.ChainKey
	Kept    []netfilter.ChainKey
}

// RemoveIPTables removes kube-proxy's chains, and the jumps to them, from
// every table of one family and flavor: one save and at most one restore
// per table. A table that fails keeps all of its chains (the restore
// commits it whole) and does not stop the others; every failure is
// returned.
func (r Remover) RemoveIPTables(ctx context.Context, family model.Family, flavor netfilter.Flavor) (Removed, error) {
	done := Removed{Family: family, Flavor: flavor}
	var errs []error
	for _, table := range Tables() {
		// svcproxy's own chains jump to none of kube-proxy's: their
		// rules, most of the table at 10,000 services, are not kept.
		saved, err := netfilter.ReadForeignSave(ctx, r.Run, flavor.Binary(family, "-save"), table)
		if err != nil {
			if tableMissing(err) {
				continue
			}
			errs = append(errs, fmt.Errorf("%w: the %s table: %w", ErrUnlisted, table, err))
			continue
		}
		plan := PlanTable(saved)
		for _, c := range plan.Kept {
			done.Kept = append(done.Kept, netfilter.ChainKey{Table: table, Name: c})
		}
		if plan.Empty() {
			continue
		}
		restore := flavor.Binary(family, "-restore")
		if _, err := r.Run.Run(ctx, restore, []string{"--noflush", "--wait"}, plan.Render()); err != nil {
			errs = append(errs, fmt.Errorf("removing kube-proxy's chains from the %s table: %w", table, err))
			continue
		}
		for _, c := range plan.Remove {
			done.Removed = append(done.Removed, netfilter.ChainKey{Table: table, Name: c})
		}
	}
	return done, errors.Join(errs...)
}

// ErrUnlisted says tables could not be listed: where the tools are
// missing or do not work, there is nothing of kube-proxy's to find.
var ErrUnlisted = errors.New("cannot list iptables")

// tableMissing: the kernel lacks the table (its module is not loaded and
// cannot be), so nothing can be in it.
func tableMissing(err error) bool {
	var e *netfilter.ExecError
	return errors.As(err, &e) && strings.Contains(e.Stderr, "does not exist")
}

// ErrNoNFT says the nft binary is missing: kube-proxy's nftables tables
// can be neither seen nor removed.
var ErrNoNFT = errors.New("the nft binary is not installed")

// RemoveNFTables deletes kube-proxy's nftables tables, both families in
// one transaction, and says which there were.
func (r Remover) RemoveNFTables(ctx context.Context) ([]NFTable, error) {
	var tables []NFTable
	for _, family := range []string{"ip", "ip6"} {
		// Asked for by name: "nft list tables" reads the whole ruleset,
		// which at 10,000 services of iptables-nft rules kept a core busy
		// for 8 to 12 s (and over 40 s under load) on every start.
		table := NFTable{Family: family, Name: kubeProxyNFTable}
		_, err := r.Run.Run(ctx, "nft", []string{"-t", "list", "table", family, kubeProxyNFTable}, nil)
		var e *netfilter.ExecError
		switch {
		case err == nil:
			tables = append(tables, table)
		case errors.Is(err, exec.ErrNotFound):
			return nil, ErrNoNFT
		case errors.As(err, &e) && strings.Contains(e.Stderr, "No such file or directory"):
			// Not there.
		default:
			return nil, fmt.Errorf("%w: nftables: %w", ErrUnlisted, err)
		}
	}
	if len(tables) == 0 {
		return nil, nil
	}
	if _, err := r.Run.Run(ctx, "nft", []string{"-f", "-"}, RenderNFTDelete(tables)); err != nil {
		return nil, fmt.Errorf("deleting kube-proxy's nftables tables: %w", err)
	}
	return tables, nil
}
