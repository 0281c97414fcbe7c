package netfilter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

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

// WriteTo feeds what Render returns, byte for byte, in the buffered
// pieces a pipe gets, and says how much it wrote.
func TestWriteToFeedsWhatRenderReturns(t *testing.T) {
	plan := &Plan{Family: model.IPv4, Write: map[ChainKey][]string{}, Delete: []ChainKey{{TableNAT, "SVCPROXY-SVC-GONE"}}}
	for i := range 3000 { // past the 64 KiB buffer
		key := ChainKey{TableNAT, fmt.Sprintf("SVCPROXY-SVC-%04d", i)}
		plan.Write[key] = []string{fmt.Sprintf("-p tcp -j DNAT --to-destination 10.0.%d.%d:80", i/250, i%250)}
	}
	plan.Write[ChainKey{TableFilter, "SVCPROXY-FILTER"}] = []string{"-j RETURN"}
	stale := []ChainKey{{TableFilter, "SVCPROXY-OLD"}}
	var fed bytes.Buffer
	n, err := plan.WriteTo(&fed, stale)
	want := plan.Render(stale)
	if err != nil || n != len(want) || !bytes.Equal(fed.Bytes(), want) {
		t.Errorf("WriteTo wrote %d bytes, %v; want Render's %d, equal: %v", n, err, len(want), bytes.Equal(fed.Bytes(), want))
	}
	broken := errors.New("pipe closed")
	if _, err := plan.WriteTo(failingWriter{broken}, stale); !errors.Is(err, broken) {
		t.Errorf("WriteTo to a failing writer: %v", err)
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// RunFed gives the program what the feed writes; a program that exits
// without reading it all fails with its own error, without hanging the
// feed.
func TestExecRunnerRunFed(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef\n"), 1<<16) // 1 MiB, past any pipe buffer
	feed := func(w io.Writer) error { _, err := w.Write(big); return err }
	out, err := ExecRunner{}.RunFed(context.Background(), "wc", []string{"-c"}, feed)
	if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(len(big)) {
		t.Errorf("wc -c of the feed: %q, %v; want %d", out, err, len(big))
	}
	done := make(chan error, 1)
	go func() {
		_, err := ExecRunner{}.RunFed(context.Background(), "sh", []string{"-c", "echo refused >&2; exit 3"}, feed)
		done <- err
	}()
	select {
	case err := <-done:
		var ee *ExecError
		if !errors.As(err, &ee) || !strings.Contains(ee.Stderr, "refused") || !strings.Contains(ee.Err.Error(), "exit status 3") {
			t.Errorf("a program that exits early: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("RunFed hung on a program that exits without reading its input")
	}
}

// RunRead hands the program's output to the reader as it comes, and
// its failure, with what it said, before the reader's.
func TestExecRunnerRunRead(t *testing.T) {
	var lines int
	err := ExecRunner{}.RunRead(context.Background(), "seq", []string{"200000"}, func(r io.Reader) error {
		sc := bufio.NewScanner(r)
		for sc.Scan() && lines < 10 {
			lines++
		}
		return nil // the rest is left unread: the program must not block on it
	})
	if err != nil || lines != 10 {
		t.Errorf("seq 200000, ten lines read: %d, %v", lines, err)
	}
	readErr := errors.New("bad output")
	err = ExecRunner{}.RunRead(context.Background(), "sh", []string{"-c", "echo nope >&2; exit 2"}, func(io.Reader) error { return readErr })
	var ee *ExecError
	if !errors.As(err, &ee) || !strings.Contains(ee.Stderr, "nope") {
		t.Errorf("a failing program: %v", err)
	}
	if err := (ExecRunner{}).RunRead(context.Background(), "true", nil, func(io.Reader) error { return readErr }); !errors.Is(err, readErr) {
		t.Errorf("a reader's error: %v", err)
	}
}

// benchShapedPlan is a full sync's nat table in the iptables mode's shape:
// service chains jumping to the masquerade mark, external chains jumping to
// their service chains, destination buckets jumping to either (their rules
// in descending order of target, as the iptables mode writes them), and
// SERVICES jumping to the buckets.
func benchShapedPlan(services, buckets, externalEvery int) *Plan {
	p := NewPlan(model.IPv4, true)
	nat := func(name string) ChainKey { return ChainKey{TableNAT, name} }
	bucketRules := make([][]string, buckets)
	for i := range services {
		svc := fmt.Sprintf("SVCPROXY-SVC-%06X", (i*7919)%services) // names not in creation order
		p.Write[nat(svc)] = []string{
			"! -s 10.244.0.0/16 -j SVCPROXY-MARK-MASQ",
			fmt.Sprintf("-p tcp -j DNAT --to-destination 10.244.%d.%d:8080", i/250, i%250),
		}
		target := svc
		if externalEvery > 0 && i%externalEvery == 0 {
			target = strings.Replace(svc, "-SVC-", "-EXT-", 1)
			p.Write[nat(target)] = []string{"-j SVCPROXY-MARK-MASQ", "-j " + svc}
		}
		b := i % buckets
		bucketRules[b] = append(bucketRules[b], fmt.Sprintf("-d 10.96.%d.%d/32 -p tcp -m tcp --dport 80 -j %s", i/250, i%250, target))
	}
	var servicesRules []string
	for b, rules := range bucketRules {
		slices.SortFunc(rules, func(x, y string) int { return strings.Compare(JumpTarget(y), JumpTarget(x)) })
		name := fmt.Sprintf("SVCPROXY-DST-%04d", b)
		p.Write[nat(name)] = rules
		servicesRules = append(servicesRules, "-j "+name)
	}
	p.Write[nat("SVCPROXY-SERVICES")] = servicesRules
	p.Write[nat("SVCPROXY-MARK-MASQ")] = []string{"-j MARK --or-mark 0x4000"}
	p.Write[ChainKey{TableFilter, "SVCPROXY-FILTER"}] = nil
	return p
}

// Render's order is only an order: every chain is declared before its
// rules and before any rule jumps to it (the fake refuses it otherwise,
// as the kernel does), and the tables come out as String's would make
// them, deletions included.
func TestRenderMeansWhatStringMeans(t *testing.T) {
	p := benchShapedPlan(500, 8, 10)
	p.Delete = []ChainKey{{TableNAT, "SVCPROXY-SVC-GONE"}, {TableNAT, "SVCPROXY-EXT-GONE"}}
	tables := func(input string) string {
		k := NewFakeKernel()
		k.AddChain(TableNAT, "SVCPROXY-SVC-GONE", "-j DNAT --to-destination 10.244.9.9:80")
		k.AddChain(TableNAT, "SVCPROXY-EXT-GONE", "-j SVCPROXY-SVC-GONE")
		if _, err := k.Run(context.Background(), "iptables-nft-restore", []string{"--noflush"}, []byte(input)); err != nil {
			t.Fatalf("restore: %v", err)
		}
		return k.Save(TableNAT) + k.Save(TableFilter)
	}
	rendered, sorted := tables(string(p.Render(nil))), tables(p.String())
	if rendered != sorted {
		t.Errorf("Render and String make different tables:\n%s\nwant:\n%s", rendered, sorted)
	}
	if strings.Contains(rendered, "GONE") {
		t.Errorf("deleted chains survived:\n%s", rendered)
	}
}

// nftChainListWalk models what made iptables-nft-restore --noflush (1.8.9)
// slow at scale: each line inserts the chains it names (its own, and the
// one it jumps to) into a list sorted by name, walking it from the
// smallest. It returns the names the walks passed, per line.
func nftChainListWalk(input string) float64 {
	var list []string
	walked, lines := 0, 0
	insert := func(name string) {
		i := 0
		for i < len(list) && list[i] < name {
			i++
		}
		walked += i
		if i == len(list) || list[i] != name {
			list = slices.Insert(list, i, name)
		}
	}
	for _, line := range strings.Split(input, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			list = nil
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			insert(name)
		case strings.HasPrefix(line, "-A "), strings.HasPrefix(line, "-X "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			insert(chain)
			if target := JumpTarget(rule); IsOwned(target) {
				insert(target)
			}
		default:
			continue
		}
		lines++
	}
	return float64(walked) / float64(lines)
}

// Render keeps that list's walks short whatever the plan's size: a few
// dozen names per line at 4,000 ClusterIP services, where iptables-save's
// order walks a third of all the chains on every line. Chains that sort
// below the service chains and jump to them (the external chains of
// externalTrafficPolicy Local) cost more, still far less than that.
func TestRenderKeepsIptablesNFTsChainListWalksShort(t *testing.T) {
	for _, sc := range []struct {
		name          string
		externalEvery int
		within        func(rendered, sorted float64) bool
	}{
		{"cluster IPs", 0, func(r, _ float64) bool { return r <= 64 }},
		{"a tenth with external chains", 10, func(r, s float64) bool { return r <= s/10 }},
	} {
		p := benchShapedPlan(4000, 32, sc.externalEvery)
		rendered, sorted := nftChainListWalk(string(p.Render(nil))), nftChainListWalk(p.String())
		t.Logf("%s: names walked per line: %.1f rendered, %.1f in iptables-save's order", sc.name, rendered, sorted)
		if !sc.within(rendered, sorted) {
			t.Errorf("%s: Render's order walks %.1f names per line (iptables-save's order: %.1f)", sc.name, rendered, sorted)
		}
		if sorted < 1000 {
			t.Errorf("%s: the model is off: iptables-save's order walks only %.1f names per line", sc.name, sorted)
		}
	}
}
