package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestEventsAreAppendOnly: the triggers of migration 004 refuse every change
// to stored records, for any role that cannot disable them, and leave the
// records as they were (the seals' triggers are tested in eventlog/audit).
func TestEventsAreAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	l := postgres.New(pool, nil)
	stream := eventlogtest.NewStream("appendonly")
	for range 3 {
		if _, err := l.Append(ctx, eventlogtest.NewEvent(stream)); err != nil {
			t.Fatal(err)
		}
	}
	for _, sql := range []string{
		`UPDATE events SET payload = '\x7b7d'::bytea WHERE stream_version = 1`,
		`UPDATE events SET type = 'x'`,
		`DELETE FROM events WHERE stream_version = 2`,
		`DELETE FROM events`,
		`TRUNCATE events`,
	} {
		_, err := pool.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s: err = %v, want insufficient_privilege from the append-only trigger", sql, err)
		}
	}
	recs, err := l.ReadStream(ctx, stream, 0, 10)
	if err != nil || len(recs) != 3 {
		t.Fatalf("after the refused changes the stream holds %d records (%v), want 3", len(recs), err)
	}
	// Appends still work, duplicates included (ON CONFLICT DO NOTHING is no UPDATE).
	if res, err := l.Append(ctx, recs[0].Event); err != nil || !res.Duplicate {
		t.Fatalf("re-append: %+v, %v; want a duplicate", res, err)
	}
	if _, err := l.Append(ctx, eventlogtest.NewEvent(stream)); err != nil {
		t.Fatal(err)
	}
}
