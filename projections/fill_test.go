package projections

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

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
		b := testBuilder(t, pool, log, p, 97, fillMax)
		schema := scratch(t, pool, p)
		if err := fill(b, schema); err != nil {
			t.Fatal(err)
		}
		if d := diffDumps(dump(t, pool, ref), dump(t, pool, schema)); d != "" {
			t.Fatalf("filled read model differs from the folded one: %s", d)
		}
		if want, got := jsonNulls(t, pool, ref), jsonNulls(t, pool, schema); !slices.Equal(want, got) || want[1] == "invoices 0 0" {
			t.Fatalf("SQL NULLs and JSON nulls in the nullable jsonb columns: fold %q, fill %q", want, got)
		}
		if want, got := deadLetterDump(t, pool, ref), deadLetterDump(t, pool, schema); !slices.Equal(want, got) || len(want) == 0 {
			t.Fatalf("dead letters: fold %q, fill %q", want, got)
		}
	}
	fillCopy := func(b *builder, schema string) error {
		_, err := b.fillCopy(ctx, schema, nil, false) // errFillRefused would fail the test: no fallback here
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
			if _, err := b.fillCopy(ctx, schema, nil, false); err == nil {
				return fmt.Errorf("fillCopy took a NUL in a jsonb column")
			}
			_, err := b.fill(ctx, schema, nil, false)
			return err
		}, 0)
	})
}

// testBuilder is a builder of p's schemas from log, filling in chunks of
// fillChunk records and flushing at fillMax objects held (0: at the end).
func testBuilder(t *testing.T, pool *pgxpool.Pool, log eventlog.Log, p Projection, fillChunk, fillMax int) *builder {
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &builder{pool: pool, log: log, p: p, logger: testLogger(t), metrics: m, batchSize: 150, fillChunk: fillChunk, fillMax: fillMax}
}

// jsonNulls counts the SQL NULLs and the JSON nulls of schema's nullable
// jsonb columns, which dump renders alike.
func jsonNulls(t *testing.T, q *pgxpool.Pool, schema string) []string {
	count := func(table, column string) string {
		return fmt.Sprintf(`SELECT concat_ws(' ', '%[2]s', count(*) FILTER (WHERE %[3]s IS NULL), count(*) FILTER (WHERE jsonb_typeof(%[3]s) = 'null'))
  FROM %[1]s.%[2]s`, ident(schema), table, column)
	}
	return queryStrings(t, q, count(subscriptionsTable.name, "previous_attributes")+" UNION ALL "+count(invoicesTable.name, "payment"))
}

// deadLetterDump lists schema's dead letters: event id and error (which may name the schema).
func deadLetterDump(t *testing.T, q *pgxpool.Pool, schema string) []string {
	return queryStrings(t, q, `SELECT event_id || ': ' || replace(error, schema_name, '<schema>') FROM projection_dead_letters
 WHERE schema_name = $1 ORDER BY event_id`, schema)
}

