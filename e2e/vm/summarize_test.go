package vm_test

import (
	"strings"
	"testing"
)

// The summary of a go test -v run names each failing test with its own
// output lines, subtests included, whose verdicts come after the parent's
// other output.
func TestSummarizeKeepsTheFailingTestsOutput(t *testing.T) {
	out := `=== RUN   TestA
=== RUN   TestA/nft
    a_test.go:10: first failure
=== RUN   TestA/legacy
    a_test.go:12: fine
--- FAIL: TestA (1.00s)
    --- FAIL: TestA/nft (0.50s)
    --- PASS: TestA/legacy (0.50s)
=== RUN   TestB
--- PASS: TestB (0.10s)
FAIL
`
	r := summarize([]byte(out))
	if r.passed != 2 || len(r.failed) != 2 {
		t.Fatalf("summary %+v", r)
	}
	if !strings.Contains(r.failures, "=== TestA/nft\n    a_test.go:10: first failure") || strings.Contains(r.failures, "fine") {
		t.Fatalf("failures:\n%s", r.failures)
	}
}
