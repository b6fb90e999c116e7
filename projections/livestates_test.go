package projections

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// TestHeldStatesConverge folds realistic lifecycles, redelivered in random
// orders, in live-sized batches, some applied twice, each batch from the
// states the batches before left held (a few customers at most, so that
// states are let go and loaded again): the read model must be the one the
// in-order fold leaves, as each batch loading its states does
// (TestConvergence), and the states held must spare loads.
func TestHeldStatesConverge(t *testing.T) {
	t.Parallel()
	pool := fastPool(t)
	p := Billing(testPlans(t))
	rng := rand.New(rand.NewPCG(31, 37))
	ds := lifecycles(3, 12)
	for _, class := range domaintest.Classes {
		ds = append(ds, domaintest.Life(rng, class, domaintest.APIVersions[0])...)
	}
	ctx := context.Background()
	ref := scratch(t, pool, p)
	foldAll(t, pool, p, ref, records(t, ds))
	want := dump(t, pool, ref)

	schema := scratch(t, pool, p)
	var loaded, customers int
	for i := range 12 {
		if _, err := pool.Exec(ctx, "TRUNCATE "+tableList(schema)); err != nil {
			t.Fatal(err)
		}
		recs := records(t, domaintest.Redeliver(rng, ds))
		p := p.reading(streamsOf(recs))
		p.states = newHeldStates(8)
		for _, recs := range chunks(rng, recs, 40) {
			b, times := p.decode(recs), 1+rng.IntN(2)
			for range times {
				if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fold(ctx, tx, p, schema, b) }); err != nil {
					t.Fatal(err)
				}
				p.states.commit(p.states.xmin)
				customers += len(b.facts)
			}
		}
		loaded += p.states.loaded
		if d := diffDumps(want, dump(t, pool, schema)); d != "" {
			t.Fatalf("order %d differs from the in-order read model: %s", i, d)
		}
	}
	if loaded >= customers*3/4 {
		t.Errorf("folds of %d customers loaded %d states: want the held ones spared", customers, loaded)
	}
	t.Logf("folds of %d customers loaded %d states", customers, loaded)
}

// TestHeldStateOfAClaimedObject: a subscription that another customer's
// event claims leaves the first customer's state in the read model (the
// row follows the later claim); the state the runner held for the first
// customer still has it, and must not be folded again: the first
// customer's next batch derives its entitlement without the subscription,
// as a fold loading it does.
func TestHeldStateOfAClaimedObject(t *testing.T) {
	t.Parallel()
	const start, end = 1709251200, 1711929600
	l := newLiveRunner(t,
		subscriptionEvent("evt_held_1", "cus_held_a", "sub_held_x", "active", "price_pro", start, end),
		subscriptionEvent("evt_held_2", "cus_held_b", "sub_held_x", "active", "price_pro", start, end),
		subscriptionEvent("evt_held_3", "cus_held_a", "sub_held_y", "canceled", "price_pro", start, end))
	for i := range l.recs {
		l.apply(t, l.recs[i:i+1])
	}
	ref := scratch(t, l.pool, l.r.p)
	foldAll(t, l.pool, l.r.p, ref, l.recs[:1], l.recs[1:2], l.recs[2:])
	if d := diffDumps(dump(t, l.pool, ref), dump(t, l.pool, l.cp.Schema)); d != "" {
		t.Fatalf("the live read model differs from folds that load every state: %s", d)
	}
	if entitled := l.entitled(t, "cus_held_a"); entitled {
		t.Fatal("cus_held_a entitled, want not: its only active subscription is cus_held_b's now")
	}
}

// TestRetryLetsGoOfHeldStates: a dead letter retried (after a fix) writes a
// customer's rows beside the runner, which holds that customer's state
// from before; the runner's next batch of the customer must fold the state
// the retry left, not the one it held.
func TestRetryLetsGoOfHeldStates(t *testing.T) {
	t.Parallel()
	const start, end = 1709251200, 1711929600
	l := newLiveRunner(t,
		subscriptionEvent("evt_retry_1", "cus_retry", "sub_ended", "canceled", "price_pro", start, end),
		subscriptionEvent("evt_retry_2", "cus_retry", "sub_retried", "active", "price_pro", start, end),
		subscriptionEvent("evt_retry_3", "cus_retry", "sub_ended2", "canceled", "price_pro", start, end),
		subscriptionEvent("evt_retry_4", "cus_retry", "sub_ended3", "canceled", "price_pro", start, end))
	ctx := context.Background()
	const check = "no_sub_retried"
	if _, err := l.pool.Exec(ctx, "ALTER TABLE "+ident(l.cp.Schema)+".subscriptions ADD CONSTRAINT "+check+" CHECK (subscription_id <> 'sub_retried')"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // the second is dead-lettered
		l.apply(t, l.recs[i:i+1])
	}
	if l.states.held[domain.CustomerKey{ID: "cus_retry"}] == nil {
		t.Fatal("the runner holds no state of cus_retry after its batch")
	}
	if _, err := l.pool.Exec(ctx, "ALTER TABLE "+ident(l.cp.Schema)+".subscriptions DROP CONSTRAINT "+check); err != nil {
		t.Fatal(err)
	}
	if res, err := Retry(ctx, l.pool, l.log, l.r.p, testLogger(t), "evt_retry_2"); err != nil || len(res.Applied) != 1 {
		t.Fatalf("Retry(evt_retry_2) = %+v, %v; want it applied", res, err)
	}
	l.apply(t, l.recs[3:])
	if !l.entitled(t, "cus_retry") {
		t.Fatal("cus_retry not entitled, want entitled: the retried sub_retried is active")
	}
}

// liveRunner is a runner of an empty live version on a log of events,
// whose batches a test hands to its live handler.
type liveRunner struct {
	pool   *pgxpool.Pool
	log    *postgres.Log
	r      *Runner
	cp     checkpoint
	recs   []eventlog.Record // of events, as the log reads them
	states *heldStates
	handle eventlog.Handler
}

func newLiveRunner(t *testing.T, events ...eventlog.Event) *liveRunner {
	ctx := context.Background()
	l := &liveRunner{states: newHeldStates(maxHeldStates)}
	l.pool, l.log = newLog(t)
	l.r = newRunner(t, l.pool, l.log, Billing(testPlans(t)))
	if err := l.r.buildVersion(ctx); err != nil {
		t.Fatal(err)
	}
	var err error
	if l.cp, _, err = loadCheckpoint(ctx, l.pool, l.r.p.Name, ""); err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if _, err := l.log.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if l.recs, err = l.log.ReadAll(ctx, eventlog.Start, len(events)); err != nil {
		t.Fatal(err)
	}
	l.handle = l.r.apply(&l.cp, l.states)
	return l
}

// apply hands recs to the runner as a live batch.
func (l *liveRunner) apply(t *testing.T, recs []eventlog.Record) {
	t.Helper()
	if err := l.handle(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
}

// entitled reports whether the live read model entitles customer.
func (l *liveRunner) entitled(t *testing.T, customer string) bool {
	t.Helper()
	var entitled bool
	if err := l.pool.QueryRow(context.Background(), `SELECT entitled FROM readmodel.customers WHERE customer_id = $1`, customer).Scan(&entitled); err != nil {
		t.Fatal(err)
	}
	return entitled
}
