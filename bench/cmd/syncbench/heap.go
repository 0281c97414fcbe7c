package main

import (
	"fmt"
	"runtime/metrics"
	"strings"
	"sync"
	"time"
)

// heapWatch samples the Go heap (objects live or not yet swept) every few
// milliseconds and keeps the highest per phase of the run: which phase
// sets the process's peak RSS, and by how much.
type heapWatch struct {
	mu     sync.Mutex
	phase  string
	peaks  []phasePeak
	stop   chan struct{}
	done   chan struct{}
	sample []metrics.Sample
}

type phasePeak struct {
	name  string
	bytes uint64
}

func watchHeap(first string) *heapWatch {
	w := &heapWatch{phase: first, peaks: []phasePeak{{name: first}}, stop: make(chan struct{}), done: make(chan struct{}),
		sample: []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				w.take()
			}
		}
	}()
	return w
}

func (w *heapWatch) take() {
	w.mu.Lock()
	defer w.mu.Unlock()
	metrics.Read(w.sample)
	p := &w.peaks[len(w.peaks)-1]
	p.bytes = max(p.bytes, w.sample[0].Value.Uint64())
}

// enter starts a phase, after a last sample of the one before.
func (w *heapWatch) enter(name string) {
	w.take()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.peaks = append(w.peaks, phasePeak{name: name})
}

// print ends the watch and prints each phase's peak.
func (w *heapWatch) print() {
	w.take()
	close(w.stop)
	<-w.done
	var parts []string
	for _, p := range w.peaks {
		parts = append(parts, fmt.Sprintf("%s %.0f", p.name, float64(p.bytes)/(1<<20)))
	}
	fmt.Printf("  %-34s %s MiB\n", "peak Go heap by phase", strings.Join(parts, ", "))
}
