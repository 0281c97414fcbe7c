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

// nftRunner answers "nft -t list table FAMILY kube-proxy" as nft does for
// the tables in present, and records every call.
type nftRunner struct {
	present []string // "ip kube-proxy"
	missing bool
	ran     []string
}

func (r *nftRunner) Run(_ context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	if r.missing {
		return nil, &netfilter.ExecError{Name: name, Args: args, Err: exec.ErrNotFound}
	}
	r.ran = append(r.ran, strings.Join(append([]string{name}, args...), " ")+"\n"+string(stdin))
	if len(args) == 5 && strings.Join(args[:3], " ") == "-t list table" && !slices.Contains(r.present, args[3]+" "+args[4]) {
		return nil, &netfilter.ExecError{Name: name, Args: args, Stderr: "Error: No such file or directory", Err: errors.New("exit status 1")}
	}
	return nil, nil
}

func TestRemoveNFTables(t *testing.T) {
	r := &nftRunner{present: []string{"ip kube-proxy", "ip6 kube-proxy"}}
	removed, err := Remover{Run: r}.RemoveNFTables(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := []NFTable{{"ip", "kube-proxy"}, {"ip6", "kube-proxy"}}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	want := "nft -f -\ndelete table ip kube-proxy\ndelete table ip6 kube-proxy\n"
	if len(r.ran) != 3 || r.ran[2] != want {
		t.Errorf("ran %q, want a look at each family's table, then one transaction %q", r.ran, want)
	}
}

// Only the tables asked for by name are looked at: "nft list tables" would
// read the whole ruleset, seconds of a core at 10,000 services.
func TestRemoveNFTablesNothingThere(t *testing.T) {
	r := &nftRunner{}
	removed, err := Remover{Run: r}.RemoveNFTables(context.Background())
	if err != nil || removed != nil || len(r.ran) != 2 {
		t.Errorf("removed %v, err %v, ran %q: want only the two looks", removed, err, r.ran)
	}
	for _, call := range r.ran {
		if strings.Contains(call, "list tables") {
			t.Errorf("listed every table: %q", call)
		}
	}
}

// A failure other than a missing table (a kernel without nf_tables) is
// one that says the tables could not be looked at.
func TestRemoveNFTablesUnlisted(t *testing.T) {
	run := runFunc(func(_ context.Context, name string, args []string, _ []byte) ([]byte, error) {
		return nil, &netfilter.ExecError{Name: name, Args: args, Stderr: "Error: Protocol not supported", Err: errors.New("exit status 1")}
	})
	if _, err := (Remover{Run: run}).RemoveNFTables(context.Background()); !errors.Is(err, ErrUnlisted) {
		t.Errorf("err = %v, want ErrUnlisted", err)
	}
}

type runFunc func(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error)

func (f runFunc) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	return f(ctx, name, args, stdin)
}

func TestRemoveNFTablesWithoutNFT(t *testing.T) {
	_, err := Remover{Run: &nftRunner{missing: true}}.RemoveNFTables(context.Background())
	if !errors.Is(err, ErrNoNFT) {
		t.Errorf("err = %v, want ErrNoNFT", err)
	}
}
