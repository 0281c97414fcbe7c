package iptables_test

import (
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
	"github.com/svcproxy/svcproxy/netfilter"
)

// A bucket's rules come in descending order of the service chain each
// jumps to (an address's masquerade mark stays before its jump):
// that is what lets the restore write each right after its target (see
// netfilter's writeChains), and keeps a cold start at 10,000 services
// seconds shorter on iptables-nft.
func TestBucketRulesDescendByTarget(t *testing.T) {
	plan := iptables.Compile(testCfg, mt.BigView(2000, 2), nil)
	buckets := 0
	for k, rules := range plan.Write {
		if !strings.HasPrefix(k.Name, "SVCPROXY-DST-") {
			continue
		}
		buckets++
		prev := ""
		for i, rule := range rules {
			target := netfilter.JumpTarget(rule)
			if target == netfilter.ChainMarkMasq {
				continue
			}
			if prev != "" && prev < target {
				t.Fatalf("%s: rule %d jumps to %s after one to %s:\n%s", k.Name, i, target, prev, strings.Join(rules, "\n"))
			}
			prev = target
		}
	}
	if buckets < 2 {
		t.Fatalf("%d buckets at 2,000 services, want several", buckets)
	}
}
