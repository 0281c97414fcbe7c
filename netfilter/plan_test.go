package netfilter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
