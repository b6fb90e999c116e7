package projections

import (
	"context"
	"math"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestAdvanceRefusesAPositionBeyondInt64: positions are uint64s held in
// bigint columns; one that bigint cannot hold fails the advance and leaves
// the checkpoint where it was, instead of being stored wrapped to a negative
// position that no read scans back.
func TestAdvanceRefusesAPositionBeyondInt64(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewDatabase(t))
	ctx := t.Context()
	if _, err := pool.Exec(ctx, `INSERT INTO projection_checkpoints (name, version, schema_name, position, prepare)
VALUES ('wide', 1, 'wide_v1', 5, 7)`); err != nil {
		t.Fatal(err)
	}
	cp, ok, err := loadCheckpoint(ctx, pool, "wide", "")
	if err != nil || !ok {
		t.Fatalf("loadCheckpoint = %+v, %v, %v", cp, ok, err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	beyond := eventlog.Position{Commit: math.MaxInt64 + 1, Prepare: 1}
	_, _, err = advance(ctx, tx, "wide", cp, beyond)
	if err == nil {
		err = tx.Commit(ctx)
	} else {
		_ = tx.Rollback(context.Background())
	}
	if err == nil {
		t.Errorf("advance to %s committed, want a refusal", beyond)
	}
	if got, _, err := loadCheckpoint(ctx, pool, "wide", ""); err != nil || got.Position != cp.Position {
		t.Errorf("checkpoint after the refused advance = %s, %v; want %s", got.Position, err, cp.Position)
	}
}
