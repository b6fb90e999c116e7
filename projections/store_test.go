package projections

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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
		return dump(t, pool, schema), outboxDump(t, pool), deadLetterIDs(t, pool), streams.reads.Load()
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

// TestJoinedBatchesFoldAsBatches: batches joined into one transaction
// (batch.then), each linked while the one before it folds, leave the read
// model and its links, the outbox (every row, in position order) and the
// dead letters exactly as the same batches folded one transaction each: in
// log order, where no fold reads a history and every link goes ahead, and
// redelivered and shuffled with a poison, where late facts read their
// histories (so links wait for the fold before them) and the poison's
// bisection runs over the joined batch.
func TestJoinedBatchesFoldAsBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := Billing(testPlans(t))
	rng := rand.New(rand.NewPCG(23, 23))
	poison := subscriptionEvent("evt_poison_join", "cus_poison_join", "sub_poison_join", "poisoned", "price_pro", 1709251200, 1711929600)
	shuffled := records(t, domaintest.Redeliver(rng, lifecycles(23, 12)))
	shuffled = slices.Insert(shuffled, len(shuffled)/2, eventlog.Record{Event: poison})
	for i := range shuffled {
		shuffled[i].Position = eventlog.Position{Commit: uint64(i + 1), Prepare: uint64(i + 1)}
	}
	for _, c := range []struct {
		name  string
		seed  uint64 // of the batches' sizes
		recs  []eventlog.Record
		late  bool // some folds read a history
		dead  []string
		joins []int
	}{
		{"in log order", 1, records(t, lifecycles(29, 12)), false, nil, []int{2, 3}},
		{"shuffled", 2, shuffled, true, []string{poison.ID}, []int{2, 3}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			batches := chunks(rand.New(rand.NewPCG(c.seed, c.seed)), c.recs, 60)
			fold := func(join int) (dumped map[string][]string, outbox, dead []string, reads int64) {
				pool := fastPool(t)
				streams := &countingStreams{StreamReader: streamsOf(batches...)}
				p := p.reading(streams)
				schema := scratch(t, pool, p)
				addPoisonCheck(t, pool, schema)
				for i := 0; i < len(batches); i += join {
					b := p.decode(batches[i])
					for _, recs := range batches[i+1 : min(i+join, len(batches))] {
						b = b.then(p.decode(recs))
					}
					if _, err := foldBatch(ctx, pool, testLogger(t), p, schema, b, nil); err != nil {
						t.Fatal(err)
					}
				}
				return dump(t, pool, schema), outboxDump(t, pool), deadLetterIDs(t, pool), streams.reads.Load()
			}
			want, wantOutbox, wantDead, _ := fold(1)
			if len(wantOutbox) == 0 || len(want[linksTable.name]) == 0 {
				t.Fatal("the corpus derived no notifications or no links")
			}
			if !slices.Equal(wantDead, c.dead) {
				t.Fatalf("dead letters %v, want %v", wantDead, c.dead)
			}
			for _, join := range c.joins {
				got, outbox, dead, reads := fold(join)
				if d := diffDumps(want, got); d != "" {
					t.Errorf("%d batches a transaction: read model differs from one batch a transaction: %s", join, d)
				}
				if !slices.Equal(outbox, wantOutbox) {
					t.Errorf("%d batches a transaction: %d notifications, want %d as one batch a transaction derives them, in that order", join, len(outbox), len(wantOutbox))
				}
				if !slices.Equal(dead, wantDead) {
					t.Errorf("%d batches a transaction: dead letters %v, want %v", join, dead, wantDead)
				}
				if (reads > 0) != c.late {
					t.Errorf("%d batches a transaction: %d reads of histories, want some: %t", join, reads, c.late)
				}
			}
		})
	}
}

