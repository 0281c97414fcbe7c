package netfilter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// PacketCounts sums, for each match, the packet counters of the rules of
// one of svcproxy's chains whose text contains it, as the kernel counts
// them (one iptables -S -v). A chain that does not exist is an error.
func (a *Applier) PacketCounts(ctx context.Context, table Table, chain string, matches ...string) ([]uint64, error) {
	out, err := a.run.Run(ctx, a.flavor.Binary(a.family, ""), []string{"-w", "5", "-t", string(table), "-S", chain, "-v"}, nil)
	if err != nil {
		return nil, err
	}
	counts := make([]uint64, len(matches))
	for i, m := range matches {
		if counts[i], err = packetCount(string(out), chain, m); err != nil {
			return nil, err
		}
	}
	return counts, nil
}

// packetCount reads "-A <chain> ... -c <packets> <bytes> ..." lines.
func packetCount(listing, chain, match string) (uint64, error) {
	var n uint64
	for _, line := range strings.Split(listing, "\n") {
		if !strings.HasPrefix(line, "-A "+chain+" ") || !strings.Contains(line, match) {
			continue
		}
		f := strings.Fields(line)
		i := 0
		for i < len(f) && f[i] != "-c" {
			i++
		}
		if i+1 >= len(f) {
			return 0, fmt.Errorf("no packet counter in %q", line)
		}
		p, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("packet counter in %q: %w", line, err)
		}
		n += p
	}
	return n, nil
}
