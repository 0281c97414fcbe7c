package app

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"

	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
)

// Binary is an external program svcproxy runs. Everything else (IPVS,
// ipsets, links, conntrack) it does over netlink.
type Binary struct {
	Name string // as looked up in PATH: "ip6tables-legacy-restore"
	For  string // what svcproxy runs it for
	// Optional: svcproxy runs without it, doing less (For says what).
	Optional bool
	// Also are absolute paths tried when PATH lacks it, as the code that
	// runs it does.
	Also []string
}

// Binaries are the programs a mode needs with an iptables flavor (nft or
// legacy): the flavor's iptables, -save and -restore of both families
// (both modes write iptables rules), the other flavor's as optional (the
// take-over and --cleanup remove rules wherever their tools work), nft,
// and for the IPVS mode modprobe. Both families' tools are required: every
// iptables package ships them together, and a node whose ip6tables is
// missing would silently run single-stack.
func Binaries(mode string, flavor netfilter.Flavor) []Binary {
	var bins []Binary
	add := func(f netfilter.Flavor, optional bool) {
		for _, family := range []model.Family{model.IPv4, model.IPv6} {
			for _, tool := range []string{"", "-save", "-restore"} {
				why := fmt.Sprintf("%s rules, %s", f, family)
				if optional {
					why = fmt.Sprintf("removing leftovers in %s rules, %s", f, family)
				}
				bins = append(bins, Binary{Name: f.Binary(family, tool), For: why, Optional: optional})
			}
		}
	}
	add(flavor, false)
	for _, other := range netfilter.Flavors() {
		if other != flavor {
			add(other, true)
		}
	}
	bins = append(bins, Binary{Name: "nft", For: "removing kube-proxy's nftables-mode tables at take-over", Optional: true})
	if mode == modeIPVS {
		bins = append(bins, Binary{Name: "modprobe", For: "loading ip_vs, its scheduler and dummy (else they must be loaded already)",
			Optional: true, Also: []string{"/usr/sbin/modprobe", "/sbin/modprobe"}})
	}
	return bins
}

// lookPathFunc finds a program as exec.LookPath does.
type lookPathFunc func(string) (string, error)

// Found is a Binary and where it was found ("" for nowhere).
type Found struct {
	Binary
	Path string
}

// findBinaries looks each of bins up.
func findBinaries(bins []Binary, lookPath lookPathFunc) []Found {
	found := make([]Found, 0, len(bins))
	for _, b := range bins {
		path, err := lookPath(b.Name)
		if err != nil {
			path = ""
			for _, p := range b.Also {
				if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
					path = p
					break
				}
			}
		}
		found = append(found, Found{Binary: b, Path: path})
	}
	return found
}

// missingRequired is the error naming every required binary not found, or
// nil.
func missingRequired(found []Found) error {
	var missing []string
	for _, f := range found {
		if f.Path == "" && !f.Optional {
			missing = append(missing, f.Name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing %s in PATH (%s)", strings.Join(missing, ", "), os.Getenv("PATH"))
}

// flavorsToCheck: an explicit flavor, or for auto both (either will do).
func flavorsToCheck(name string) ([]netfilter.Flavor, error) {
	if name == "auto" || name == "" {
		return netfilter.Flavors(), nil
	}
	f, err := netfilter.ParseFlavor(name)
	if err != nil {
		return nil, err
	}
	return []netfilter.Flavor{f}, nil
}

// requireBinaries is the startup's preflight: nil when the mode's required
// binaries of the configured flavor (of at least one flavor, for auto)
// are all found, else one error naming what is missing.
func requireBinaries(cfg Config, lookPath lookPathFunc) error {
	flavors, err := flavorsToCheck(cfg.Flavor)
	if err != nil {
		return err
	}
	var errs []string
	for _, f := range flavors {
		err := missingRequired(findBinaries(Binaries(cfg.Mode, f), lookPath))
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Sprintf("iptables flavor %s: %v", f, err))
	}
	return fmt.Errorf("proxy mode %s: %s: install iptables (1.8, with both flavors' tools)", cfg.Mode, strings.Join(errs, "; "))
}

// CheckBinaries is --check-binaries: it prints where each binary the mode
// needs with the configured flavor (both flavors, for auto) is found, and
// fails naming the required ones missing (for auto, when no flavor has
// all of its own). It runs none of them.
func CheckBinaries(cfg Config, out io.Writer) error {
	flavors, err := flavorsToCheck(cfg.Flavor)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FLAVOR\tBINARY\tPATH\tFOR")
	var failed []string
	for _, f := range flavors {
		found := findBinaries(Binaries(cfg.Mode, f), exec.LookPath)
		for _, b := range found {
			path := b.Path
			switch {
			case path == "" && b.Optional:
				path = "(missing, optional)"
			case path == "":
				path = "(MISSING)"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", f, b.Name, path, b.For)
		}
		if err := missingRequired(found); err != nil {
			failed = append(failed, fmt.Sprintf("iptables flavor %s: %v", f, err))
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(failed) == len(flavors) {
		return fmt.Errorf("proxy mode %s: %s", cfg.Mode, strings.Join(failed, "; "))
	}
	fmt.Fprintf(out, "proxy mode %s: every required binary found\n", cfg.Mode)
	return nil
}
