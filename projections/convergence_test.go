package projections

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// TestConvergence delivers realistic lifecycles in many random orders, with
// duplicates inside batches and whole batches applied twice (a runner that
// crashed after writing and replays), and compares full table dumps with the
// in-order result, which itself must agree with the pure fold of domain.
func TestConvergence(t *testing.T) {
	t.Parallel()
	pool := fastPool(t)
	p := Billing(testPlans(t))
	ds := lifecycles(1, 15)
	ctx := context.Background()

	ref := scratch(t, pool, p)
	foldAll(t, pool, p, ref, records(t, ds))
	want := dump(t, pool, ref)
	checkAgainstReplay(t, pool, ref, ds, p.Plans)

	schema := scratch(t, pool, p)
	decoded := decodeCache{p: p, batches: map[string]*batch{}}
	rng := rand.New(rand.NewPCG(2, 3))
	facts := subscriptionFacts(t, ds, p.Plans)
	var hard hardCases
	for i := range 200 {
		if _, err := pool.Exec(ctx, "TRUNCATE "+tableList(schema)); err != nil {
			t.Fatal(err)
		}
		order := domaintest.Redeliver(rng, ds)
		hard.count(order, facts)
		for _, recs := range chunks(rng, records(t, order), 150) {
			b, times := decoded.batch(recs), 1
			if rng.IntN(5) == 0 {
				times = 2 // a runner that crashed after committing replays the batch
			}
			for range times {
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fold(ctx, tx, p, schema, b) })
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		if d := diffDumps(want, dump(t, pool, schema)); d != "" {
			t.Fatalf("permutation %d differs from the in-order read model: %s", i, d)
		}
	}
	// The orders DESIGN §4 calls out must actually have been exercised.
	if hard.olderAfterDeleted == 0 || hard.paidBeforeUpdated == 0 {
		t.Fatalf("permutations exercised %d older updates after a deletion and %d renewals paid before their update; want both > 0",
			hard.olderAfterDeleted, hard.paidBeforeUpdated)
	}
	t.Logf("exercised %d older updates delivered after their subscription's deletion, %d invoice.paid before an older-or-same-second subscription update",
		hard.olderAfterDeleted, hard.paidBeforeUpdated)
}

// subscriptionFact is what the hard-case count needs of one event.
type subscriptionFact struct {
	subscription string
	deleted      bool // customer.subscription.deleted
	update       bool // any other subscription snapshot
	paid         bool // invoice.paid of a subscription invoice
	created      time.Time
}

func subscriptionFacts(t *testing.T, ds []domaintest.Delivery, plans domain.Plans) map[string]subscriptionFact {
	t.Helper()
	facts := map[string]subscriptionFact{}
	for _, d := range ds {
		env, err := domain.ParseEnvelope(d.Payload)
		if err != nil {
			t.Fatal(err)
		}
		f, err := domain.Decode(env, d.Payload, plans)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case f == nil:
		case f.Subscription != nil:
			facts[d.EventID] = subscriptionFact{subscription: f.Subscription.ID, created: f.Created,
				deleted: env.Type == "customer.subscription.deleted", update: env.Type != "customer.subscription.deleted"}
		case f.Invoice != nil && f.Invoice.SubscriptionID != "" && env.Type == "invoice.paid":
			facts[d.EventID] = subscriptionFact{subscription: f.Invoice.SubscriptionID, paid: true, created: f.Created}
		}
	}
	return facts
}

// hardCases counts deliveries in the orders that break naive projections.
type hardCases struct {
	olderAfterDeleted int // a subscription update delivered after the subscription's deletion
	paidBeforeUpdated int // invoice.paid delivered before a subscription update created no later than it
}

func (h *hardCases) count(order []domaintest.Delivery, facts map[string]subscriptionFact) {
	deleted := map[string]bool{}
	paidAt := map[string][]time.Time{} // paid invoices delivered so far, by subscription
	for _, d := range order {
		f, ok := facts[d.EventID]
		if !ok {
			continue
		}
		switch {
		case f.deleted:
			deleted[f.subscription] = true
		case f.paid:
			paidAt[f.subscription] = append(paidAt[f.subscription], f.created)
		case f.update:
			if deleted[f.subscription] {
				h.olderAfterDeleted++
			}
			for _, p := range paidAt[f.subscription] {
				if !f.created.After(p) {
					h.paidBeforeUpdated++
					break
				}
			}
		}
	}
}

// decodeCache decodes each event once: JSON decoding, not the fold under
// test, would otherwise take most of the time (and minutes under -race).
type decodeCache struct {
	p       Projection
	batches map[string]*batch // of one record, by event id
}

// batch is p.decode(recs), from decoded single records.
func (c decodeCache) batch(recs []eventlog.Record) *batch {
	b := c.p.decode(nil)
	for _, r := range recs {
		one := c.batches[r.ID]
		if one == nil {
			one = c.p.decode([]eventlog.Record{r})
			c.batches[r.ID] = one
		}
		b.merge(one)
	}
	return b
}

