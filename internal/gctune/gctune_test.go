package gctune

import (
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

// TestHeadroom: after a collection the percentage gives the test's small
// live heap its headroom to grow, and no more than headroom over the
// runtime's least heap (the test's live heap is below it); stop puts back
// GOGC=100. Not parallel: the percentage is the process's.
func TestHeadroom(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: Headroom leaves the collector alone")
	}
	percent := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	const headroom = 64 << 20
	stop := Headroom(headroom)
	for deadline := time.Now().Add(10 * time.Second); percent() <= 100; {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("GOGC is still %d after collections", percent())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the cleanup runs on its own goroutine
	}
	if got, most := percent(), uint64(headroom*100/minHeap); got > most {
		stop()
		t.Fatalf("GOGC is %d with a live heap below the least heap, want at most %d (headroom over %d bytes)", got, most, minHeap)
	}
	stop()
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	if got := percent(); got != 100 {
		t.Fatalf("GOGC is %d after stop, want 100", got)
	}
}
