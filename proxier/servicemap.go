package proxier

import (
	"iter"
	"maps"
)

// serviceMap maps service names to V, cut into shards so that sharing it
// is cheap both ways: Share hands out a copy that shares every shard, and
// the first write to a shard after that copies that shard alone. The
// tracker shares its maps with each Snapshot; at 10,000 services cloning a
// whole map after every sync cost a fifth of a one-endpoint sync, where a
// shard is about 80 entries. Values are never modified in place, only
// replaced, so a shard's shallow copy is a consistent one.
type serviceMap[V any] struct {
	shards [serviceShards]map[ServiceName]V
	// owned marks the shards no Share copy holds: written in place.
	owned [serviceShards]bool
	n     int
}

const serviceShards = 128

// shardOf spreads services over shards (FNV-1a of namespace/name).
func shardOf(namespace, name string) uint32 {
	h := uint32(2166136261)
	for _, s := range []string{namespace, name} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint32(s[i])) * 16777619
		}
		h = (h ^ '/') * 16777619
	}
	return h
}

func (m *serviceMap[V]) shard(k ServiceName) int {
	return int(shardOf(k.Namespace, k.Name) % serviceShards)
}

// Get returns k's value.
func (m *serviceMap[V]) Get(k ServiceName) (V, bool) {
	v, ok := m.shards[m.shard(k)][k]
	return v, ok
}

// Value returns k's value, or V's zero value.
func (m *serviceMap[V]) Value(k ServiceName) V { return m.shards[m.shard(k)][k] }

// Len counts the entries.
func (m *serviceMap[V]) Len() int { return m.n }

// Set stores v under k.
func (m *serviceMap[V]) Set(k ServiceName, v V) {
	s := m.writable(m.shard(k))
	if _, ok := s[k]; !ok {
		m.n++
	}
	s[k] = v
}

// Delete removes k.
func (m *serviceMap[V]) Delete(k ServiceName) {
	i := m.shard(k)
	if _, ok := m.shards[i][k]; !ok {
		return
	}
	delete(m.writable(i), k)
	m.n--
}

func (m *serviceMap[V]) writable(i int) map[ServiceName]V {
	if !m.owned[i] {
		m.shards[i] = maps.Clone(m.shards[i])
		if m.shards[i] == nil {
			m.shards[i] = map[ServiceName]V{}
		}
		m.owned[i] = true
	}
	return m.shards[i]
}

// All yields every entry, in no particular order.
func (m *serviceMap[V]) All() iter.Seq2[ServiceName, V] {
	return func(yield func(ServiceName, V) bool) {
		for _, s := range m.shards {
			for k, v := range s {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// Share returns a copy holding the same entries; from then on neither
// writes a shard in place.
func (m *serviceMap[V]) Share() serviceMap[V] {
	m.owned = [serviceShards]bool{}
	return serviceMap[V]{shards: m.shards, n: m.n}
}
