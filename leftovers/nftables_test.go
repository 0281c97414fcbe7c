package leftovers

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/netfilter"
)

// nftRunner answers "nft list tables" with list and records "nft -f -".
type nftRunner struct {
	list    string
	missing bool
	ran     []string
}

func (r *nftRunner) Run(_ context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	if r.missing {
		return nil, &netfilter.ExecError{Name: name, Args: args, Err: exec.ErrNotFound}
	}
	r.ran = append(r.ran, strings.Join(append([]string{name}, args...), " ")+"\n"+string(stdin))
	if slices.Equal(args, []string{"list", "tables"}) {
		return []byte(r.list), nil
	}
	return nil, nil
}

func TestRemoveNFTables(t *testing.T) {
	r := &nftRunner{list: "table ip filter\ntable ip kube-proxy\ntable inet firewalld\ntable ip6 kube-proxy\ntable inet kube-proxy\n"}
	removed, err := Remover{Run: r}.RemoveNFTables(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := []NFTable{{"ip", "kube-proxy"}, {"ip6", "kube-proxy"}}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	want := "nft -f -\ndelete table ip kube-proxy\ndelete table ip6 kube-proxy\n"
	if len(r.ran) != 2 || r.ran[1] != want {
		t.Errorf("ran %q, want the list, then one transaction %q", r.ran, want)
	}
}

func TestRemoveNFTablesNothingThere(t *testing.T) {
	r := &nftRunner{list: "table ip filter\ntable ip nat\n"}
	removed, err := Remover{Run: r}.RemoveNFTables(context.Background())
	if err != nil || removed != nil || len(r.ran) != 1 {
		t.Errorf("removed %v, err %v, ran %q: want only the list", removed, err, r.ran)
	}
}

func TestRemoveNFTablesWithoutNFT(t *testing.T) {
	_, err := Remover{Run: &nftRunner{missing: true}}.RemoveNFTables(context.Background())
	if !errors.Is(err, ErrNoNFT) {
		t.Errorf("err = %v, want ErrNoNFT", err)
	}
}
