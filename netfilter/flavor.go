package netfilter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"

	"github.com/svcproxy/svcproxy/model"
)

// Flavor is the iptables implementation that programs the kernel: nft
// (iptables-nft, rules in nf_tables) or legacy (x_tables). Rules of one are
// invisible to the other's tools, so svcproxy must use the one the host's
// other programs use.
type Flavor string

// The two flavors of iptables 1.8.
const (
	FlavorNFT    Flavor = "nft"
	FlavorLegacy Flavor = "legacy"
)

// Flavors are both flavors, nft first.
func Flavors() []Flavor { return []Flavor{FlavorNFT, FlavorLegacy} }

// ParseFlavor accepts "nft" and "legacy".
func ParseFlavor(s string) (Flavor, error) {
	switch f := Flavor(s); f {
	case FlavorNFT, FlavorLegacy:
		return f, nil
	}
	return "", fmt.Errorf("iptables flavor %q: want nft or legacy", s)
}

// Binary names the flavor's tool for a family: tool is "" for iptables
// itself, "-save" or "-restore" ("ip6tables-legacy-restore").
func (f Flavor) Binary(family model.Family, tool string) string {
	base := "iptables"
	if family == model.IPv6 {
		base = "ip6tables"
	}
	return base + "-" + string(f) + tool
}

// Runner runs one iptables binary with arguments and standard input and
// returns its standard output: the applier's only way to the kernel
// besides RuleEditor. A failure is an *ExecError.
type Runner interface {
	Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error)
}

// ExecError is a binary that failed, with what it said.
type ExecError struct {
	Name   string
	Args   []string
	Stderr string
	Err    error // the exit status, or why it did not run
}

func (e *ExecError) Error() string {
	return fmt.Sprintf("%s %s: %v: %s", e.Name, strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Stderr))
}

func (e *ExecError) Unwrap() error { return e.Err }

// FeedingRunner is a Runner that can also feed a program's standard
// input as it is written: a full sync's restore input is megabytes at
// 10,000 services, and fed so it is never held whole.
type FeedingRunner interface {
	Runner
	// RunFed runs name with what feed writes as its input.
	RunFed(ctx context.Context, name string, args []string, feed func(io.Writer) error) ([]byte, error)
}

// ReadingRunner is a Runner that can also hand a program's standard
// output to a reader as it is printed: a save of the nat table at 10,000
// services is 10 MB, which a buffer would hold whole and copy as it grows.
type ReadingRunner interface {
	Runner
	// RunRead runs name and calls read with its output; what read leaves
	// unread is discarded.
	RunRead(ctx context.Context, name string, args []string, read func(io.Reader) error) error
}

// ExecRunner runs binaries from PATH in the caller's network namespace.
type ExecRunner struct{}

// RunRead implements ReadingRunner. The program's failure comes first,
// then read's.
func (ExecRunner) RunRead(ctx context.Context, name string, args []string, read func(io.Reader) error) error {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return &ExecError{Name: name, Args: args, Err: err}
	}
	if err := cmd.Start(); err != nil {
		return &ExecError{Name: name, Args: args, Err: err}
	}
	readErr := read(out)
	_, _ = io.Copy(io.Discard, out) // the program must not block on a full pipe
	if err := cmd.Wait(); err != nil {
		return &ExecError{Name: name, Args: args, Stderr: stderr.String(), Err: err}
	}
	return readErr
}

// RunFed implements FeedingRunner. A program that exits without reading
// all of its input ends the feed (its writes fail) and its own failure is
// what is returned.
func (ExecRunner) RunFed(ctx context.Context, name string, args []string, feed func(io.Writer) error) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	in, out := io.Pipe()
	cmd.Stdin = in
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	fed := make(chan error, 1)
	go func() {
		err := feed(out)
		out.CloseWithError(err) // nil: the program reads EOF
		fed <- err
	}()
	err := cmd.Run()
	in.Close() // a feed still writing (the program exited early) stops
	feedErr := <-fed
	switch {
	case err != nil:
		return stdout.Bytes(), &ExecError{Name: name, Args: args, Stderr: stderr.String(), Err: err}
	case feedErr != nil:
		return stdout.Bytes(), &ExecError{Name: name, Args: args, Stderr: stderr.String(), Err: fmt.Errorf("feeding its input: %w", feedErr)}
	}
	return stdout.Bytes(), nil
}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &ExecError{Name: name, Args: args, Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}

// DetectFlavor picks the flavor the host already uses, as kube-proxy's
// iptables-wrapper does: the one whose save shows more rules, in both
// families; nft when they tie (a fresh host shows none in either). A
// flavor whose tools are missing or fail is never chosen (a kernel without
// nf_tables must get legacy, even with no rule anywhere); if both fail, the
// error says why.
func DetectFlavor(ctx context.Context, run Runner) (Flavor, error) {
	nft, nftErr := countRules(ctx, run, FlavorNFT)
	legacy, legacyErr := countRules(ctx, run, FlavorLegacy)
	switch {
	case nftErr != nil && legacyErr != nil:
		return "", fmt.Errorf("detecting the iptables flavor: %w", errors.Join(nftErr, legacyErr))
	case nftErr != nil:
		return FlavorLegacy, nil
	case legacyErr != nil:
		return FlavorNFT, nil
	case legacy > nft:
		return FlavorLegacy, nil
	}
	return FlavorNFT, nil
}

// countRules counts the rules ("-A" lines) of every table of both families.
func countRules(ctx context.Context, run Runner, f Flavor) (int, error) {
	n := 0
	var errs []error
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		out, err := run.Run(ctx, f.Binary(family, "-save"), nil, nil)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "-A ") {
				n++
			}
		}
	}
	if len(errs) == 2 {
		return 0, errors.Join(errs...)
	}
	return n, nil
}
