package leftovers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/internal/golden"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// loaded returns a fake kernel holding a fixture of testdata/.
func loaded(t *testing.T, fixture string) *netfilter.FakeKernel {
	t.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", fixture))
	if err != nil {
		t.Fatal(err)
	}
	k := netfilter.NewFakeKernel()
	if _, err := k.Run(context.Background(), "iptables-nft-restore", []string{"--noflush"}, text); err != nil {
		t.Fatalf("loading %s: %v", fixture, err)
	}
	k.Calls = nil
	return k
}

func dump(k *netfilter.FakeKernel) []byte {
	var b bytes.Buffer
	for _, table := range Tables() {
		b.WriteString(k.Save(table))
	}
	return b.Bytes()
}

// TestRemoveIPTables removes kube-proxy's leftovers of each of its modes
// from a fake kernel: the golden file holds the restore input and what
// stays, which must be kubelet's chains (KUBE-FIREWALL in filter, the
// canary, the hint), the hostport chains with the KUBE-MARK-MASQ they use,
// and svcproxy's chains, with every rule of theirs.
func TestRemoveIPTables(t *testing.T) {
	for _, fixture := range []string{"kube-proxy-iptables.rules", "kube-proxy-ipvs.rules"} {
		t.Run(fixture, func(t *testing.T) {
			k := loaded(t, fixture)
			removed, err := Remover{Run: k}.RemoveIPTables(context.Background(), model.IPv4, netfilter.FlavorNFT)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			out.WriteString("# removed:\n")
			for _, c := range removed.Removed {
				out.WriteString("#   " + string(c.Table) + " " + c.Name + "\n")
			}
			out.WriteString("# kept:\n")
			for _, c := range removed.Kept {
				out.WriteString("#   " + string(c.Table) + " " + c.Name + "\n")
			}
			out.WriteString("# what stays:\n")
			out.Write(dump(k))
			golden.Check(t, strings.TrimSuffix(fixture, ".rules"), out.Bytes())

			for _, table := range Tables() {
				left := ParseSave(table, []byte(k.Save(table)))
				for _, c := range left.Chains {
					if IsKubeProxyChain(table, c) && !slices.Contains(removed.Kept, netfilter.ChainKey{Table: table, Name: c}) {
						t.Errorf("kube-proxy's chain %s %s is still there", table, c)
					}
				}
			}
		})
	}
}

// TestRemoveIPTablesChangesOnlyKubeProxys: whatever else the tables hold
// is left byte for byte, and a second removal finds nothing to do (only
// the saves run).
func TestRemoveIPTablesChangesOnlyKubeProxys(t *testing.T) {
	k := loaded(t, "kube-proxy-iptables.rules")
	before := map[netfilter.Table]SavedTable{}
	for _, table := range Tables() {
		before[table] = ParseSave(table, []byte(k.Save(table)))
	}
	r := Remover{Run: k}
	if _, err := r.RemoveIPTables(context.Background(), model.IPv4, netfilter.FlavorNFT); err != nil {
		t.Fatal(err)
	}
	for _, table := range Tables() {
		after := ParseSave(table, []byte(k.Save(table)))
		for _, c := range before[table].Chains {
			if IsKubeProxyChain(table, c) && !slices.Contains(after.Chains, c) {
				continue
			}
			var want []string
			for _, r := range before[table].Rules[c] {
				if !IsKubeProxyChain(table, netfilter.JumpTarget(r)) || slices.Contains(after.Chains, netfilter.JumpTarget(r)) {
					want = append(want, r)
				}
			}
			if !slices.Equal(after.Rules[c], want) {
				t.Errorf("%s %s: rules\n%q\nwant\n%q", table, c, after.Rules[c], want)
			}
		}
	}

	k.Calls = nil
	again, err := r.RemoveIPTables(context.Background(), model.IPv4, netfilter.FlavorNFT)
	if err != nil || len(again.Removed) != 0 {
		t.Fatalf("second removal: removed %v, err %v", again.Removed, err)
	}
	for _, c := range k.Calls {
		if strings.Contains(c, "-restore") {
			t.Errorf("second removal ran %s", c)
		}
	}
}

