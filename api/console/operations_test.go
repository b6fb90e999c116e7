package console

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/projections"
)

// TestRebuildsOneAtATimeAndStoppedByClose: while a rebuild started from the
// console runs, a second one of the same projection is refused (another
// projection's starts); Close cancels the running ones and waits for them,
// whose errors the runs keep; after Close nothing starts. The rebuild here
// blocks until its context ends, as projections.Rebuild does between
// batches; TestConsoleRebuildAndReconcile (cmd/ledger) runs the real one.
func TestRebuildsOneAtATimeAndStoppedByClose(t *testing.T) {
	t.Parallel()
	c := &Console{rebuilds: newRebuilds()}
	started := make(chan string, 2)
	block := func(ctx context.Context, name string) error {
		started <- name
		<-ctx.Done()
		return fmt.Errorf("rebuild %s: %w", name, ctx.Err())
	}
	var logged []string
	logger := func(msg string, _ ...any) { logged = append(logged, msg) }
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	first, err := c.rebuilds.start("billing", now, block, logger)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if again, err := c.rebuilds.start("billing", now.Add(time.Second), block, logger); !errors.Is(err, errRebuildRunning) || again != first {
		t.Fatalf("a second rebuild of billing while one runs: %v, want errRebuildRunning and the running one", err)
	}
	if _, err := c.rebuilds.start("other", now, block, logger); err != nil {
		t.Fatalf("a rebuild of another projection: %v", err)
	}
	<-started
	if runs := c.rebuilds.snapshot(); !runs["billing"].Running() || !runs["other"].Running() || !runs["billing"].Started.Equal(now) {
		t.Fatalf("runs %+v, want both running", runs)
	}

	c.Close() // returns only once both rebuilds returned
	for name, run := range c.rebuilds.snapshot() {
		if run.Running() || run.Err != "rebuild "+name+": context canceled" || run.Refused {
			t.Errorf("%s after Close: %+v, want finished with the cancellation", name, run)
		}
	}
	if len(logged) != 2 {
		t.Errorf("logged %q, want both failures", logged)
	}
	if _, err := c.rebuilds.start("billing", now, block, logger); err == nil {
		t.Error("a rebuild started after Close")
	}

	// A rebuild refused by the build lock is marked so.
	r := newRebuilds()
	run, err := r.start("billing", now, func(context.Context, string) error {
		return fmt.Errorf("billing: %w", projections.ErrBuildInProgress)
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	<-run.done
	if got := r.snapshot()["billing"]; !got.Refused || got.Running() {
		t.Errorf("a rebuild refused by the lock: %+v, want Refused", got)
	}
}
