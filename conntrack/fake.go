package conntrack

import (
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