// TestJoinedPartsLoadAhead: the second part of a joined batch, whose
// customers are loaded while the first part folds and before its rows are
// written, folds as it would alone: a customer of both parts continues from
// the first part's state (cus_both's subscription moves on from what the
// first part made it), one whose charges the first part did not hold gets
// them (cus_charges' stored refund outranks the second part's smaller one),
// and one whose subscription the first part took for another customer no
// longer has it (cus_from loses the entitlement sub_taken gave it).
func TestJoinedPartsLoadAhead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const start, end = 1709251200, 1711929600
	at := func(e eventlog.Event, second int64) eventlog.Event {
		e.Created = time.Unix(start+second, 0).UTC()
		return e
	}
	refund := func(id, customer string, refunded int64) eventlog.Event {
		return rawEvent(id, "customer-"+customer, "charge.refunded", fmt.Sprintf(`{"id":%q,"object":"event","api_version":"2023-10-16",`+
			`"created":1709251200,"type":"charge.refunded","data":{"object":{"id":"ch_refunded","object":"charge","customer":%q,`+
			`"currency":"usd","amount":900,"amount_refunded":%d,"refunded":false}}}`, id, customer, refunded))
	}
	batches := [][]eventlog.Event{{ // stored before the joined batch
		at(subscriptionEvent("evt_ahead_1", "cus_from", "sub_taken", "active", "price_pro", start, end), 0),
		at(refund("evt_ahead_2", "cus_charges", 500), 0),
		at(subscriptionEvent("evt_ahead_3", "cus_both", "sub_both", "trialing", "price_pro", start, end), 0),
	}, { // the joined batch's first part
		at(subscriptionEvent("evt_ahead_4", "cus_to", "sub_taken", "active", "price_pro", start, end), 10),
		at(subscriptionEvent("evt_ahead_5", "cus_charges", "sub_charges", "active", "price_pro", start, end), 10),
		at(subscriptionEvent("evt_ahead_6", "cus_both", "sub_both", "active", "price_pro", start, end), 10),
	}, { // its second part
		at(subscriptionEvent("evt_ahead_7", "cus_from", "sub_other", "incomplete", "price_pro", start, end), 20),
		at(refund("evt_ahead_8", "cus_charges", 200), 20),
		at(subscriptionEvent("evt_ahead_9", "cus_both", "sub_both", "past_due", "price_pro", start, end), 20),
	}}
	var recs [][]eventlog.Record
	for _, events := range batches {
		var part []eventlog.Record
		for _, e := range events {
			n := uint64(len(part) + 3*len(recs) + 1)
			part = append(part, eventlog.Record{Event: e, Position: eventlog.Position{Commit: n, Prepare: n}})
		}
		recs = append(recs, part)
	}
	fold := func(join bool) (map[string][]string, []string) {
		pool := fastPool(t)
		streams := &countingStreams{StreamReader: streamsOf(recs...)}
		p := Billing(testPlans(t)).reading(streams)
		schema := scratch(t, pool, p)
		foldAll(t, pool, p, schema, recs[0])
		if join {
			if _, err := foldBatch(ctx, pool, testLogger(t), p, schema, p.decode(recs[1]).then(p.decode(recs[2])), nil); err != nil {
				t.Fatal(err)
			}
		} else {
			foldAll(t, pool, p, schema, recs[1:]...)
		}
		if n := streams.reads.Load(); n > 0 {
			t.Fatalf("%d reads of histories: the second part was not loaded ahead", n)
		}
		return dump(t, pool, schema), outboxDump(t, pool)
	}
	want, wantOutbox := fold(false)
	for _, row := range [][]string{
		{`"customer_id": "cus_from"`, `"entitled": false`},
		{`"customer_id": "cus_to"`, `"entitled": true`},
		{`"customer_id": "cus_both"`, `"status": "past_due"`},
		{`"customer_id": "cus_charges"`, `"amount_refunded": 500`},
	} {
		if !slices.ContainsFunc(slices.Concat(want[customersTable.name], want[subscriptionsTable.name], want[chargesTable.name]),
			func(r string) bool { return strings.Contains(r, row[0]) && strings.Contains(r, row[1]) }) {
			t.Fatalf("one batch a transaction: no row with %s and %s: %v", row[0], row[1], want)
		}
	}
	got, outbox := fold(true)
	if d := diffDumps(want, got); d != "" {
		t.Errorf("joined: read model differs from one batch a transaction: %s", d)
	}
	if !slices.Equal(outbox, wantOutbox) {
		t.Errorf("joined: notifications %v, want %v as one batch a transaction derives them", outbox, wantOutbox)
	}
}

