package projections

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// TestFoldWritesInChunks: a shuffled corpus folded with its writes sent in
// rounds of one and of two customers, each round written while the next
// is folded, leaves the read model and the outbox (every row, in position
// order) as one round per batch does. Late facts read their customer's
// history while a round is still being written, and a value the read
// model refuses in a later round of a batch (a status a constraint of the
// schema refuses) rolls back the rounds before it with the batch: its
// bisection applies every other event once, and dead-letters the poison.
func TestFoldWritesInChunks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := Billing(testPlans(t))
	rng := rand.New(rand.NewPCG(17, 17))
	recs := records(t, domaintest.Redeliver(rng, lifecycles(17, 12)))
	poison := subscriptionEvent("evt_poison_check", "cus_poison_check", "sub_poison_check", "poisoned", "price_pro", 1709251200, 1711929600)
	recs = slices.Insert(recs, len(recs)/2, eventlog.Record{Event: poison})
	for i := range recs {
		recs[i].Position = eventlog.Position{Commit: uint64(i + 1), Prepare: uint64(i + 1)}
	}
	batches := chunks(rng, recs, 150)
	for _, b := range batches {
		if i := slices.IndexFunc(b, func(r eventlog.Record) bool { return r.ID == poison.ID }); i >= 0 {
			keys := p.decode(b).customers()
			if slices.Index(keys, domain.CustomerKey{ID: "cus_poison_check"}) < 2 {
				t.Fatalf("the poison's customer is not in a later round of two customers of its batch: %v", keys)
			}
		}
	}

	fold := func(chunk int) (dumped map[string][]string, outbox, dead []string, reads int64) {
		pool := fastPool(t)
		streams := &countingStreams{StreamReader: streamsOf(batches...)}
		p := p.reading(streams)
		p.chunk = chunk
		schema := scratch(t, pool, p)
		addPoisonCheck(t, pool, schema)
		for _, recs := range batches {
			if _, err := foldBatch(ctx, pool, testLogger(t), p, schema, p.decode(recs), nil); err != nil {
				t.Fatal(err)
			}
		}
		rows, err := pool.Query(ctx, `SELECT concat_ws(' ', id, type, account, customer_id, event_ids::text, occurred_at, data::text)
  FROM notifications ORDER BY position`)
		if err == nil {
			outbox, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err == nil {
			rows, err = pool.Query(ctx, `SELECT event_id FROM projection_dead_letters ORDER BY event_id`)
		}
		if err == nil {
			dead, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			t.Fatal(err)
		}
		return dump(t, pool, schema), outbox, dead, streams.reads.Load()
	}
	want, wantOutbox, _, _ := fold(len(recs))
	if len(wantOutbox) == 0 {
		t.Fatal("the corpus derived no notifications")
	}
	for _, chunk := range []int{1, 2} {
		got, outbox, dead, reads := fold(chunk)
		if d := diffDumps(want, got); d != "" {
			t.Errorf("rounds of %d customers: read model differs from one round per batch: %s", chunk, d)
		}
		if !slices.Equal(outbox, wantOutbox) {
			t.Errorf("rounds of %d customers: %d notifications, want %d as one round per batch derives them, in that order", chunk, len(outbox), len(wantOutbox))
		}
		if !slices.Equal(dead, []string{poison.ID}) {
			t.Errorf("rounds of %d customers: dead letters %v, want %s alone", chunk, dead, poison.ID)
		}
		if reads == 0 {
			t.Errorf("rounds of %d customers: no late fact read its history", chunk)
		}
	}
}

// countingStreams counts the reads of customers' histories.
type countingStreams struct {
	audit.StreamReader
	reads atomic.Int64
}

func (s *countingStreams) ReadStream(ctx context.Context, stream string, from int64, limit int) ([]eventlog.Record, error) {
	s.reads.Add(1)
	return s.StreamReader.ReadStream(ctx, stream, from, limit)
}

// TestFoldRoundsKeepTheLaterClaimOfAnObject: two customers of one batch
// claim one subscription, the later event's customer sorting first. In
// one round per batch the upsert would write the row twice (SQLSTATE
// 21000), and the bisection leaves it with the customer later in the log,
// as the fill does; in rounds of one customer the fold must leave the same,
// not the row of whichever customer's round came last.
func TestFoldRoundsKeepTheLaterClaimOfAnObject(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const start, end = 1709251200, 1711929600
	var recs []eventlog.Record
	for i, e := range []eventlog.Event{
		subscriptionEvent("evt_claim_1", "cus_claim_b", "sub_claimed", "active", "price_pro", start, end),
		subscriptionEvent("evt_claim_2", "cus_claim_a", "sub_claimed", "past_due", "price_pro", start, end),
	} {
		recs = append(recs, eventlog.Record{Event: e, Position: eventlog.Position{Commit: uint64(i + 1), Prepare: uint64(i + 1)}})
	}
	for _, chunk := range []int{0, 1} {
		pool := fastPool(t)
		p := Billing(testPlans(t)).reading(streamsOf(recs))
		p.chunk = chunk
		schema := scratch(t, pool, p)
		if _, err := foldBatch(ctx, pool, testLogger(t), p, schema, p.decode(recs), nil); err != nil {
			t.Fatal(err)
		}
		var customer string
		if err := pool.QueryRow(ctx, "SELECT customer_id FROM "+ident(schema)+".subscriptions WHERE subscription_id = 'sub_claimed'").
			Scan(&customer); err != nil {
			t.Fatal(err)
		}
		if customer != "cus_claim_a" {
			t.Errorf("rounds of %d customers (0: one round): sub_claimed is %s's, want cus_claim_a's (the later event's)", chunk, customer)
		}
	}
}