// TestRemoveIPTablesTableByTable: a table the kernel refuses to change
// keeps all of kube-proxy's chains (the restore commits it whole); the
// other tables are cleaned and the error names the table.
func TestRemoveIPTablesTableByTable(t *testing.T) {
	k := loaded(t, "kube-proxy-iptables.rules")
	k.FailRestoreOn = "KUBE-POSTROUTING" // in nat only
	removed, err := Remover{Run: k}.RemoveIPTables(context.Background(), model.IPv4, netfilter.FlavorNFT)
	if err == nil || !strings.Contains(err.Error(), "nat table") {
		t.Fatalf("err = %v, want one naming the nat table", err)
	}
	for _, c := range removed.Removed {
		if c.Table == netfilter.TableNAT {
			t.Errorf("reported %s removed", c.Name)
		}
	}
	nat := ParseSave(netfilter.TableNAT, []byte(k.Save(netfilter.TableNAT)))
	if !slices.Contains(nat.Chains, "KUBE-SVC-7EJNTS7AENER2WLV") || len(nat.Rules["KUBE-SVC-7EJNTS7AENER2WLV"]) != 3 {
		t.Errorf("the refused nat table changed:\n%s", k.Save(netfilter.TableNAT))
	}
	filter := ParseSave(netfilter.TableFilter, []byte(k.Save(netfilter.TableFilter)))
	if slices.Contains(filter.Chains, "KUBE-SERVICES") {
		t.Errorf("filter was not cleaned:\n%s", k.Save(netfilter.TableFilter))
	}
}

func TestIsKubeProxyChain(t *testing.T) {
	for _, tc := range []struct {
		table netfilter.Table
		chain string
		want  bool
	}{
		{netfilter.TableNAT, "KUBE-SERVICES", true},
		{netfilter.TableNAT, "KUBE-SVC-7EJNTS7AENER2WLV", true},
		{netfilter.TableNAT, "KUBE-SEP-2NLLXPSIDRWZOHMC", true},
		{netfilter.TableNAT, "KUBE-XLB-7EJNTS7AENER2WLV", true},
		{netfilter.TableNAT, "KUBE-FIREWALL", true},
		{netfilter.TableFilter, "KUBE-FIREWALL", false},
		{netfilter.TableFilter, "KUBE-KUBELET-CANARY", false},
		{TableMangle, "KUBE-IPTABLES-HINT", false},
		{TableMangle, "KUBE-PROXY-CANARY", true},
		{netfilter.TableNAT, "KUBE-HOSTPORTS", false},
		{netfilter.TableNAT, "KUBE-HP-IJHALPHTORMHHPPK", false},
		{netfilter.TableNAT, "SVCPROXY-SERVICES", false},
		{netfilter.TableFilter, "PREROUTING", false},
		{netfilter.TableNAT, "CNI-HOSTPORT-DNAT", false},
	} {
		if got := IsKubeProxyChain(tc.table, tc.chain); got != tc.want {
			t.Errorf("IsKubeProxyChain(%s, %s) = %v, want %v", tc.table, tc.chain, got, tc.want)
		}
	}
}

// TestPlanTableKeepsWhatOthersUse: a chain of someone else's that jumps
// to one of kube-proxy's keeps it, and whatever that one jumps to.
func TestPlanTableKeepsWhatOthersUse(t *testing.T) {
	save := `*nat
:PREROUTING ACCEPT [0:0]
:CALICO-NAT - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-A - [0:0]
-A PREROUTING -j CALICO-NAT
-A PREROUTING -j KUBE-SERVICES
-A CALICO-NAT -j KUBE-SVC-A
-A KUBE-SERVICES -j KUBE-SVC-A
-A KUBE-SVC-A -j KUBE-SEP-A
-A KUBE-SEP-A -j KUBE-MARK-MASQ
COMMIT
`
	p := PlanTable(ParseSave(netfilter.TableNAT, []byte(save)))
	if want := []string{"KUBE-MARK-MASQ", "KUBE-SVC-A", "KUBE-SEP-A"}; !slices.Equal(p.Kept, want) {
		t.Errorf("kept %v, want %v", p.Kept, want)
	}
	if want := []string{"KUBE-SERVICES"}; !slices.Equal(p.Remove, want) {
		t.Errorf("removed %v, want %v", p.Remove, want)
	}
	if want := []string{"-j KUBE-SERVICES"}; !slices.Equal(p.Unhook["PREROUTING"], want) {
		t.Errorf("unhooked %v, want %v", p.Unhook, want)
	}
}

func TestPlanTableWithoutKubeProxy(t *testing.T) {
	save := "*nat\n:PREROUTING ACCEPT [0:0]\n:SVCPROXY-SERVICES - [0:0]\n-A PREROUTING -j SVCPROXY-SERVICES\nCOMMIT\n"
	if p := PlanTable(ParseSave(netfilter.TableNAT, []byte(save))); !p.Empty() || p.Render() != nil {
		t.Errorf("plan %+v for a table without kube-proxy's chains", p)
	}
}
