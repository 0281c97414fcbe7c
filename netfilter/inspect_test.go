package netfilter

import (
	"reflect"
	"slices"
	"testing"
)

func TestParseForeignSaveSkipsOnlySvcproxysRules(t *testing.T) {
	save := []byte("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:SVCPROXY-SERVICES - [0:0]\n" +
		"-A PREROUTING -j SVCPROXY-SERVICES\n-A PREROUTING -j KUBE-SERVICES\n" +
		"-A KUBE-SERVICES -j RETURN\n-A SVCPROXY-SERVICES -j RETURN\nCOMMIT\n")
	all, foreign := ParseSave(TableNAT, save), parseForeignSave(TableNAT, save)
	if !slices.Equal(foreign.Chains, all.Chains) || len(all.Chains) != 3 {
		t.Errorf("chains %v, want those of the whole parse, %v", foreign.Chains, all.Chains)
	}
	want := map[string][]string{"PREROUTING": {"-j SVCPROXY-SERVICES", "-j KUBE-SERVICES"}, "KUBE-SERVICES": {"-j RETURN"}}
	if !reflect.DeepEqual(foreign.Rules, want) || len(all.Rules["SVCPROXY-SERVICES"]) != 1 {
		t.Errorf("rules %v, want %v (and the whole parse keeps svcproxy's: %v)", foreign.Rules, want, all.Rules)
	}
}
