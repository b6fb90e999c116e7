package domain_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

func dump(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const (
	month = 30 * 24 * time.Hour
	t0    = 1700000000
)

func subFact(eventID string, created int64, status string, periodEnd int64, plan string) domain.Fact {
	sub := domain.Subscription{
		ID: "sub_1", CustomerID: "cus_1", Status: status, PriceID: "price_" + plan, Plan: plan, Quantity: 1,
		CurrentPeriodStart: ts(periodEnd - int64(month/time.Second)), CurrentPeriodEnd: ts(periodEnd),
		LastEventID: eventID, LastEventCreated: at(created),
	}
	return domain.Fact{EventID: eventID, Created: at(created), CustomerID: "cus_1", Subscription: &sub}
}

func deleted(f domain.Fact) domain.Fact {
	sub := *f.Subscription
	sub.Deleted, sub.Status, sub.EndedAt = true, "canceled", ts(f.Created.Unix())
	f.Subscription = &sub
	return f
}

func invFact(eventID string, created int64, status string, attempts, paidUntil int64) domain.Fact {
	inv := domain.Invoice{
		ID: "in_1", CustomerID: "cus_1", SubscriptionID: "sub_1", Status: status, AttemptCount: attempts,
		AmountDue: 2900, Currency: "usd", PaidPeriodEnd: ts(paidUntil), LastEventID: eventID, LastEventCreated: at(created),
	}
	if status == "paid" {
		inv.AmountPaid, inv.PaidAt = 2900, ts(created)
	}
	return domain.Fact{EventID: eventID, Created: at(created), CustomerID: "cus_1", Invoice: &inv}
}

// foldAllOrders folds facts in every order, each order once plainly and once
// with every fact delivered twice, and fails unless all results are equal.
func foldAllOrders(t *testing.T, facts []domain.Fact) *domain.CustomerState {
	t.Helper()
	var first *domain.CustomerState
	var permute func(k int)
	permute = func(k int) {
		if k == len(facts) {
			for copies := 1; copies <= 2; copies++ {
				st := &domain.CustomerState{}
				for _, f := range facts {
					for range copies {
						st.Apply(f)
					}
				}
				if first == nil {
					first = st
				} else if !reflect.DeepEqual(st, first) {
					t.Fatalf("order-dependent fold:\n%s\nvs\n%s", dump(t, st), dump(t, first))
				}
			}
			return
		}
		for i := k; i < len(facts); i++ {
			facts[k], facts[i] = facts[i], facts[k]
			permute(k + 1)
			facts[k], facts[i] = facts[i], facts[k]
		}
	}
	permute(0)
	return first
}

func TestApplyConvergence(t *testing.T) {
	t.Parallel()
	end1, end2 := int64(t0+30*86400), int64(t0+60*86400)
	tests := []struct {
		name  string
		facts []domain.Fact
		check func(*domain.CustomerState) error
	}{
		{
			name: "created incomplete and activated in the same second",
			facts: []domain.Fact{
				subFact("evt_b", t0, "incomplete", end1, "pro"),
				subFact("evt_a", t0, "active", end1, "pro"),
			},
			check: func(s *domain.CustomerState) error {
				return want(s.Subscriptions["sub_1"].Status == "active" && s.Entitled && s.Plan == "pro", "active and entitled")
			},
		},
		{
			name: "deleted, then an older update arrives",
			facts: []domain.Fact{
				subFact("evt_1", t0, "active", end1, "pro"),
				deleted(subFact("evt_2", t0+86400, "active", end1, "pro")),
				subFact("evt_3", t0+3600, "active", end1, "team"),
				// Even a snapshot with a later period cannot revive it.
				subFact("evt_4", t0, "active", end2, "team"),
			},
			check: func(s *domain.CustomerState) error {
				sub := s.Subscriptions["sub_1"]
				return want(sub.Deleted && sub.Status == "canceled" && sub.LastEventID == "evt_2" &&
					!s.Entitled && s.Plan == domain.FreePlan && s.AccessUntil == nil, "deleted for good")
			},
		},
		{
			name: "invoice paid before the subscription is known",
			facts: []domain.Fact{
				invFact("evt_i", t0+5, "paid", 1, end1),
				subFact("evt_s1", t0, "incomplete", end1, "pro"),
				subFact("evt_s2", t0, "active", end1, "pro"),
			},
			check: func(s *domain.CustomerState) error {
				return want(s.Entitled && s.Plan == "pro" && s.AccessUntil != nil && s.AccessUntil.Equal(at(end1)) &&
					s.UpdatedAt.Equal(at(t0+5)), "entitled until the paid period end")
			},
		},
		{
			name: "paid is forever; attempts are the most seen",
			facts: []domain.Fact{
				invFact("evt_1", t0, "open", 1, end1),
				invFact("evt_2", t0+86400, "paid", 2, end1),
				invFact("evt_3", t0+2*86400, "open", 1, end1),
				subFact("evt_s", t0, "active", end1, "pro"),
			},
			check: func(s *domain.CustomerState) error {
				inv := s.Invoices["in_1"]
				return want(inv.Status == "paid" && inv.AttemptCount == 2 && inv.LastEventID == "evt_2", "paid, 2 attempts")
			},
		},
		{
			name: "past due, then recovered",
			facts: []domain.Fact{
				subFact("evt_1", t0, "active", end2, "pro"),
				subFact("evt_2", t0+3600, "past_due", end2, "pro"),
				subFact("evt_3", t0+3*86400, "active", end2, "pro"),
				subFact("evt_0", t0-86400, "active", end1, "pro"),
			},
			check: func(s *domain.CustomerState) error {
				return want(s.Subscriptions["sub_1"].LastEventID == "evt_3", "the recovery snapshot")
			},
		},
		{
			name: "a deleted customer is entitled to nothing",
			facts: []domain.Fact{
				subFact("evt_1", t0, "active", end1, "pro"),
				invFact("evt_2", t0, "paid", 1, end1),
				{EventID: "evt_3", Created: at(t0 + 10), CustomerID: "cus_1", Customer: &domain.Customer{
					ID: "cus_1", Email: "a@example.com", Deleted: true, LastEventID: "evt_3", LastEventCreated: at(t0 + 10)}},
				{EventID: "evt_4", Created: at(t0 + 20), CustomerID: "cus_1", Customer: &domain.Customer{
					ID: "cus_1", Email: "b@example.com", LastEventID: "evt_4", LastEventCreated: at(t0 + 20)}},
			},
			check: func(s *domain.CustomerState) error {
				return want(s.Customer.Deleted && s.Customer.Email == "a@example.com" && !s.Entitled && s.Plan == domain.FreePlan,
					"deleted customer, free")
			},
		},
		{
			name: "refunds accumulate and disputes close",
			facts: []domain.Fact{
				{EventID: "evt_1", Created: at(t0 + 20), CustomerID: "cus_1", Charge: &domain.Charge{
					ID: "ch_1", Amount: 100, AmountRefunded: 50, LastEventID: "evt_1", LastEventCreated: at(t0 + 20)}},
				{EventID: "evt_2", Created: at(t0 + 10), CustomerID: "cus_1", Charge: &domain.Charge{
					ID: "ch_1", Amount: 100, AmountRefunded: 100, Refunded: true, LastEventID: "evt_2", LastEventCreated: at(t0 + 10)}},
				{EventID: "evt_3", Created: at(t0 + 30), CustomerID: "cus_1", Dispute: &domain.Dispute{
					ID: "dp_1", ChargeID: "ch_1", Status: "needs_response", LastEventID: "evt_3", LastEventCreated: at(t0 + 30)}},
				{EventID: "evt_4", Created: at(t0 + 30), CustomerID: "cus_1", Dispute: &domain.Dispute{
					ID: "dp_1", ChargeID: "ch_1", Status: "won", LastEventID: "evt_4", LastEventCreated: at(t0 + 30)}},
			},
			check: func(s *domain.CustomerState) error {
				return want(s.Charges["ch_1"].Refunded && s.Disputes["dp_1"].Status == "won", "refunded, dispute won")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.check(foldAllOrders(t, tt.facts)); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestDeriveBestSubscription(t *testing.T) {
	t.Parallel()
	later := subFact("evt_2", t0, "past_due", t0+60*86400, "team")
	later.Subscription.ID = "sub_2"
	canceled := deleted(subFact("evt_3", t0, "active", t0+90*86400, "enterprise"))
	canceled.Subscription.ID = "sub_3"
	st := foldAllOrders(t, []domain.Fact{subFact("evt_1", t0, "active", t0+30*86400, "pro"), later, canceled})
	if st.Plan != "team" || !st.Entitled || st.AccessUntil != nil {
		t.Errorf("plan %q entitled %v access_until %v; want team, true, nil", st.Plan, st.Entitled, st.AccessUntil)
	}
}

func want(ok bool, what string) error {
	if !ok {
		return fmt.Errorf("want %s", what)
	}
	return nil
}

func payloads(ds []domaintest.Delivery) [][]byte {
	out := make([][]byte, len(ds))
	for i, d := range ds {
		out[i] = d.Payload
	}
	return out
}

// fold applies the facts of deliveries to the states of the customers they
// name, in batches of at most batch deliveries. With roundTrip, each batch
// starts from states re-loaded from what the previous one stored (a JSON
// round trip of every exported field), as a projection's does.
func fold(t *testing.T, rng *rand.Rand, ds []domaintest.Delivery, facts map[string]*domain.Fact, roundTrip bool) map[domain.CustomerKey]*domain.CustomerState {
	t.Helper()
	states := map[domain.CustomerKey]*domain.CustomerState{}
	for len(ds) > 0 {
		n := min(len(ds), 1+rng.IntN(200))
		for _, d := range ds[:n] {
			f := facts[d.EventID]
			if f == nil || f.CustomerID == "" {
				continue
			}
			if states[f.Key()] == nil {
				states[f.Key()] = &domain.CustomerState{}
			}
			states[f.Key()].Apply(*f)
		}
		ds = ds[n:]
		if roundTrip {
			stored, err := json.Marshal(slices.Collect(maps.Values(states)))
			if err != nil {
				t.Fatal(err)
			}
			var loaded []*domain.CustomerState
			if err := json.Unmarshal(stored, &loaded); err != nil {
				t.Fatal(err)
			}
			states = map[domain.CustomerKey]*domain.CustomerState{}
			for _, st := range loaded {
				states[domain.CustomerKey{Account: st.Account, ID: st.Customer.ID}] = st
			}
		}
	}
	return states
}

func TestFoldIsOrderIndependent(t *testing.T) {
	t.Parallel()
	const seed = 20240302
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		t.Fatal(err)
	}
	deliveries := domaintest.Lifecycles(rng, 40)
	facts := map[string]*domain.Fact{}
	for _, d := range deliveries {
		env, err := domain.ParseEnvelope(d.Payload)
		if err != nil {
			t.Fatalf("%s: ParseEnvelope: %v", d.EventID, err)
		}
		if env.CustomerID != d.CustomerID {
			t.Errorf("%s: envelope names customer %q, the delivery %q", d.EventID, env.CustomerID, d.CustomerID)
		}
		if facts[d.EventID], err = domain.Decode(env, d.Payload, plans); err != nil {
			t.Fatal(err)
		}
	}
	domaintest.ResolveInvoicePayments(slices.Collect(maps.Values(facts)))
	want := fold(t, rng, deliveries, facts, false)
	checkLifecycleCoverage(t, deliveries, want)

	for i := range 250 {
		redelivered := domaintest.Redeliver(rng, deliveries)
		var got map[domain.CustomerKey]*domain.CustomerState
		switch {
		case i%50 == 0:
			if got, err = domaintest.Replay(payloads(redelivered), plans); err != nil {
				t.Fatalf("permutation %d: Replay: %v", i, err)
			}
		default:
			got = fold(t, rng, redelivered, facts, i%10 == 0)
		}
		if !reflect.DeepEqual(got, want) {
			for id := range want {
				if !reflect.DeepEqual(got[id], want[id]) {
					t.Fatalf("permutation %d (seed %d): customer %s differs:\n got %s\nwant %s",
						i, seed, id, dump(t, got[id]), dump(t, want[id]))
				}
			}
			t.Fatalf("permutation %d (seed %d): customers differ: got %d, want %d", i, seed, len(got), len(want))
		}
	}
}

// checkLifecycleCoverage guards the property test against a generator that
// stopped producing the situations it is meant to exercise.
func checkLifecycleCoverage(t *testing.T, ds []domaintest.Delivery, states map[domain.CustomerKey]*domain.CustomerState) {
	t.Helper()
	types := map[string]bool{}
	for _, d := range ds {
		types[d.Type] = true
	}
	for _, typ := range []string{
		"customer.created", "customer.deleted", "checkout.session.completed", "payment_intent.succeeded",
		"customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
		"customer.subscription.paused", "customer.subscription.resumed", "customer.subscription.trial_will_end",
		"customer.subscription.pending_update_applied",
		"invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed",
		"charge.refunded", "charge.dispute.created", "charge.dispute.closed", "invoice_payment.paid",
	} {
		if !types[typ] {
			t.Errorf("the lifecycles have no %s event", typ)
		}
	}
	var entitled, free, deleted int
	for _, s := range states {
		switch {
		case s.Customer.Deleted:
			deleted++
		case s.Entitled && s.AccessUntil != nil:
			entitled++
		case !s.Entitled:
			free++
		}
	}
	if entitled == 0 || free == 0 || deleted == 0 {
		t.Errorf("customers: %d entitled, %d free, %d deleted; want some of each", entitled, free, deleted)
	}
}

// In realistic lifecycles delivered in order, the snapshot each subscription
// keeps is the one its latest event sent: the convergence key agrees with
// Stripe's own order, same-second ties included.
func TestFoldKeepsLatestSubscriptionSnapshot(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(7, 7))
	deliveries := domaintest.Lifecycles(rng, 100)
	states, err := domaintest.Replay(payloads(deliveries), nil)
	if err != nil {
		t.Fatal(err)
	}
	latest := map[string]string{}
	for _, d := range deliveries {
		if env, _ := domain.ParseEnvelope(d.Payload); env.ObjectType == "subscription" {
			latest[env.ObjectID] = d.EventID
		}
	}
	for _, st := range states {
		for id, sub := range st.Subscriptions {
			if sub.LastEventID != latest[id] {
				t.Errorf("subscription %s keeps event %s (%s); its latest event is %s", id, sub.LastEventID, sub.Status, latest[id])
			}
		}
	}
}

// TestInvoicePaymentMarksPaid: an invoice_payment.paid marks its invoice
// paid forever, in any order with the invoice's snapshots, as the only paid
// signal (access_until comes from it) and beside invoice.paid.
func TestInvoicePaymentMarksPaid(t *testing.T) {
	t.Parallel()
	sub := domain.Fact{EventID: "evt_sub", Created: at(100), CustomerID: "cus_1", Subscription: &domain.Subscription{
		ID: "sub_1", CustomerID: "cus_1", Status: "active", CurrentPeriodEnd: ts(5000), LastEventID: "evt_sub", LastEventCreated: at(100)}}
	invoice := func(id, status string, created int64, paidAt *time.Time) domain.Fact {
		return domain.Fact{EventID: id, Created: at(created), CustomerID: "cus_1", Invoice: &domain.Invoice{
			ID: "in_1", CustomerID: "cus_1", SubscriptionID: "sub_1", Status: status, AmountDue: 2900, PaidAt: paidAt,
			PaidPeriodStart: ts(100), PaidPeriodEnd: ts(5000), LastEventID: id, LastEventCreated: at(created)}}
	}
	payment := func(id string, amount int64, created int64) domain.Fact {
		return domain.Fact{EventID: id, Created: at(created), CustomerID: "cus_1", InvoicePayment: &domain.InvoicePayment{
			ID: "inpay_" + id, InvoiceID: "in_1", AmountPaid: amount, Currency: "usd", PaidAt: ts(created), LastEventID: id, LastEventCreated: at(created)}}
	}
	tests := []struct {
		name  string
		facts []domain.Fact
		check func(domain.Invoice) bool
	}{
		{"no snapshot yet", []domain.Fact{sub, payment("evt_pay1", 1000, 120), payment("evt_pay2", 2900, 130)},
			func(inv domain.Invoice) bool {
				return inv.Status == "paid" && inv.SnapshotStatus == "" && inv.LastEventID == "" && inv.LastEventCreated.Equal(at(130)) &&
					inv.AmountPaid == 2900 && inv.PaidAt.Equal(at(120)) && inv.CustomerID == "cus_1"
			}},
		{"only paid signal", []domain.Fact{sub, invoice("evt_draft", "draft", 100, nil), invoice("evt_open", "open", 110, nil), payment("evt_pay", 2900, 120)},
			func(inv domain.Invoice) bool {
				return inv.Status == "paid" && inv.SnapshotStatus == "open" && inv.AmountPaid == 2900 && inv.PaidAt.Equal(at(120)) &&
					inv.LastEventID == "evt_open" && inv.Payment.ID == "inpay_evt_pay"
			}},
		{"beside invoice.paid", []domain.Fact{sub, invoice("evt_open", "open", 110, nil), payment("evt_pay", 2900, 120), invoice("evt_paid", "paid", 121, ts(121))},
			func(inv domain.Invoice) bool {
				return inv.Status == "paid" && inv.SnapshotStatus == "paid" && inv.PaidAt.Equal(at(120)) && inv.LastEventID == "evt_paid"
			}},
		{"two payments", []domain.Fact{sub, invoice("evt_open", "open", 110, nil), payment("evt_pay1", 1000, 120), payment("evt_pay2", 2900, 130)},
			func(inv domain.Invoice) bool {
				return inv.Status == "paid" && inv.AmountPaid == 2900 && inv.PaidAt.Equal(at(120)) && inv.Payment.LastEventID == "evt_pay2"
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var want *domain.CustomerState
			for _, order := range permutations(len(tt.facts)) {
				s := &domain.CustomerState{}
				for _, i := range order {
					s.Apply(tt.facts[i])
				}
				inv := s.Invoices["in_1"]
				// Only a snapshot says what the invoice pays for.
				until := inv.LastEventID != "" && s.AccessUntil != nil && s.AccessUntil.Equal(at(5000))
				if !tt.check(inv) || !s.Entitled || until != (inv.LastEventID != "") {
					t.Fatalf("order %v: invoice %s, access until %v", order, dump(t, inv), s.AccessUntil)
				}
				if want == nil {
					want = s
				} else if !reflect.DeepEqual(s, want) {
					t.Fatalf("order %v differs:\n%s\nvs\n%s", order, dump(t, s), dump(t, want))
				}
			}
		})
	}
}

// permutations are every order of n items.
func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			out = append(out, slices.Insert(slices.Clone(p), i, n-1))
		}
	}
	return out
}
