package projections

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestFillEqualsIncrementalFold: the COPY fill of a new schema gives exactly
// the read model (every table, every row, and the dead letters) that the
// incremental fold gives, batch by batch with bisection, on a corpus of
// lifecycles in every API version and both Connect accounts, redelivered
// and shuffled, with issue #10's poison mixed in: in one flush, and in many
// small ones that load customers back and write them again. A value only
// PostgreSQL refuses (a NUL in previous_attributes, kept in a jsonb column)
// makes the fill build the schema again incrementally, with the same result.
func TestFillEqualsIncrementalFold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, pgtest.NewDatabase(t))
	log := postgres.New(pool, testLogger(t))
	p := Billing(testPlans(t)).reading(log)
	rng := rand.New(rand.NewPCG(17, 17))
	ds := lifecycles(17, 30)
	var events []eventlog.Event
	for _, d := range domaintest.Redeliver(rng, ds) {
		events = append(events, event(t, d))
	}
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	for _, ps := range poisons() {
		events = slices.Insert(events, rng.IntN(len(events)+1), ps.event)
	}
	for _, e := range events {
		if _, err := log.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	check := func(t *testing.T, fill func(b *builder, schema string) error, fillMax int) {
		recs, err := log.ReadAll(ctx, eventlog.Start, 1_000_000)
		if err != nil {
			t.Fatal(err)
		}
		ref := scratch(t, pool, p)
		for _, part := range chunks(rng, recs, 200) {
			if _, err := foldBatch(ctx, pool, testLogger(t), p, ref, p.decode(part), nil); err != nil {
				t.Fatal(err)
			}
		}
		m, err := newMetrics(nil)
		if err != nil {
			t.Fatal(err)
		}
		b := &builder{pool: pool, log: log, p: p, logger: testLogger(t), metrics: m, batchSize: 150, fillChunk: 97, fillMax: fillMax}
		schema := scratch(t, pool, p)
		if err := fill(b, schema); err != nil {
			t.Fatal(err)
		}
		if d := diffDumps(dump(t, pool, ref), dump(t, pool, schema)); d != "" {
			t.Fatalf("filled read model differs from the folded one: %s", d)
		}
		if want, got := deadLetterDump(t, pool, ref), deadLetterDump(t, pool, schema); !slices.Equal(want, got) || len(want) == 0 {
			t.Fatalf("dead letters: fold %q, fill %q", want, got)
		}
	}
	fillCopy := func(b *builder, schema string) error {
		_, err := b.fillCopy(ctx, schema, nil) // errFillRefused would fail the test: no fallback here
		return err
	}
	t.Run("one flush", func(t *testing.T) { check(t, fillCopy, 0) })
	t.Run("many flushes", func(t *testing.T) { check(t, fillCopy, 40) })

	prev := subscriptionEvent("evt_poison_nul_prev", "cus_poison_nul_prev", "sub_poison_nul_prev", "active", "price_pro", 1709251200, 1711929600)
	prev.Payload = slices.Concat(prev.Payload[:len(prev.Payload)-2], []byte(`,"previous_attributes":{"status":"past\u0000due"}}}`))
	if _, err := log.Append(ctx, prev); err != nil {
		t.Fatal(err)
	}
	t.Run("refused by PostgreSQL", func(t *testing.T) {
		check(t, func(b *builder, schema string) error {
			if _, err := b.fillCopy(ctx, schema, nil); err == nil {
				return fmt.Errorf("fillCopy took a NUL in a jsonb column")
			}
			_, err := b.fill(ctx, schema, nil)
			return err
		}, 0)
	})
}

// deadLetterDump lists schema's dead letters: event id and error (which may name the schema).
func deadLetterDump(t *testing.T, q *pgxpool.Pool, schema string) []string {
	t.Helper()
	rows, err := q.Query(context.Background(), `SELECT event_id || ': ' || replace(error, schema_name, '<schema>') FROM projection_dead_letters
 WHERE schema_name = $1 ORDER BY event_id`, schema)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
