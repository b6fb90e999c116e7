// Package gctune paces the garbage collector of a process whose live heap
// is small next to what it allocates: a serving ledger (a few MB live, a
// dozen collections a second at Go's default under ingest) and a build of
// the read model (a few hundred MB live, whose every collection marks it
// all again).
package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Headroom sets the garbage collector, unless GOGC is set, to let the heap
// grow after each collection by headroom bytes or by the live heap (what
// GOGC=100 allows), whichever is more, until the returned stop puts back
// GOGC=100. A large live heap is thus collected as by default, and a small
// one lets about headroom accumulate beyond it (a little more: the pacer
// counts stacks and globals too); GOMEMLIMIT, when set, still bounds the
// heap. The heap peaks at about the live heap plus headroom.
//
// The percentage follows the live heap each collection measures: the
// cleanup of a value left unreachable runs once the collection that found it
// ends, sets the percentage for the next one, and leaves another such value.
// GOGC is read from the process's environment, as the runtime reads it.
func Headroom(headroom uint64) (stop func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	var (
		mu      sync.Mutex
		stopped bool
	)
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var arm func()
	arm = func() {
		runtime.AddCleanup(new(gcCycle), func(struct{}) {
			mu.Lock()
			defer mu.Unlock()
			if stopped {
				return
			}
			metrics.Read(live)
			// The runtime's least heap goal is minHeap times the percentage:
			// a live heap smaller than minHeap (a process that has just
			// dropped what it set up) gets headroom, not a multiple of it.
			bytes := max(live[0].Value.Uint64(), minHeap)
			debug.SetGCPercent(int(max(100, headroom*100/bytes)))
			arm()
		}, struct{}{})
	}
	arm()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		debug.SetGCPercent(100)
	}
}

// minHeap is the Go runtime's least heap goal at GOGC=100 (heapminimum).
const minHeap = 4 << 20

// gcCycle is the value whose cleanup marks the end of a collection: large
// enough to be an allocation of its own (the tiny allocator packs smaller
// pointer-free values together, and frees them together).
type gcCycle struct{ _ [16]byte }
