// Package leftovers finds and removes what kube-proxy leaves on a node it
// no longer runs on: its iptables chains and the jumps to them, in every
// table, flavor and family, and its nftables tables. (Its IPVS virtual
// servers, kube-ipvs0 addresses and ipsets are package ipvs's: that is
// where IPVS state is read.) Deleting kube-proxy's DaemonSet leaves all of
// it in the kernel; svcproxy's jumps go in ahead of it, so what svcproxy
// programs works, but a service that later loses its endpoints would still
// be DNATed by the stale rules to pod IPs that are gone.
//
// What is removed is planned from what the kernel lists (pure, tested
// without root) and removed in one iptables-restore per table, so a table
// is never left half cleaned. Connection tracking is never touched: the
// established connections kube-proxy's rules set up keep their NAT.
package leftovers

import (
	"bytes"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/netfilter"
)

// TableMangle holds only kube-proxy's canary chain.
const TableMangle netfilter.Table = "mangle"

// Tables are the iptables tables kube-proxy writes.
func Tables() []netfilter.Table {
	return []netfilter.Table{netfilter.TableFilter, netfilter.TableNAT, TableMangle}
}

// kubeProxyChains are the fixed-name chains of kube-proxy's iptables and
// ipvs modes (v1.35, and older releases' KUBE-MARK-DROP). KUBE-FIREWALL
// is kubelet's in the filter table (kube-proxy writes a copy of the same
// rule): it stays. In the nat table it was the ipvs mode's LoadBalancer
// firewall in older releases.
var kubeProxyChains = map[string]bool{
	"KUBE-SERVICES": true, "KUBE-EXTERNAL-SERVICES": true, "KUBE-NODEPORTS": true, "KUBE-NODE-PORT": true,
	"KUBE-POSTROUTING": true, "KUBE-MARK-MASQ": true, "KUBE-MARK-DROP": true, "KUBE-FORWARD": true,
	"KUBE-PROXY-FIREWALL": true, "KUBE-PROXY-CANARY": true, "KUBE-LOAD-BALANCER": true,
	"KUBE-SOURCE-RANGES-FIREWALL": true, "KUBE-IPVS-FILTER": true, "KUBE-IPVS-OUT-FILTER": true,
}

// kubeProxyChainPrefixes start the names of kube-proxy's per-service and
// per-endpoint chains (KUBE-XLB- is of releases before 1.24).
var kubeProxyChainPrefixes = []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-", "KUBE-XLB-"}

// IsKubeProxyChain reports whether a chain of a table is kube-proxy's.
// Kubelet's chains (KUBE-FIREWALL in filter, KUBE-KUBELET-CANARY,
// KUBE-IPTABLES-HINT), the hostport chains (KUBE-HOSTPORTS, KUBE-HP-*)
// and anyone else's are not.
func IsKubeProxyChain(table netfilter.Table, chain string) bool {
	if chain == "KUBE-FIREWALL" {
		return table == netfilter.TableNAT
	}
	return kubeProxyChains[chain] || slices.ContainsFunc(kubeProxyChainPrefixes, func(p string) bool {
		return strings.HasPrefix(chain, p)
	})
}

// SavedTable is one table as iptables-save lists it: netfilter's parse,
// which `svcproxy list` reads svcproxy's own chains with too.
type SavedTable = netfilter.SavedTable

// ParseSave reads the output of "iptables-save -t TABLE".
func ParseSave(table netfilter.Table, save []byte) SavedTable {
	return netfilter.ParseSave(table, save)
}

// builtin reports whether a chain is one of the kernel's: only those hold
// a policy in iptables-save output, but the names are fixed.
func builtin(chain string) bool {
	switch chain {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}

// TablePlan is the removal of kube-proxy's chains from one table.
type TablePlan struct {
	Table netfilter.Table
	// Unhook are the rules of built-in chains that jump to a removed
	// chain, by chain, as iptables-save lists them.
	Unhook map[string][]string
	// Remove are the chains that go.
	Remove []string
	// Kept are kube-proxy's chains that stay because a chain of someone
	// else's jumps to them (a hostport chain to KUBE-MARK-MASQ, say):
	// removing them would break that chain, and they do nothing for a
	// service once nothing of kube-proxy's reaches them.
	Kept []string
}

// Empty reports whether the table holds nothing to remove.
func (p TablePlan) Empty() bool { return len(p.Remove) == 0 }

// PlanTable works out what of a table is kube-proxy's and can go.
func PlanTable(t SavedTable) TablePlan {
	p := TablePlan{Table: t.Table, Unhook: map[string][]string{}}
	kept := keptChains(t)
	for _, c := range t.Chains {
		if !IsKubeProxyChain(t.Table, c) {
			continue
		}
		if kept[c] {
			p.Kept = append(p.Kept, c)
			continue
		}
		p.Remove = append(p.Remove, c)
	}
	removed := map[string]bool{}
	for _, c := range p.Remove {
		removed[c] = true
	}
	for _, c := range t.Chains {
		if !builtin(c) {
			continue
		}
		for _, r := range t.Rules[c] {
			if removed[netfilter.JumpTarget(r)] {
				p.Unhook[c] = append(p.Unhook[c], r)
			}
		}
	}
	return p
}

// keptChains are kube-proxy's chains that a chain not kube-proxy's (and
// not built in) jumps to, and those they in turn jump to.
func keptChains(t SavedTable) map[string]bool {
	kept := map[string]bool{}
	var keep func(chain string)
	keep = func(chain string) {
		if kept[chain] || !IsKubeProxyChain(t.Table, chain) {
			return
		}
		kept[chain] = true
		for _, r := range t.Rules[chain] {
			keep(netfilter.JumpTarget(r))
		}
	}
	for _, c := range t.Chains {
		if builtin(c) || IsKubeProxyChain(t.Table, c) {
			continue
		}
		for _, r := range t.Rules[c] {
			keep(netfilter.JumpTarget(r))
		}
	}
	return kept
}

// Render returns the iptables-restore --noflush input that removes the
// plan's chains from its table in one commit: the jumps to them go, each
// is flushed (declaring a chain flushes it, so that rules between removed
// chains are gone), then deleted. "" when there is nothing to remove.
func (p TablePlan) Render() []byte {
	if p.Empty() {
		return nil
	}
	var b bytes.Buffer
	b.WriteString("*" + string(p.Table) + "\n")
	for _, c := range sortedChains(p.Unhook) {
		for _, r := range p.Unhook[c] {
			b.WriteString("-D " + c + " " + r + "\n")
		}
	}
	for _, c := range p.Remove {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range p.Remove {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

func sortedChains(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for c := range m {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}
