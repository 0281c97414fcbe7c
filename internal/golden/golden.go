// Package golden compares test output with files under testdata/golden,
// naming the first line that differs; `go test -update` rewrites them.
package golden

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// Check compares got with testdata/golden/<name>.txt of the test's
// package, or rewrites the file with -update.
func Check(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".txt")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update in the package to create it)", err, t.Name())
	}
	if msg := FirstDifference(want, got); msg != "" {
		t.Errorf("%s: %s\n(if the change is intended, run go test -run %s -update in the package)", path, msg, t.Name())
	}
}

// FirstDifference describes the first line where got differs from want,
// or returns "" if they are equal.
func FirstDifference(want, got []byte) string {
	wl, gl := bytes.Split(want, []byte("\n")), bytes.Split(got, []byte("\n"))
	for i := 0; i < max(len(wl), len(gl)); i++ {
		w, g := "<end of file>", "<end of file>"
		if i < len(wl) {
			w = string(wl[i])
		}
		if i < len(gl) {
			g = string(gl[i])
		}
		if w != g {
			return fmt.Sprintf("line %d differs:\n  want: %s\n  got:  %s", i+1, w, g)
		}
	}
	return ""
}
