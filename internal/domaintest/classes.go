package domaintest

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// Class is a kind of lifecycle the convergence rules must get right
// (DESIGN §4): each moves a subscription's period backwards, ties snapshots
// within one second, spreads the plan over several items or shares a
// customer id between Connect accounts.
type Class string

// The lifecycle classes.
const (
	// A 90-day trial ended early (trial_end=now): the period ends sooner;
	// the first renewal is never paid: past_due, then unpaid.
	ClassTrialEndedEarly Class = "trial_ended_early"
	// A yearly price changed to a monthly one (the period restarts and ends
	// sooner) and to paying by invoice (collection_method send_invoice); the
	// first monthly invoice is never paid: past_due, then unpaid.
	ClassIntervalDowngrade Class = "interval_downgrade"
	// A yearly add-on item removed from a monthly subscription (flexible
	// billing: the period ends sooner), then canceled at period end.
	ClassItemRemoved Class = "item_removed"
	// A renewal payment fails and a retry succeeds in the same second:
	// past_due and active again in one second.
	ClassSameSecondRecovery Class = "same_second_recovery"
	// Team, pro and a yearly seats add-on; the team item becomes basic and
	// the add-on goes: the plan is pro throughout (LEDGER_PLANS lists pro first).
	ClassMultiItem Class = "multi_item"
	// The same customer id on the platform (active pro) and on a connected
	// account (canceled): two customers.
	ClassConnectShared Class = "connect_shared"
)

// Classes are every lifecycle class.
var Classes = []Class{
	ClassTrialEndedEarly, ClassIntervalDowngrade, ClassItemRemoved, ClassSameSecondRecovery, ClassMultiItem, ClassConnectShared,
}

// ConnectAccount is the connected account of ClassConnectShared lives.
const ConnectAccount = "acct_1ConnectShared"

// Life returns the events of one customer (two for ClassConnectShared)
// living through class, every event rendered in version, in created order
// (same-second ones in Stripe's order). It depends only on rng.
func Life(rng *rand.Rand, class Class, version string) []Delivery {
	g := &generator{rng: rng, version: version}
	g.classLife(class)
	return g.sorted()
}

func addYear(t int64) int64 { return time.Unix(t, 0).UTC().AddDate(1, 0, 0).Unix() }

func (g *generator) classLife(class Class) {
	g.cus, g.account, g.last = g.newID("cus"), "", 0
	t := int64(1709251200) + g.rng.Int64N(60*day)
	g.emitCustomer("customer.created", t, g.cus[4:12]+"@example.com")
	var charges []charge
	s := &subscription{id: g.newID("sub"), itemID: g.newID("si"), quantity: 1, created: t, start: t}
	switch class {
	case ClassTrialEndedEarly:
		s.price = prices[0]
		s.status, s.trialStart, s.trialEnd, s.end = "trialing", t, t+90*day, t+90*day
		g.emitSubscription("customer.subscription.created", t, *s)
		g.invoiceLife(s, "subscription_create", t, t, t, s.end, 0, "pay", &charges)
		e := t + (5+g.rng.Int64N(15))*day // even the renewal after it ends before the trial would have
		s.status, s.trialEnd, s.start, s.end = "active", e, e, addMonth(e)
		g.invoiceLifeWith(s, "subscription_cycle", e, e, e, s.end, s.price.amount, "pay", &charges,
			func() { g.emitSubscription("customer.subscription.updated", e, *s) })
		g.renewUnpaid(s)
	case ClassIntervalDowngrade:
		s.price, s.end = teamYearly, addYear(t)
		g.signUp(s, &charges)
		m := t + (20+g.rng.Int64N(60))*day
		s.price, s.start, s.end, s.sendInvoice = prices[0], m, addMonth(m), true // billing_cycle_anchor=now
		g.invoiceLifeWith(s, "subscription_update", m, m, m, s.end, s.price.amount, "pay", &charges,
			func() { g.emitSubscription("customer.subscription.updated", m, *s) })
		g.renewUnpaid(s)
	case ClassItemRemoved:
		s.price, s.end = prices[0], addMonth(t)
		s.addOns = []addOn{{id: g.newID("si"), price: seatsYearly, quantity: 5, start: t, end: addYear(t)}}
		g.signUp(s, &charges)
		m := t + 1 + g.rng.Int64N(10*day)
		s.addOns = nil
		g.emitSubscription("customer.subscription.updated", m, *s)
		c := m + 1 + g.rng.Int64N(10*day)
		s.cancelAtPeriodEnd, s.canceledAt = true, c
		g.emitSubscription("customer.subscription.updated", c, *s)
	case ClassSameSecondRecovery:
		s.price, s.end = prices[1], addMonth(t)
		g.signUp(s, &charges)
		g.renewRecoveredAtOnce(s, &charges)
	case ClassMultiItem:
		s.price, s.end = prices[1], addMonth(t)
		s.addOns = []addOn{
			{id: g.newID("si"), price: prices[0], quantity: 1, start: t, end: s.end},
			{id: g.newID("si"), price: seatsYearly, quantity: 3, start: t, end: addYear(t)},
		}
		g.signUp(s, &charges)
		m := t + 1 + g.rng.Int64N(10*day)
		s.price = prices[2] // team becomes basic
		g.emitSubscription("customer.subscription.updated", m, *s)
		s.addOns = s.addOns[:1] // the yearly seats go: the period ends sooner
		g.emitSubscription("customer.subscription.updated", m+1+g.rng.Int64N(day), *s)
	case ClassConnectShared:
		s.price, s.end = prices[0], addMonth(t)
		g.signUp(s, &charges)
		// The same customer id on a connected account, canceled there.
		g.account = ConnectAccount
		g.emitCustomer("customer.created", t, "connected-"+g.cus[4:12]+"@example.com")
		c := &subscription{id: g.newID("sub"), itemID: g.newID("si"), price: prices[1], quantity: 2, created: t, start: t, end: addMonth(t)}
		var connected []charge
		g.signUp(c, &connected)
		c.status, c.canceledAt, c.endedAt = "canceled", t+day, t+day
		g.emitSubscription("customer.subscription.deleted", t+day, *c)
		g.account = ""
	}
	for _, c := range charges {
		g.refundsAndDisputes(c)
	}
}

