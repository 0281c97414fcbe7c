package app

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/netfilter"
)

// pathOf is a lookPath that finds only the names given.
func pathOf(names ...string) lookPathFunc {
	return func(name string) (string, error) {
		for _, n := range names {
			if n == name {
				return "/usr/sbin/" + name, nil
			}
		}
		return "", exec.ErrNotFound
	}
}

func names(bins []Binary, optional bool) []string {
	var out []string
	for _, b := range bins {
		if b.Optional == optional {
			out = append(out, b.Name)
		}
	}
	return out
}

func TestBinariesOfModeAndFlavor(t *testing.T) {
	required := names(Binaries(modeIPTables, netfilter.FlavorLegacy), false)
	want := "iptables-legacy iptables-legacy-save iptables-legacy-restore ip6tables-legacy ip6tables-legacy-save ip6tables-legacy-restore"
	if got := strings.Join(required, " "); got != want {
		t.Errorf("legacy required = %s, want %s", got, want)
	}
	optional := strings.Join(names(Binaries(modeIPTables, netfilter.FlavorLegacy), true), " ")
	if !strings.Contains(optional, "iptables-nft-restore") || !strings.HasSuffix(optional, " nft") {
		t.Errorf("legacy optional = %s, want the nft flavor's tools and nft", optional)
	}
	if strings.Contains(optional, "modprobe") {
		t.Errorf("the iptables mode does not run modprobe: %s", optional)
	}
	if ipvs := strings.Join(names(Binaries(modeIPVS, netfilter.FlavorNFT), true), " "); !strings.HasSuffix(ipvs, "modprobe") {
		t.Errorf("ipvs optional = %s, want modprobe", ipvs)
	}
}

func TestRequireBinaries(t *testing.T) {
	nft := names(Binaries(modeIPTables, netfilter.FlavorNFT), false)
	for _, tc := range []struct {
		name, flavor string
		have         []string
		wantErr      string // "" for none
	}{
		{"nft found", "nft", nft, ""},
		{"auto takes either flavor", "auto", nft, ""},
		{"legacy wanted", "legacy", nft, "missing iptables-legacy, iptables-legacy-save"},
		{"ip6tables missing", "nft", nft[:3], "missing ip6tables-nft, ip6tables-nft-save, ip6tables-nft-restore in PATH"},
		{"nothing", "auto", nil, "iptables flavor nft: missing iptables-nft"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := requireBinaries(Config{Mode: modeIPTables, Flavor: tc.flavor}, pathOf(tc.have...))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("err = %v, want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// The daemon stops before anything else when a required binary is
// missing, naming it.
func TestCheckSupportNamesMissingBinary(t *testing.T) {
	k := kernelAccess{lookPath: pathOf("iptables-nft", "iptables-nft-save"), ipvsSupport: func(string) error { return errors.New("unused") }}
	err := k.checkSupport(Config{Mode: modeIPTables, Flavor: "nft"})
	if err == nil || !strings.Contains(err.Error(), "iptables-nft-restore") {
		t.Fatalf("err = %v, want one naming iptables-nft-restore", err)
	}
}

func TestCheckBinariesReport(t *testing.T) {
	var out bytes.Buffer
	// The test machine has both flavors (hack/install-deps.sh).
	if err := CheckBinaries(Config{Mode: modeIPTables, Flavor: "nft"}, &out); err != nil {
		t.Fatalf("CheckBinaries: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "iptables-nft-restore") || !strings.Contains(out.String(), "every required binary found") {
		t.Errorf("report lacks the restore line or the verdict:\n%s", out.String())
	}
}
