package proxier

import (
	"fmt"
	"maps"
	"testing"
)

// A shared copy keeps what the map held when shared, whatever is written
// to either afterwards, and the map copies only the shards it writes.
func TestServiceMapShareIsASnapshot(t *testing.T) {
	var m serviceMap[int]
	want := map[ServiceName]int{}
	for i := range 1000 {
		k := ServiceName{Namespace: "ns", Name: fmt.Sprint("svc-", i)}
		m.Set(k, i)
		want[k] = i
	}
	shared := m.Share()
	changed := ServiceName{Namespace: "ns", Name: "svc-7"}
	m.Set(changed, -1)
	m.Delete(ServiceName{Namespace: "ns", Name: "svc-8"})
	m.Delete(ServiceName{Namespace: "ns", Name: "never"})
	m.Set(ServiceName{Namespace: "other", Name: "new"}, 5)

	if got := maps.Collect(shared.All()); !maps.Equal(got, want) || shared.Len() != len(want) {
		t.Errorf("the shared copy changed with the map: %d entries (Len %d), want %d", len(got), shared.Len(), len(want))
	}
	if v, _ := m.Get(changed); v != -1 || m.Len() != 1000 || m.Value(ServiceName{Namespace: "ns", Name: "svc-8"}) != 0 {
		t.Errorf("after the writes: svc-7 = %d, Len %d; want -1, 1000, svc-8 gone", v, m.Len())
	}
	copied := 0
	for i := range m.shards {
		if m.owned[i] {
			copied++
		}
	}
	if copied > 3 {
		t.Errorf("%d shards copied for writes to at most 3", copied)
	}
	if again := m.Share(); maps.Collect(again.All())[changed] != -1 {
		t.Error("a second share misses the writes since the first")
	}
}