// signUp creates s incomplete and activates it in the same second, its
// first invoice paid.
func (g *generator) signUp(s *subscription, charges *[]charge) {
	t := s.created
	s.status = "incomplete"
	g.emitSubscription("customer.subscription.created", t, *s)
	g.invoiceLife(s, "subscription_create", t, t, t, s.end, s.price.amount*s.quantity, "pay", charges)
	s.status = "active"
	g.emitSubscription("customer.subscription.updated", t, *s)
}

// renewUnpaid moves s into its next period, whose invoice is never paid:
// past_due at the first failure (a later attempt needing 3-D Secure, one
// needing a new payment method), unpaid after the last, the invoice left open.
func (g *generator) renewUnpaid(s *subscription) {
	p, prevStart := s.end, s.start
	s.status, s.start, s.end = "active", p, addMonth(p)
	inv := invoice{
		id: g.newID("in"), subID: s.id, billingReason: "subscription_cycle", status: "draft", created: p,
		amountDue: s.price.amount * s.quantity, periodStart: prevStart, periodEnd: p,
		lines: []line{{id: g.newID("il"), amount: s.price.amount * s.quantity, start: s.start, end: s.end, price: s.price}},
	}
	s.latestInvoice = inv.id
	g.emitInvoice("invoice.created", p, inv)
	g.emitSubscription("customer.subscription.updated", p, *s)
	fin := p + 3600
	inv.status, inv.finalizedAt = "open", fin
	g.emitInvoice("invoice.finalized", fin, inv)
	for attempt, typ := range []string{"invoice.payment_failed", "invoice.payment_action_required", "invoice.payment_attempt_required", "invoice.payment_failed"} {
		inv.attempts = int64(attempt + 1)
		at := fin + int64(attempt)*3*day
		g.emitInvoice(typ, at, inv)
		switch attempt {
		case 0:
			s.status = "past_due"
			g.emitSubscription("customer.subscription.updated", at, *s)
		case 3:
			s.status = "unpaid"
			g.emitSubscription("customer.subscription.updated", at, *s)
		}
	}
}

// renewRecoveredAtOnce moves s into its next period; the renewal payment
// fails and a retry succeeds within the same second.
func (g *generator) renewRecoveredAtOnce(s *subscription, charges *[]charge) {
	p, prevStart := s.end, s.start
	s.status, s.start, s.end = "active", p, addMonth(p)
	amount := s.price.amount * s.quantity
	inv := invoice{
		id: g.newID("in"), subID: s.id, billingReason: "subscription_cycle", status: "draft", created: p,
		amountDue: amount, periodStart: prevStart, periodEnd: p,
		lines: []line{{id: g.newID("il"), amount: amount, start: s.start, end: s.end, price: s.price}},
	}
	s.latestInvoice = inv.id
	g.emitInvoice("invoice.created", p, inv)
	g.emitSubscription("customer.subscription.updated", p, *s)
	fin := p + 3600
	inv.status, inv.finalizedAt, inv.attempts = "open", fin, 1
	g.emitInvoice("invoice.finalized", fin, inv)
	g.emitInvoice("invoice.payment_failed", fin, inv)
	s.status = "past_due"
	g.emitSubscription("customer.subscription.updated", fin, *s)
	inv.status, inv.paidAt, inv.amountPaid, inv.attempts, inv.chargeID = "paid", fin, amount, 2, g.newID("ch")
	*charges = append(*charges, charge{id: inv.chargeID, invoiceID: inv.id, amount: amount, at: fin})
	g.emitInvoice("invoice.paid", fin, inv)
	s.status = "active"
	g.emitSubscription("customer.subscription.updated", fin, *s)
}

// StripeFinal is Stripe's own final state of the customers of ds: each
// customer's state folded from the last snapshot Stripe sent of each of its
// subscriptions (by Delivery.Seq) and from every other event, in the order
// Stripe made the changes. It is what a ledger that saw every event in
// order, whatever its rules, must end with.
func StripeFinal(ds []Delivery, plans domain.Plans) (map[domain.CustomerKey]*domain.CustomerState, error) {
	ordered := slices.SortedFunc(slices.Values(ds), func(a, b Delivery) int { return cmp.Compare(a.Seq, b.Seq) })
	type decoded struct {
		seq  int
		fact *domain.Fact
	}
	var all []decoded
	last := map[string]int{} // subscription id -> seq of its last snapshot
	var facts []*domain.Fact
	for _, d := range ordered {
		f, err := domain.ParseFact(d.Payload, plans)
		if err != nil {
			return nil, err
		}
		if f == nil {
			continue
		}
		if f.Subscription != nil {
			last[f.Subscription.ID] = d.Seq
		}
		all, facts = append(all, decoded{d.Seq, f}), append(facts, f)
	}
	ResolveInvoicePayments(facts)
	states := map[domain.CustomerKey]*domain.CustomerState{}
	for _, d := range all {
		f := d.fact
		if f.CustomerID == "" || (f.Subscription != nil && last[f.Subscription.ID] != d.seq) {
			continue
		}
		if states[f.Key()] == nil {
			states[f.Key()] = &domain.CustomerState{}
		}
		states[f.Key()].Apply(*f)
	}
	return states, nil
}
