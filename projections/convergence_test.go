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
		recs := records(t, order)
		p := p.reading(streamsOf(recs))
		for _, recs := range chunks(rng, recs, 150) {
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
	if hard.olderAfterDeleted == 0 || hard.paidBeforeUpdated == 0 || hard.paymentBeforeInvoice == 0 || onlyPaidByPayment(facts) == 0 {
		t.Fatalf("permutations exercised %d older updates after a deletion, %d renewals paid before their update, %d invoice payments before their invoice, %d invoices paid only by a payment; want all > 0",
			hard.olderAfterDeleted, hard.paidBeforeUpdated, hard.paymentBeforeInvoice, onlyPaidByPayment(facts))
	}
	t.Logf("exercised %d older updates delivered after their subscription's deletion, %d invoice.paid before an older-or-same-second subscription update, %d invoice_payment.paid before every event of its invoice (%d invoices paid only by one)",
		hard.olderAfterDeleted, hard.paidBeforeUpdated, hard.paymentBeforeInvoice, onlyPaidByPayment(facts))
}

// subscriptionFact is what the hard-case count needs of one event.
type subscriptionFact struct {
	subscription string
	deleted      bool // customer.subscription.deleted
	update       bool // any other subscription snapshot
	paid         bool // invoice.paid of a subscription invoice
	created      time.Time

	invoice  string // the invoice of an invoice event or invoice payment
	payment  bool   // invoice_payment.paid
	paidSnap bool   // a paid snapshot of the invoice
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
			facts[d.EventID] = subscriptionFact{subscription: f.Invoice.SubscriptionID, paid: true, created: f.Created, invoice: f.Invoice.ID, paidSnap: true}
		case f.Invoice != nil:
			facts[d.EventID] = subscriptionFact{invoice: f.Invoice.ID, paidSnap: f.Invoice.Status == "paid"}
		case f.InvoicePayment != nil:
			facts[d.EventID] = subscriptionFact{invoice: f.InvoicePayment.InvoiceID, payment: true}
		}
	}
	return facts
}

// hardCases counts deliveries in the orders that break naive projections.
type hardCases struct {
	olderAfterDeleted int // a subscription update delivered after the subscription's deletion
	paidBeforeUpdated int // invoice.paid delivered before a subscription update created no later than it

	paymentBeforeInvoice int // invoice_payment.paid delivered before every event of its invoice
}

// onlyPaidByPayment counts the invoices that an invoice payment marks paid
// and no snapshot of their own does.
func onlyPaidByPayment(facts map[string]subscriptionFact) int {
	paid, byPayment := map[string]bool{}, map[string]bool{}
	for _, f := range facts {
		paid[f.invoice] = paid[f.invoice] || f.paidSnap
		byPayment[f.invoice] = byPayment[f.invoice] || f.payment
	}
	n := 0
	for id := range byPayment {
		if !paid[id] {
			n++
		}
	}
	return n
}

func (h *hardCases) count(order []domaintest.Delivery, facts map[string]subscriptionFact) {
	deleted := map[string]bool{}
	paidAt := map[string][]time.Time{} // paid invoices delivered so far, by subscription
	invoiceSeen := map[string]bool{}
	for _, d := range order {
		f, ok := facts[d.EventID]
		if !ok {
			continue
		}
		if f.payment && !invoiceSeen[f.invoice] {
			h.paymentBeforeInvoice++
		}
		if !f.payment && f.invoice != "" {
			invoiceSeen[f.invoice] = true
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
	if len(recs) > 0 { // the positions of this delivery, not of the one decoded first
		b.recs, b.last = recs, recs[len(recs)-1].Position
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
		recs := records(t, domaintest.Redeliver(rng, ds))
		p := p.reading(streamsOf(recs))
		for _, recs := range chunks(rng, recs, 60) {
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

// TestInvoicePaymentBeforeItsInvoice: an invoice_payment.paid (which names
// only its invoice) folded before any event of its invoice waits in
// pending_invoice_payments, and marks the invoice paid when the invoice's
// first event links it to its customer, exactly as in the other order.
func TestInvoicePaymentBeforeItsInvoice(t *testing.T) {
	t.Parallel()
	pool := fastPool(t)
	p := Billing(testPlans(t))
	ctx := context.Background()
	const created, paidAt = 1743469200, 1743469260
	invoice := rawEvent("evt_ip_inv", "customer-cus_ip", "invoice.finalized", `{"id":"evt_ip_inv","object":"event","api_version":"2025-03-31.basil",`+
		`"created":1743469200,"type":"invoice.finalized","data":{"object":{"id":"in_ip","object":"invoice","customer":"cus_ip","status":"open",`+
		`"amount_due":2900,"amount_paid":0,"currency":"usd","attempt_count":0,"status_transitions":{"paid_at":null},`+
		`"parent":{"type":"subscription_details","subscription_details":{"subscription":"sub_ip"}}}}}`)
	payment := rawEvent("evt_ip_pay", "object-invoice_payment-inpay_ip", "invoice_payment.paid", `{"id":"evt_ip_pay","object":"event",`+
		`"api_version":"2025-03-31.basil","created":1743469260,"type":"invoice_payment.paid","data":{"object":{"id":"inpay_ip",`+
		`"object":"invoice_payment","amount_paid":2900,"amount_requested":2900,"created":1743469200,"currency":"usd","invoice":"in_ip",`+
		`"is_default":true,"payment":{"type":"payment_intent","payment_intent":"pi_ip"},"status":"paid",`+
		`"status_transitions":{"canceled_at":null,"paid_at":1743469260}}}}`)
	invoice.Created, payment.Created = time.Unix(created, 0).UTC(), time.Unix(paidAt, 0).UTC()
	rec := func(e eventlog.Event, pos uint64) []eventlog.Record {
		return []eventlog.Record{{Event: e, Position: eventlog.Position{Commit: pos, Prepare: pos}}}
	}
	count := func(schema, table string) (n int) {
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+ident(schema)+"."+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	first := scratch(t, pool, p)
	foldAll(t, pool, p, first, rec(payment, 1))
	if n, m := count(first, "pending_invoice_payments"), count(first, "invoices"); n != 1 || m != 0 {
		t.Fatalf("after the payment alone: %d pending invoice payments and %d invoices, want 1 and 0", n, m)
	}
	foldAll(t, pool, p, first, rec(invoice, 2), rec(payment, 1))
	var status, snapshotStatus string
	var amountPaid int64
	var paid *time.Time
	err := pool.QueryRow(ctx, "SELECT status, snapshot_status, amount_paid, paid_at FROM "+ident(first)+".invoices WHERE invoice_id = 'in_ip'").
		Scan(&status, &snapshotStatus, &amountPaid, &paid)
	if err != nil {
		t.Fatal(err)
	}
	if status != "paid" || snapshotStatus != "open" || amountPaid != 2900 || paid == nil || paid.Unix() != paidAt {
		t.Fatalf("invoice after its payment: status %s (snapshot %s), amount paid %d, paid at %v; want paid (open), 2900, %d",
			status, snapshotStatus, amountPaid, paid, int64(paidAt))
	}
	if n := count(first, "pending_invoice_payments"); n != 0 {
		t.Fatalf("%d invoice payments still pending after their invoice's event", n)
	}

	second := scratch(t, pool, p)
	foldAll(t, pool, p, second, rec(invoice, 1), rec(payment, 2))
	if d := diffDumps(dump(t, pool, first), dump(t, pool, second)); d != "" {
		t.Fatalf("payment then invoice differs from invoice then payment: %s", d)
	}
}
