package netfilter

import (
	"testing"

	"github.com/svcproxy/svcproxy/model"
)

// Render sizes its buffer from renderedSize: it must never be short (the
// buffer would double and copy a full sync's megabytes) and only a few
// bytes long per chain.
func TestRenderedSizeBoundsTheOutput(t *testing.T) {
	plan := &Plan{
		Family: model.IPv4,
		Write: map[ChainKey][]string{
			{TableNAT, "SVCPROXY-SVC-AAAA"}:  {"-p tcp -j DNAT --to-destination 10.0.0.1:80", "-j RETURN"},
			{TableNAT, "SVCPROXY-SERVICES"}:  {"-d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j SVCPROXY-SVC-AAAA"},
			{TableFilter, "SVCPROXY-FILTER"}: nil,
		},
		Delete: []ChainKey{{TableNAT, "SVCPROXY-SVC-GONE"}},
	}
	stale := []ChainKey{{TableFilter, "SVCPROXY-OLD"}}
	out := plan.Render(stale)
	deletes := map[ChainKey]bool{plan.Delete[0]: true, stale[0]: true}
	size := plan.renderedSize(deletes)
	if size < len(out) || size > len(out)+32 {
		t.Fatalf("renderedSize = %d for %d bytes of output:\n%s", size, len(out), out)
	}
}
