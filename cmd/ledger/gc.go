package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// gcHeadroom is the least a serving ledger's heap may grow between two
// garbage collections. Its live heap is small (about 8 MB under ingest), and
// Go's default GOGC=100 collects each time that much has been allocated
// again: a dozen collections a second at concurrency 8 (325-367 in an ingest
// of 15,000 deliveries; 16-18 with this headroom), and about a fifth of the
// process's CPU per delivery.
const gcHeadroom = 64 << 20

// tuneGC sets the garbage collector of a serving ledger, unless GOGC is set,
// to let the heap grow after each collection by gcHeadroom or by the live
// heap (what GOGC=100 allows), whichever is more, until the returned stop
// puts back GOGC=100. A large live heap (a rebuild started from the console)
// is thus collected as by default, and a small one lets about gcHeadroom
// accumulate beyond it (a little more: the pacer counts stacks and globals
// too); GOMEMLIMIT, when set, still bounds the heap.
//
// The percentage follows the live heap each collection measures: the
// cleanup of a value left unreachable runs once the collection that found it
// ends, sets the percentage for the next one, and leaves another such value.
// GOGC is read from the process's environment, as the runtime reads it.
func tuneGC() (stop func()) {
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
			if bytes := live[0].Value.Uint64(); bytes > 0 {
				debug.SetGCPercent(int(max(100, gcHeadroom*100/bytes)))
			}
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

// gcCycle is the value whose cleanup marks the end of a collection: large
// enough to be an allocation of its own (the tiny allocator packs smaller
// pointer-free values together, and frees them together).
type gcCycle struct{ _ [16]byte }
