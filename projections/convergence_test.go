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
	rng := rand.New(rand.NewPCG(2, 3))
	for i := range 200 {
		if _, err := pool.Exec(ctx, "TRUNCATE "+ident(schema)+".customers, "+ident(schema)+".subscriptions, "+
			ident(schema)+".invoices, "+ident(schema)+".charges, "+ident(schema)+".disputes"); err != nil {
			t.Fatal(err)
		}
		for _, b := range chunks(rng, records(t, domaintest.Redeliver(rng, ds)), 150) {
			foldAll(t, pool, p, schema, b)
			if rng.IntN(5) == 0 {
				foldAll(t, pool, p, schema, b)
			}
		}
		if d := diffDumps(want, dump(t, pool, schema)); d != "" {
			t.Fatalf("permutation %d differs from the in-order read model: %s", i, d)
		}
	}
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
