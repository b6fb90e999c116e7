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
	for i := range 200 {
		if _, err := pool.Exec(ctx, "TRUNCATE "+tableList(schema)); err != nil {
			t.Fatal(err)
		}
		for _, recs := range chunks(rng, records(t, domaintest.Redeliver(rng, ds)), 150) {
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
