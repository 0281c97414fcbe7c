package conntrack

import (
	"io/fs"
	"slices"

	"github.com/svcproxy/svcproxy/model"
)

// FakeTable is an in-memory Table for tests without root: it holds entries
// and deletes them the way the kernel table does.
type FakeTable struct {
	Entries []Entry
	// Calls records each Delete call's flows, in order.
	Calls [][]Flow
	// Err, if set, is returned by Delete after it has deleted nothing.
	Err error
}

// Delete implements Table.
func (t *FakeTable) Delete(family model.Family, flows []Flow) (int, error) {
	t.Calls = append(t.Calls, flows)
	if t.Err != nil {
		return 0, t.Err
	}
	before := len(t.Entries)
	t.Entries = slices.DeleteFunc(t.Entries, func(e Entry) bool {
		return slices.ContainsFunc(flows, func(f Flow) bool { return f.Family == family && f.Matches(e) })
	})
	return before - len(t.Entries), nil
}

// List implements Table.
func (t *FakeTable) List(family model.Family) ([]Entry, error) {
	var out []Entry
	for _, e := range t.Entries {
		if model.FamilyOf(e.Orig.Dst.Addr()) == family {
			out = append(out, e)
		}
	}
	return out, nil
}

// FakeFiles is Files in memory: the settings a test gives, each write
// recorded. A path missing from Files does not exist.
type FakeFiles struct {
	Files map[string]string
	// Errs makes writes of a path fail with its error (syscall.EROFS for a
	// read-only /proc/sys, syscall.EACCES for nf_conntrack_max outside the
	// host's network namespace); such a path is not Writable either.
	Errs map[string]error
	// Writes records each write that succeeded, "path=value", in order.
	Writes []string
}

// ReadFile implements Files.
func (f *FakeFiles) ReadFile(path string) (string, error) {
	s, ok := f.Files[path]
	if !ok {
		return "", &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return s + "\n", nil
}

// WriteFile implements Files.
func (f *FakeFiles) WriteFile(path, value string) error {
	if err := f.Errs[path]; err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: err}
	}
	if _, ok := f.Files[path]; !ok {
		return &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	f.Files[path] = value
	f.Writes = append(f.Writes, path+"="+value)
	return nil
}

// Writable implements Files.
func (f *FakeFiles) Writable(path string) bool {
	_, ok := f.Files[path]
	return ok && f.Errs[path] == nil
}