// checkAgainstReplay compares the customers of schema with domaintest.Replay of ds.
func checkAgainstReplay(t *testing.T, pool *pgxpool.Pool, schema string, ds []domaintest.Delivery, plans domain.Plans) {
	t.Helper()
	payloads := make([][]byte, len(ds))
	for i, d := range ds {
		payloads[i] = d.Payload
	}
	states, err := domaintest.Replay(payloads, plans)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(context.Background(), "SELECT account, customer_id, plan, entitled, access_until FROM "+ident(schema)+".customers")
	if err != nil {
		t.Fatal(err)
	}
	var (
		account, id, plan string
		entitled          bool
		until             *time.Time
		n                 int
	)
	_, err = pgx.ForEachRow(rows, []any{&account, &id, &plan, &entitled, &until}, func() error {
		n++
		s := states[domain.CustomerKey{Account: account, ID: id}]
		switch {
		case s == nil:
			t.Errorf("customer %s is in the read model, not in the replay", id)
		case s.Plan != plan || s.Entitled != entitled || !sameTime(s.AccessUntil, until):
			t.Errorf("customer %s: read model plan=%s entitled=%v access_until=%v, replay %s %v %v",
				id, plan, entitled, until, s.Plan, s.Entitled, s.AccessUntil)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(states) {
		t.Errorf("read model has %d customers, replay %d", n, len(states))
	}
}

func sameTime(a, b *time.Time) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && a.Equal(*b))
}

// TestConvergenceLifecycleClasses folds every lifecycle class of
// domaintest in every API version into PostgreSQL, in shuffled orders with
// duplicates and batches applied twice, each batch loading its customers'
// state from the rows the previous ones wrote, and requires the rows to be
// the same every time and to hold Stripe's own final state.
func TestConvergenceLifecycleClasses(t *testing.T) {
	t.Parallel()
	pool := fastPool(t)
	p := Billing(testPlans(t))
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(21, 23))
	var ds []domaintest.Delivery
	for _, version := range domaintest.APIVersions {
		for _, class := range domaintest.Classes {
			ds = append(ds, domaintest.Life(rng, class, version)...)
		}
	}
	final, err := domaintest.StripeFinal(ds, p.Plans)
	if err != nil {
		t.Fatal(err)
	}
	schema := scratch(t, pool, p)
	var want map[string][]string
	for i := range 8 {
		if _, err := pool.Exec(ctx, "TRUNCATE "+tableList(schema)); err != nil {
			t.Fatal(err)
		}
		for _, recs := range chunks(rng, records(t, domaintest.Redeliver(rng, ds)), 60) {
			b, times := p.decode(recs), 1+rng.IntN(2)
			for range times {
				if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fold(ctx, tx, p, schema, b) }); err != nil {
					t.Fatal(err)
				}
			}
		}
		requireFinal(t, pool, schema, final)
		got := dump(t, pool, schema)
		if want == nil {
			want = got
		} else if d := diffDumps(want, got); d != "" {
			t.Fatalf("order %d differs from order 0: %s", i, d)
		}
	}
}

// requireFinal fails unless the customers and subscriptions of schema are
// those of final.
func requireFinal(t *testing.T, pool *pgxpool.Pool, schema string, final map[domain.CustomerKey]*domain.CustomerState) {
	t.Helper()
	ctx := context.Background()
	var customers, subscriptions int
	rows, err := pool.Query(ctx, "SELECT account, customer_id, plan, entitled FROM "+ident(schema)+".customers")
	if err != nil {
		t.Fatal(err)
	}
	var (
		account, id, plan string
		entitled          bool
	)
	_, err = pgx.ForEachRow(rows, []any{&account, &id, &plan, &entitled}, func() error {
		customers++
		key := domain.CustomerKey{Account: account, ID: id}
		if w := final[key]; w == nil || w.Plan != plan || w.Entitled != entitled {
			t.Errorf("customer %v: plan %s entitled %v; Stripe's final state %+v", key, plan, entitled, w)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err = pool.Query(ctx, "SELECT account, customer_id, subscription_id, status, plan, cancel_at_period_end, canceled_at, current_period_end, last_event_id FROM "+ident(schema)+".subscriptions")
	if err != nil {
		t.Fatal(err)
	}
	var (
		subID, status, lastEvent string
		cancelAtPeriodEnd        bool
		canceledAt, periodEnd    *time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&account, &id, &subID, &status, &plan, &cancelAtPeriodEnd, &canceledAt, &periodEnd, &lastEvent}, func() error {
		subscriptions++
		var w domain.Subscription
		if st := final[domain.CustomerKey{Account: account, ID: id}]; st != nil {
			w = st.Subscriptions[subID]
		}
		if w.LastEventID != lastEvent || w.Status != status || w.Plan != plan || w.CancelAtPeriodEnd != cancelAtPeriodEnd ||
			!sameTime(w.CanceledAt, canceledAt) || !sameTime(w.CurrentPeriodEnd, periodEnd) {
			t.Errorf("subscription %s of %s/%s: %s %s (event %s, period end %v); Stripe's final: %s %s (event %s, period end %v)",
				subID, account, id, status, plan, lastEvent, periodEnd, w.Status, w.Plan, w.LastEventID, w.CurrentPeriodEnd)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	finalSubs := 0
	for _, st := range final {
		finalSubs += len(st.Subscriptions)
	}
	if customers != len(final) || subscriptions != finalSubs {
		t.Fatalf("%d customers and %d subscriptions; Stripe has %d and %d", customers, subscriptions, len(final), finalSubs)
	}
}