// TestFillReadsLinksUpToItsChunk: the fill holds its links in memory and
// links each chunk just before its fold, so a late fact's history holds
// the streams linked up to its own chunk, as in the incremental fold,
// never those a later chunk links. Invoice in_ft is Y's (its first event),
// so X's snapshot of it does not link it to X, and the payment that marks
// it paid is Y's. X's late snapshot makes X's fold read X's history; the
// next event, a payment intent of X that names the payment inpay_ft as its
// invoice (no Stripe shape, but a log may hold it), links the payment's
// stream to X: read with that link, X's timeline would count in_ft paid.
// The fill, one event a chunk, is compared with the fold, one event a
// transaction.
func TestFillReadsLinksUpToItsChunk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, pgtest.NewDatabase(t))
	log := postgres.New(pool, testLogger(t))
	p := Billing(testPlans(t)).reading(log)
	const at = 1709251200 // subscriptionEvent's created
	invoice := func(id, customer string, created int64, sub string) eventlog.Event {
		return rawEvent(id, "customer-"+customer, "invoice.finalized", fmt.Sprintf(`{"id":%q,"object":"event","api_version":"2023-10-16",`+
			`"created":%d,"type":"invoice.finalized","data":{"object":{"id":"in_ft","object":"invoice","customer":%q,"status":"open",`+
			`"amount_due":2900,"amount_paid":0,"currency":"usd","attempt_count":0,"subscription":%q,`+
			`"lines":{"data":[{"type":"subscription","subscription":%q,"period":{"start":%d,"end":%d}}]}}}}`,
			id, created, customer, sub, sub, at, at+30*86400))
	}
	events := []eventlog.Event{
		invoice("evt_ft_y_inv", "cus_ft_y", at-300, ""),
		rawEvent("evt_ft_pay", "object-invoice_payment-inpay_ft", "invoice_payment.paid", `{"id":"evt_ft_pay","object":"event",`+
			`"api_version":"2025-03-31.basil","created":1709250900,"type":"invoice_payment.paid","data":{"object":{"id":"inpay_ft",`+
			`"object":"invoice_payment","amount_paid":2900,"amount_requested":2900,"created":1709250900,"currency":"usd","invoice":"in_ft",`+
			`"is_default":true,"payment":{"type":"payment_intent","payment_intent":"pi_ft"},"status":"paid",`+
			`"status_transitions":{"canceled_at":null,"paid_at":1709250900}}}}`),
		subscriptionEvent("evt_ft_sub", "cus_ft_x", "sub_ft", "active", "price_pro", at, at+30*86400),
		invoice("evt_ft_x_inv", "cus_ft_x", at-100, "sub_ft"), // late: X's history is read
		rawEvent("evt_ft_pi", "customer-cus_ft_x", "payment_intent.succeeded", `{"id":"evt_ft_pi","object":"event","api_version":"2023-10-16",`+
			`"created":1709251210,"type":"payment_intent.succeeded","data":{"object":{"id":"pi_ft","object":"payment_intent","customer":"cus_ft_x","invoice":"inpay_ft"}}}`),
	}
	for i, created := range []int64{at - 300, at - 200, at, at - 100, at + 10} {
		events[i].Created = time.Unix(created, 0).UTC()
		if _, err := log.Append(ctx, events[i]); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := log.ReadAll(ctx, eventlog.Start, 100)
	if err != nil {
		t.Fatal(err)
	}
	ref := scratch(t, pool, p)
	for _, r := range recs {
		if _, err := foldBatch(ctx, pool, testLogger(t), p, ref, p.decode([]eventlog.Record{r}), nil); err != nil {
			t.Fatal(err)
		}
	}

	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	schema := scratch(t, pool, p)
	b := &builder{pool: pool, log: log, p: p, logger: testLogger(t), metrics: m, fillChunk: 1}
	if _, err := b.fillCopy(ctx, schema, nil, false); err != nil {
		t.Fatal(err)
	}
	if d := diffDumps(dump(t, pool, ref), dump(t, pool, schema)); d != "" {
		t.Fatalf("filled read model differs from the folded one: %s", d)
	}
}

// TestFillDropsAnObjectAnotherCustomerClaims: subscription sub_moved is
// first A's (entitling A to pro), then B's, and A's next event (another
// subscription, canceled) derives A's plan again. Folded an event a batch,
// the incremental fold loads A without sub_moved, whose row B's upsert
// took, so A ends on the free plan; the fill, holding A's state in memory
// across chunks, must drop sub_moved from it too and leave A's customer row
// (plan, entitled, access_until, timeline) as that fold does. In one batch
// (one chunk) A folds both its events before B claims sub_moved, and stays
// on pro in both.
func TestFillDropsAnObjectAnotherCustomerClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, pgtest.NewDatabase(t))
	log := postgres.New(pool, testLogger(t))
	p := Billing(testPlans(t)).reading(log)
	const start, end = 1709251200, 1711929600
	for _, e := range []eventlog.Event{
		subscriptionEvent("evt_moved_1", "cus_moved_a", "sub_moved", "active", "price_pro", start, end),
		subscriptionEvent("evt_moved_2", "cus_moved_b", "sub_moved", "active", "price_pro", start, end),
		subscriptionEvent("evt_moved_3", "cus_moved_a", "sub_moved_other", "canceled", "price_pro", start, end),
	} {
		if _, err := log.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := log.ReadAll(ctx, eventlog.Start, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name               string
		fillChunk, fillMax int    // the fold's batches are of fillChunk events
		planA              string // cus_moved_a's plan and entitled, as the fold leaves them
	}{
		{"a chunk an event", 1, 0, "free false"},
		{"a flush a chunk", 1, 1, "free false"},
		{"one chunk", 100, 0, "price_pro true"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref := scratch(t, pool, p)
			for part := range slices.Chunk(recs, c.fillChunk) {
				if _, err := foldBatch(ctx, pool, testLogger(t), p, ref, p.decode(part), nil); err != nil {
					t.Fatal(err)
				}
			}
			if a := queryStrings(t, pool, "SELECT plan || ' ' || entitled FROM "+ident(ref)+".customers WHERE customer_id = 'cus_moved_a'"); !slices.Equal(a, []string{c.planA}) {
				t.Fatalf("the incremental fold leaves cus_moved_a %q, want %q", a, c.planA)
			}
			b := testBuilder(t, pool, log, p, c.fillChunk, c.fillMax)
			schema := scratch(t, pool, p)
			if _, err := b.fillCopy(ctx, schema, nil, false); err != nil {
				t.Fatal(err)
			}
			if d := diffDumps(dump(t, pool, ref), dump(t, pool, schema)); d != "" {
				t.Errorf("filled read model differs from the folded one: %s", d)
			}
		})
	}
}
