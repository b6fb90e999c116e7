package projections

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/domain/domaintest"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
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
		fs, err := domain.Decode(env, d.Payload, plans)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			switch {
			case f.Subscription != nil:
				facts[d.EventID] = subscriptionFact{subscription: f.Subscription.ID, created: f.Created,
					deleted: env.Type == "customer.subscription.deleted", update: env.Type != "customer.subscription.deleted"}
			case f.Invoice != nil && f.Invoice.SubscriptionID != "" && env.Type == "invoice.paid":
				facts[d.EventID] = subscriptionFact{subscription: f.Invoice.SubscriptionID, paid: true, created: f.Created}
			}
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

// checkAgainstReplay compares the customers of schema with domain.Replay of ds.
func checkAgainstReplay(t *testing.T, pool *pgxpool.Pool, schema string, ds []domaintest.Delivery, plans domain.Plans) {
	t.Helper()
	payloads := make([][]byte, len(ds))
	for i, d := range ds {
		payloads[i] = d.Payload
	}
	states, err := domain.Replay(payloads, plans)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(context.Background(), "SELECT customer_id, plan, entitled, access_until FROM "+ident(schema)+".customers")
	if err != nil {
		t.Fatal(err)
	}
	var (
		id, plan string
		entitled bool
		until    *time.Time
		n        int
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &plan, &entitled, &until}, func() error {
		n++
		s := states[id]
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
