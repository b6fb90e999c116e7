package projections

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestRunnerStoresFilteredCheckpoints runs the projection on the EventStoreDB
// backend (the in-process double) with another application's events after
// the ledger's in $all: the runner folds the ledger's events and stores the
// filtered subscription's checkpoints, so its position moves past the
// foreign events and a restart does not scan them again.
func TestRunnerStoresFilteredCheckpoints(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewDatabase(t))
	srv := esdbtest.New(t)
	log, err := esdb.Open(t.Context(), srv.URL(), pool, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(log.Close)
	p := Billing(testPlans(t))
	ds := domaintest.Lifecycles(rand.New(rand.NewPCG(4, 4)), 2)
	appendAll(t, log, ds)

	stop := startRunner(t, newRunner(t, pool, log, p))
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	last := waitCaughtUp(t, pool, log, p).Position
	srv.AppendForeign(t, 3300) // more than one checkpoint interval (100 search windows of 32) of foreign events

	deadline := time.Now().Add(waitTimeout)
	for {
		cp, _, err := loadCheckpoint(context.Background(), pool, p.Name, "")
		if err != nil {
			t.Fatal(err)
		}
		if last.Less(cp.Position) {
			break // moved past the last ledger event, onto a checkpoint
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint stayed at %s after 3,300 foreign events; want it past %s", cp.Position, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := dump(t, pool, "readmodel")
	// The foreign events changed nothing, and the ledger's events still fold once.
	appendAll(t, log, ds) // re-deliveries: duplicates
	if d := diffDumps(want, dump(t, pool, "readmodel")); d != "" {
		t.Fatalf("re-delivered events changed the read model: %s", d)
	}
}