// TestJoinedBatchFailsWhole: a joined batch whose second part fails (a late
// fact's history cannot be read: the log is unreachable) after its first
// part's rows, links and notifications were sent leaves nothing of either:
// the read model, its links, the outbox and the checkpoint are as they
// were; folded again it converges to what the two batches give folded one
// transaction each.
func TestJoinedBatchFailsWhole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := Billing(testPlans(t))
	created := records(t, lifecycles(31, 4))
	// The later half of the deliveries first in the log: the earlier half's
	// facts are then late.
	recs := slices.Concat(created[len(created)/2:], created[:len(created)/2])
	for i := range recs {
		recs[i].Position = eventlog.Position{Commit: uint64(i + 1), Prepare: uint64(i + 1)}
	}
	first, second := recs[:len(recs)/2], recs[len(recs)/2:]
	streams := streamsOf(first, second)

	refPool := fastPool(t)
	ref := scratch(t, refPool, p.reading(streams))
	foldAll(t, refPool, p.reading(streams), ref, first, second)
	want, wantOutbox := dump(t, refPool, ref), outboxDump(t, refPool)
	if len(wantOutbox) == 0 {
		t.Fatal("the corpus derived no notifications")
	}

	pool := fastPool(t)
	schema := scratch(t, pool, p)
	const name = "billing_joined"
	if _, err := pool.Exec(ctx, `INSERT INTO projection_checkpoints (name, version, schema_name, position, prepare) VALUES ($1, $2, $3, 0, 0)`,
		name, p.Version, schema); err != nil {
		t.Fatal(err)
	}
	empty := dump(t, pool, schema)
	joinedFold := func(p Projection) error {
		cp, _, err := loadCheckpoint(ctx, pool, name, "")
		if err != nil {
			t.Fatal(err)
		}
		b := p.decode(first).then(p.decode(second))
		_, err = foldBatch(ctx, pool, testLogger(t), p, schema, b, func(tx pgx.Tx) error {
			_, _, err := advance(ctx, tx, name, cp, b.last)
			return err
		})
		return err
	}
	failing := &countingStreams{StreamReader: unreachableStreams{}}
	if err := joinedFold(p.reading(failing)); err == nil {
		t.Fatal("the joined batch folded without its history")
	}
	if failing.reads.Load() == 0 {
		t.Fatal("the second part read no history: the failure was not the one under test")
	}
	if d := diffDumps(empty, dump(t, pool, schema)); d != "" {
		t.Errorf("the failed joined batch left rows: %s", d)
	}
	if outbox := outboxDump(t, pool); len(outbox) > 0 {
		t.Errorf("the failed joined batch left %d notifications", len(outbox))
	}
	if cp, _, _ := loadCheckpoint(ctx, pool, name, ""); cp.Position != eventlog.Start {
		t.Errorf("the failed joined batch moved the checkpoint to %s", cp.Position)
	}

	if err := joinedFold(p.reading(streams)); err != nil {
		t.Fatal(err)
	}
	if d := diffDumps(want, dump(t, pool, schema)); d != "" {
		t.Errorf("the joined batch folded again differs from its batches folded one transaction each: %s", d)
	}
	if outbox := outboxDump(t, pool); !slices.Equal(outbox, wantOutbox) {
		t.Errorf("the joined batch folded again derived %d notifications, want %d as its batches do, in that order", len(outbox), len(wantOutbox))
	}
	if cp, _, _ := loadCheckpoint(ctx, pool, name, ""); cp.Position != recs[len(recs)-1].Position {
		t.Errorf("checkpoint at %s after the joined batch", cp.Position)
	}
}

// unreachableStreams is a log that cannot be read.
type unreachableStreams struct{}

func (unreachableStreams) ReadStream(context.Context, string, int64, int) ([]eventlog.Record, error) {
	return nil, errors.New("the log is unreachable")
}

// outboxDump renders the outbox of pool's database, in position order.
func outboxDump(t testing.TB, pool *pgxpool.Pool) []string {
	return queryStrings(t, pool, `SELECT concat_ws(' ', id, type, account, customer_id, event_ids::text, occurred_at, data::text)
  FROM notifications ORDER BY position`)
}

// deadLetterIDs are the event ids of every dead letter of pool's database.
func deadLetterIDs(t testing.TB, pool *pgxpool.Pool) []string {
	return queryStrings(t, pool, `SELECT event_id FROM projection_dead_letters ORDER BY event_id`)
}

// queryStrings returns what sql, which selects one text column, selects.
func queryStrings(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
