// Package domaintest generates realistic Stripe event deliveries — whole
// customer lifecycles as signed-ready webhook payloads — for the tests of
// every package that consumes them.
package domaintest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// Plans is the LEDGER_PLANS the lifecycles are written against: three prices
// are mapped (pro first, so a subscription with a team and a pro item is
// pro), one is known by its lookup_key and one by its id alone.
const Plans = "price_pro_monthly=pro,price_team_monthly=team,price_team_yearly=team"

// APIVersions are the versions the lifecycles are rendered in: every one
// the decoder is tested with, from the 2023-10-16 shape (stripe-go v76's
// pin) to the shape of 2025-03-31.basil onwards (periods on items, an
// invoice's subscription under parent).
var APIVersions = domain.TestedAPIVersions

// APIVersionBasil is the first version with the newer shapes.
const APIVersionBasil = "2025-03-31.basil"

// itemPeriods reports whether version has the shape of 2025-03-31.basil and later.
func itemPeriods(version string) bool { return version >= APIVersionBasil }

// Delivery is one Stripe event as Stripe would POST it.
type Delivery struct {
	EventID    string
	Type       string
	Account    string // the Connect account, "" for the platform
	CustomerID string // the customer the event names; empty for disputes
	Created    time.Time
	Seq        int    // the order in which Stripe made the changes, same-second ones included
	Payload    []byte // the full event JSON
}

type price struct {
	id, product, lookupKey string
	amount                 int64
	yearly                 bool
}

var prices = []price{
	{id: "price_pro_monthly", product: "prod_pro", amount: 2900},
	{id: "price_team_monthly", product: "prod_team", amount: 9900},
	{id: "price_basic_monthly", product: "prod_basic", lookupKey: "basic", amount: 900},
	{id: "price_legacy_2019", product: "prod_legacy", amount: 1500},
}

// Prices of the lifecycle classes: a yearly plan and a yearly add-on.
var (
	teamYearly  = price{id: "price_team_yearly", product: "prod_team", amount: 99000, yearly: true}
	seatsYearly = price{id: "price_seats_yearly", product: "prod_seats", lookupKey: "seats", amount: 12000, yearly: true}
)

// Lifecycles returns the events of the given number of customers, each living
// through a random but realistic life: sign-up (with a trial, possibly paused
// at its end, or paid at once, the subscription created incomplete and
// activated in the same second), monthly renewals paid or failed and then
// recovered or given up on, plan changes with proration invoices, a second
// subscription, cancellation at period end or at once, customer deletion,
// refunds and disputes, and events of types the ledger does not decode; a
// quarter of the customers live through one of the Classes instead.
// Every subscription, invoice and charge names its customer; disputes, like
// Stripe's, name only their charge. The result is in created order (stable
// for same-second events) and depends only on rng.
func Lifecycles(rng *rand.Rand, customers int) []Delivery {
	g := &generator{rng: rng}
	for range customers {
		if g.chance(25) {
			g.classLife(Classes[g.rng.IntN(len(Classes))])
		} else {
			g.customerLife()
		}
	}
	return g.sorted()
}

// sorted is the events in created order, same-second ones in Stripe's order.
func (g *generator) sorted() []Delivery {
	slices.SortStableFunc(g.out, func(a, b Delivery) int { return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.Seq, b.Seq)) })
	return g.out
}

// Redeliver returns ds shuffled, with about a quarter of the deliveries
// repeated up to three times, as Stripe's at-least-once delivery may.
func Redeliver(rng *rand.Rand, ds []Delivery) []Delivery {
	out := slices.Clone(ds)
	for _, d := range ds {
		if rng.IntN(4) == 0 {
			for range 1 + rng.IntN(3) {
				out = append(out, d)
			}
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

const day = 24 * 60 * 60

type generator struct {
	rng     *rand.Rand
	out     []Delivery
	version string // of every event; "" picks one per event
	account string // the Connect account of the customer being generated
	cus     string // the customer being generated
	last    int64  // the latest created time of its events

	sent map[string]subscription // the last snapshot sent of each subscription
}

type subscription struct {
	id, itemID                                string
	price                                     price
	quantity                                  int64
	status                                    string
	created, start, end                       int64
	trialStart, trialEnd, canceledAt, endedAt int64
	cancelAtPeriodEnd                         bool
	sendInvoice                               bool // collection_method send_invoice, not charge_automatically
	latestInvoice                             string
	addOns                                    []addOn // items after the first, each with its own period
}

// addOn is a subscription item besides the first.
type addOn struct {
	id         string
	price      price
	quantity   int64
	start, end int64
}

// period is the subscription's current period: the item that ends last.
func (s *subscription) period() (start, end int64) {
	start, end = s.start, s.end
	for _, a := range s.addOns {
		if a.end > end {
			start, end = a.start, a.end
		}
	}
	return start, end
}

type line struct {
	id         string
	amount     int64
	start, end int64
	price      price
	proration  bool
}

type invoice struct {
	id, subID, chargeID, billingReason string
	status                             string
	created                            int64
	amountDue, amountPaid, attempts    int64
	periodStart, periodEnd             int64
	finalizedAt, paidAt, closedAt      int64
	lines                              []line
}

type charge struct {
	id, invoiceID string
	amount        int64
	at            int64
}

func (g *generator) newID(prefix string) string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, 14)
	for i := range b {
		b[i] = alphabet[g.rng.IntN(len(alphabet))]
	}
	return prefix + "_" + string(b)
}

func (g *generator) chance(percent int) bool { return g.rng.IntN(100) < percent }

// isV2Account reports whether the customer is a v2 Account
// ("customer-configured", stripe-go v84+'s customer_account) rather than a
// cus_ Customer.
func isV2Account(id string) bool { return strings.HasPrefix(id, "acct_") }

// v2AccountCustomer renders obj, a subscription or invoice of a v2 Account
// customer, as Stripe does: customer_account names it, customer is null.
// Charges carry no customer_account: theirs name no customer.
func v2AccountCustomer(obj map[string]any, cus string) {
	if !isV2Account(cus) || obj["customer"] != cus {
		return
	}
	obj["customer"] = nil
	switch obj["object"] {
	case "subscription", "invoice":
		obj["customer_account"] = cus
	}
}

func (g *generator) customerLife() {
	g.cus, g.last = g.newID("cus"), 0
	if strings.IndexByte("ABC", g.cus[4]) >= 0 { // about one customer in 20, without drawing from rng
		g.cus = "acct_" + g.cus[4:]
	}
	t := int64(1709251200) + g.rng.Int64N(60*day) // from March 2024
	email := fmt.Sprintf("%s@example.com", g.cus[4:12])
	g.emitCustomer("customer.created", t, email)
	var charges []charge
	subs := []*subscription{g.subscriptionLife(t+g.rng.Int64N(3600), &charges)}
	if g.chance(20) {
		subs = append(subs, g.subscriptionLife(t+g.rng.Int64N(40*day), &charges))
	}
	if g.chance(20) {
		email = fmt.Sprintf("billing+%s@example.com", g.cus[4:12])
		g.emitCustomer("customer.updated", t+g.rng.Int64N(g.last-t+1), email)
	}
	for _, c := range charges {
		g.refundsAndDisputes(c)
	}
	if g.chance(15) {
		// Deleting a customer cancels its subscriptions in the same second.
		at := g.last + day
		for _, s := range subs {
			if s.status != "canceled" {
				s.status, s.canceledAt, s.endedAt = "canceled", at, at
				g.emitSubscription("customer.subscription.deleted", at, *s)
			}
		}
		g.emitCustomer("customer.deleted", at, email)
	}
}

func addMonth(t int64) int64 { return time.Unix(t, 0).UTC().AddDate(0, 1, 0).Unix() }

// subscriptionLife emits the life of one subscription starting at t and
// returns its final state; paid charges are appended to charges.
func (g *generator) subscriptionLife(t int64, charges *[]charge) *subscription {
	s := &subscription{
		id: g.newID("sub"), itemID: g.newID("si"), price: prices[g.rng.IntN(len(prices))],
		quantity: 1 + g.rng.Int64N(3), created: t, start: t,
	}
	if g.chance(35) {
		s.status, s.trialStart, s.trialEnd, s.end = "trialing", t, t+14*day, t+14*day
		g.emitSubscription("customer.subscription.created", t, *s)
		g.invoiceLife(s, "subscription_create", t, t, t, s.end, 0, "pay", charges)
		g.maybeCheckout(s, t)
		g.emitSubscription("customer.subscription.trial_will_end", s.end-3*day, *s)
		if g.chance(25) {
			// No payment method at trial end: paused until the customer resumes.
			s.status = "paused"
			g.emitSubscription("customer.subscription.paused", s.end, *s)
			r := s.end + (1+g.rng.Int64N(20))*day
			s.status, s.start, s.end = "active", r, addMonth(r)
			g.invoiceLife(s, "subscription_create", r, r, r, s.end, s.price.amount*s.quantity, "pay", charges)
			g.emitSubscription("customer.subscription.resumed", r, *s)
		}
	} else {
		s.status, s.end = "incomplete", addMonth(t)
		g.emitSubscription("customer.subscription.created", t, *s)
		g.invoiceLife(s, "subscription_create", t, t, t, s.end, s.price.amount*s.quantity, "pay", charges)
		s.status = "active"
		g.emitSubscription("customer.subscription.updated", t, *s)
		g.maybeCheckout(s, t)
	}
	for range g.rng.IntN(5) {
		if s.status == "active" && g.chance(15) {
			g.changePlan(s, charges)
		}
		if !g.renew(s, charges) {
			return s
		}
	}
	// Cancellations come in the period's last two days, after any trial_will_end.
	c := s.end - 1 - g.rng.Int64N(2*day)
	switch n := g.rng.IntN(100); {
	case n < 25:
		s.cancelAtPeriodEnd, s.canceledAt = true, c
		g.emitSubscription("customer.subscription.updated", c, *s)
		s.status, s.endedAt = "canceled", s.end
		g.emitSubscription("customer.subscription.deleted", s.end, *s)
	case n < 40:
		s.status, s.canceledAt, s.endedAt = "canceled", c, c
		g.emitSubscription("customer.subscription.deleted", c, *s)
	}
	return s
}

// renew moves s into its next period; it reports false when dunning gave up
// and the subscription was canceled.
func (g *generator) renew(s *subscription, charges *[]charge) bool {
	p, prevStart := s.end, s.start
	s.status, s.start, s.end = "active", p, addMonth(p)
	outcome := "pay"
	switch n := g.rng.IntN(100); {
	case n < 15:
		outcome = "recover"
	case n < 22:
		outcome = "give up"
	}
	// The renewal invoice is created in the same second as the subscription moves on.
	return g.invoiceLifeWith(s, "subscription_cycle", p, prevStart, p, s.end, s.price.amount*s.quantity, outcome, charges,
		func() { g.emitSubscription("customer.subscription.updated", p, *s) })
}

func (g *generator) invoiceLife(s *subscription, reason string, at, periodStart, periodEnd, paidUntil, amount int64, outcome string, charges *[]charge) {
	g.invoiceLifeWith(s, reason, at, periodStart, periodEnd, paidUntil, amount, outcome, charges, func() {})
}

// invoiceLifeWith emits an invoice from draft to its outcome ("pay",
// "recover" or "give up"), calling created right after invoice.created. It
// reports whether the invoice was eventually paid.
func (g *generator) invoiceLifeWith(s *subscription, reason string, at, periodStart, periodEnd, paidUntil, amount int64, outcome string, charges *[]charge, created func()) bool {
	inv := invoice{
		id: g.newID("in"), subID: s.id, billingReason: reason, status: "draft", created: at,
		amountDue: amount, periodStart: periodStart, periodEnd: periodEnd,
		lines: []line{{id: g.newID("il"), amount: amount, start: s.start, end: paidUntil, price: s.price}},
	}
	s.latestInvoice = inv.id
	g.emitInvoice("invoice.created", at, inv)
	created()
	// Stripe finalizes the first invoice at once and renewal invoices about an hour later.
	fin := at
	if reason == "subscription_cycle" {
		fin = at + 3600
	}
	inv.status, inv.finalizedAt = "open", fin
	g.emitInvoice("invoice.finalized", fin, inv)
	switch outcome {
	case "recover":
		inv.attempts = 1
		g.emitInvoice("invoice.payment_failed", fin, inv)
		s.status = "past_due"
		g.emitSubscription("customer.subscription.updated", fin, *s)
		fin += (1 + g.rng.Int64N(5)) * day // the retry that succeeds
		inv.attempts = 2
	case "give up":
		for attempt := range int64(3) {
			inv.attempts = attempt + 1
			g.emitInvoice("invoice.payment_failed", fin+attempt*3*day, inv)
			if attempt == 0 {
				s.status = "past_due"
				g.emitSubscription("customer.subscription.updated", fin, *s)
			}
		}
		end := fin + 7*day
		inv.closedAt = end
		if g.chance(50) {
			inv.status = "uncollectible"
			g.emitInvoice("invoice.marked_uncollectible", end, inv)
		} else {
			inv.status = "void"
			g.emitInvoice("invoice.voided", end, inv)
		}
		s.status, s.canceledAt, s.endedAt = "canceled", end, end
		g.emitSubscription("customer.subscription.deleted", end, *s)
		return false
	default:
		inv.attempts = 1
	}
	paid := fin + g.rng.Int64N(6)
	inv.status, inv.paidAt, inv.amountPaid = "paid", paid, amount
	if amount > 0 {
		inv.chargeID = g.newID("ch")
		*charges = append(*charges, charge{id: inv.chargeID, invoiceID: inv.id, amount: amount, at: paid})
	}
	types := []string{"invoice.paid", "invoice.payment_succeeded"}
	if amount > 0 && g.invoicePayments() {
		types = append(types, "invoice_payment.paid")
		if g.chance(25) {
			types = types[2:] // an endpoint that enabled only invoice_payment.paid: the invoice's last snapshot stays open
		}
	}
	g.rng.Shuffle(len(types), func(i, j int) { types[i], types[j] = types[j], types[i] })
	for _, typ := range types {
		if typ == "invoice_payment.paid" {
			g.emitInvoicePayment(paid, inv)
		} else {
			g.emitInvoice(typ, paid, inv)
		}
	}
	if outcome == "recover" {
		s.status = "active"
		g.emitSubscription("customer.subscription.updated", paid, *s)
	}
	if amount > 0 && g.chance(30) {
		g.emitPaymentIntent(paid, inv)
	}
	return true
}

// changePlan moves s to another price mid-period and bills the proration.
func (g *generator) changePlan(s *subscription, charges *[]charge) {
	old := s.price
	for s.price == old {
		s.price = prices[g.rng.IntN(len(prices))]
	}
	m := s.start + 1 + g.rng.Int64N(s.end-s.start-1)
	typ := "customer.subscription.updated"
	if g.chance(30) {
		typ = "customer.subscription.pending_update_applied"
	}
	g.emitSubscription(typ, m, *s)
	frac := func(amount int64) int64 { return amount * s.quantity * (s.end - m) / (s.end - s.start) }
	credit, debit := frac(old.amount), frac(s.price.amount)
	inv := invoice{
		id: g.newID("in"), subID: s.id, billingReason: "subscription_update", status: "draft", created: m,
		amountDue: max(debit-credit, 0), periodStart: m, periodEnd: m,
		lines: []line{
			{id: g.newID("il"), amount: -credit, start: m, end: s.end, price: old, proration: true},
			{id: g.newID("il"), amount: debit, start: m, end: s.end, price: s.price, proration: true},
		},
	}
	g.emitInvoice("invoice.created", m, inv)
	inv.status, inv.finalizedAt = "open", m
	g.emitInvoice("invoice.finalized", m, inv)
	paid := m + 1
	inv.status, inv.paidAt, inv.attempts, inv.amountPaid = "paid", paid, 1, inv.amountDue
	if inv.amountDue > 0 {
		inv.chargeID = g.newID("ch")
		*charges = append(*charges, charge{id: inv.chargeID, invoiceID: inv.id, amount: inv.amountDue, at: paid})
	}
	g.emitInvoice("invoice.paid", paid, inv)
}

func (g *generator) refundsAndDisputes(c charge) {
	if g.chance(12) {
		at := c.at + (1+g.rng.Int64N(10))*day
		if g.chance(50) {
			g.emitCharge(at, c, c.amount/2)
			at += day
		}
		g.emitCharge(at, c, c.amount)
	}
	if g.chance(6) {
		d := g.newID("dp")
		at := c.at + (5+g.rng.Int64N(20))*day
		g.emitDispute(at, d, c, "needs_response")
		g.emitDispute(at+(20+g.rng.Int64N(40))*day, d, c, []string{"won", "lost"}[g.rng.IntN(2)])
	}
}

func (g *generator) maybeCheckout(s *subscription, at int64) {
	if !g.chance(50) {
		return
	}
	id := g.newID("cs_test")
	g.emit("checkout.session.completed", at, func(bool) map[string]any {
		return map[string]any{
			"id": id, "object": "checkout.session", "customer": g.cus, "subscription": s.id,
			"mode": "subscription", "status": "complete", "payment_status": "paid",
			"currency": "usd", "amount_total": s.price.amount * s.quantity, "created": at,
			"livemode": false, "metadata": map[string]any{},
		}
	})
}

// emit renders the event in the generator's API version (or one chosen at
// random) and records it. previous, when set, renders the object as it was
// before: the event's data.previous_attributes are the top-level attributes
// that differ, with their old values, as Stripe sends them on *.updated.
func (g *generator) emit(typ string, at int64, object func(basil bool) map[string]any) {
	g.emitChange(typ, at, object, nil)
}

func (g *generator) emitChange(typ string, at int64, object, previous func(basil bool) map[string]any) {
	version := g.version
	if version == "" {
		version = APIVersions[g.rng.IntN(len(APIVersions))]
	}
	id, obj := g.newID("evt"), object(itemPeriods(version))
	v2AccountCustomer(obj, g.cus)
	data := map[string]any{"object": obj}
	if previous != nil {
		old, changed := previous(itemPeriods(version)), map[string]any{}
		v2AccountCustomer(old, g.cus)
		for k, v := range old {
			if !reflect.DeepEqual(v, obj[k]) {
				changed[k] = v
			}
		}
		for k := range obj {
			if _, ok := old[k]; !ok {
				changed[k] = nil
			}
		}
		data["previous_attributes"] = changed
	}
	event := map[string]any{
		"id": id, "object": "event", "api_version": version, "created": at, "type": typ,
		"livemode": false, "pending_webhooks": 1,
		"request": map[string]any{"id": nil, "idempotency_key": nil},
		"data":    data,
	}
	if g.account != "" {
		event["account"] = g.account
	}
	payload, err := json.Marshal(event)
	if err != nil {
		panic(err) // maps of plain values always marshal
	}
	g.last = max(g.last, at)
	customerID, _ := obj["customer"].(string)
	if obj["object"] == "customer" {
		if isV2Account(g.cus) {
			return // a v2 Account's customer sends v2.core.account events, not customer.*
		}
		customerID = g.cus
	}
	if customerID == "" {
		customerID, _ = obj["customer_account"].(string)
	}
	g.out = append(g.out, Delivery{
		EventID: id, Type: typ, Account: g.account, CustomerID: customerID, Created: time.Unix(at, 0).UTC(),
		Seq: len(g.out), Payload: payload,
	})
}

func (g *generator) emitCustomer(typ string, at int64, email string) {
	cus := g.cus
	g.emit(typ, at, func(bool) map[string]any {
		return map[string]any{
			"id": cus, "object": "customer", "email": email, "name": "Customer " + cus[4:10],
			"created": at, "currency": "usd", "delinquent": false, "livemode": false,
			"invoice_settings": map[string]any{"default_payment_method": nil}, "metadata": map[string]any{},
		}
	})
}

func priceObject(p price) map[string]any {
	interval := "month"
	if p.yearly {
		interval = "year"
	}
	return map[string]any{
		"id": p.id, "object": "price", "active": true, "currency": "usd", "lookup_key": orNull(p.lookupKey),
		"product": p.product, "type": "recurring", "unit_amount": p.amount, "billing_scheme": "per_unit",
		"recurring": map[string]any{"interval": interval, "interval_count": 1, "usage_type": "licensed"},
	}
}

// emitSubscription sends a snapshot of s; a customer.subscription.updated
// carries previous_attributes against the snapshot of s sent last.
func (g *generator) emitSubscription(typ string, at int64, s subscription) {
	s.addOns = slices.Clone(s.addOns)
	var previous func(bool) map[string]any
	if old, ok := g.sent[s.id]; ok && typ == "customer.subscription.updated" {
		previous = func(basil bool) map[string]any { return g.subscriptionObject(old, basil) }
	}
	if g.sent == nil {
		g.sent = map[string]subscription{}
	}
	g.sent[s.id] = s
	g.emitChange(typ, at, func(basil bool) map[string]any { return g.subscriptionObject(s, basil) }, previous)
}

// subscriptionObject renders s as the data.object of an event.
func (g *generator) subscriptionObject(s subscription, basil bool) map[string]any {
	cus := g.cus
	item := map[string]any{
		"id": s.itemID, "object": "subscription_item", "created": s.created, "quantity": s.quantity,
		"subscription": s.id, "price": priceObject(s.price), "metadata": map[string]any{},
	}
	items := []any{item}
	for _, a := range s.addOns {
		addOn := map[string]any{
			"id": a.id, "object": "subscription_item", "created": s.created, "quantity": a.quantity,
			"subscription": s.id, "price": priceObject(a.price), "metadata": map[string]any{},
		}
		if basil {
			addOn["current_period_start"], addOn["current_period_end"] = a.start, a.end
		}
		items = append(items, addOn)
	}
	collection, daysUntilDue := "charge_automatically", any(nil)
	if s.sendInvoice {
		collection, daysUntilDue = "send_invoice", 30
	}
	obj := map[string]any{
		"id": s.id, "object": "subscription", "customer": cus, "status": s.status,
		"cancel_at_period_end": s.cancelAtPeriodEnd, "canceled_at": orNullTime(s.canceledAt),
		"ended_at": orNullTime(s.endedAt), "trial_start": orNullTime(s.trialStart), "trial_end": orNullTime(s.trialEnd),
		"created": s.created, "start_date": s.created, "billing_cycle_anchor": s.start,
		"collection_method": collection, "days_until_due": daysUntilDue, "currency": "usd", "livemode": false, "metadata": map[string]any{},
		"latest_invoice": orNull(s.latestInvoice), "cancel_at": nil,
		"items": map[string]any{
			"object": "list", "data": items, "has_more": false, "total_count": len(items),
			"url": "/v1/subscription_items?subscription=" + s.id,
		},
	}
	start, end := s.period()
	if s.cancelAtPeriodEnd {
		obj["cancel_at"] = end
	}
	if basil {
		item["current_period_start"], item["current_period_end"] = s.start, s.end
	} else {
		obj["current_period_start"], obj["current_period_end"] = start, end
		obj["quantity"] = s.quantity
	}
	return obj
}

func (g *generator) emitInvoice(typ string, at int64, inv invoice) {
	cus := g.cus
	g.emit(typ, at, func(basil bool) map[string]any {
		var lines []any
		for _, l := range inv.lines {
			item := map[string]any{
				"id": l.id, "object": "line_item", "amount": l.amount, "currency": "usd", "quantity": 1,
				"period": map[string]any{"start": l.start, "end": l.end}, "livemode": false, "metadata": map[string]any{},
			}
			if basil {
				item["parent"] = map[string]any{
					"type": "subscription_item_details", "invoice_item_details": nil,
					"subscription_item_details": map[string]any{
						"subscription": inv.subID, "subscription_item": nil, "proration": l.proration,
						"invoice_item": nil, "proration_details": map[string]any{"credited_items": nil},
					},
				}
				item["pricing"] = map[string]any{
					"type": "price_details", "price_details": map[string]any{"price": l.price.id, "product": l.price.product},
				}
			} else {
				item["type"] = "subscription"
				if l.proration {
					item["type"] = "invoiceitem"
				}
				item["subscription"], item["proration"], item["price"] = inv.subID, l.proration, priceObject(l.price)
			}
			lines = append(lines, item)
		}
		obj := map[string]any{
			"id": inv.id, "object": "invoice", "customer": cus, "status": inv.status,
			"billing_reason": inv.billingReason, "collection_method": "charge_automatically", "currency": "usd",
			"amount_due": inv.amountDue, "amount_paid": inv.amountPaid, "amount_remaining": inv.amountDue - inv.amountPaid,
			"attempt_count": inv.attempts, "attempted": inv.attempts > 0, "created": inv.created,
			"period_start": inv.periodStart, "period_end": inv.periodEnd, "livemode": false, "metadata": map[string]any{},
			"status_transitions": map[string]any{
				"finalized_at": orNullTime(inv.finalizedAt), "paid_at": orNullTime(inv.paidAt),
				"marked_uncollectible_at": nil, "voided_at": nil,
			},
			"lines": map[string]any{
				"object": "list", "data": lines, "has_more": false, "total_count": len(lines),
				"url": "/v1/invoices/" + inv.id + "/lines",
			},
		}
		switch inv.status {
		case "uncollectible":
			obj["status_transitions"].(map[string]any)["marked_uncollectible_at"] = inv.closedAt
		case "void":
			obj["status_transitions"].(map[string]any)["voided_at"] = inv.closedAt
		}
		if basil {
			obj["parent"] = map[string]any{
				"type": "subscription_details", "quote_details": nil,
				"subscription_details": map[string]any{"subscription": inv.subID, "metadata": map[string]any{}},
			}
		} else {
			obj["subscription"], obj["charge"], obj["paid"] = inv.subID, orNull(inv.chargeID), inv.status == "paid"
		}
		return obj
	})
}

// invoicePayments reports whether the generator renders events in versions
// that have InvoicePayments (2025-03-31.basil and later), all or some.
func (g *generator) invoicePayments() bool { return g.version == "" || itemPeriods(g.version) }

// emitInvoicePayment emits invoice_payment.paid for inv, paid at at, in a
// version that has it (stripe-go v82's InvoicePayment): it names the
// invoice, by id as webhooks do, and not the customer.
func (g *generator) emitInvoicePayment(at int64, inv invoice) {
	id, pi := g.newID("inpay"), g.newID("pi")
	if g.version == "" {
		basil := APIVersions[slices.Index(APIVersions, APIVersionBasil):]
		g.version = basil[g.rng.IntN(len(basil))]
		defer func() { g.version = "" }()
	}
	g.emit("invoice_payment.paid", at, func(bool) map[string]any {
		return map[string]any{
			"id": id, "object": "invoice_payment", "amount_paid": inv.amountPaid, "amount_requested": inv.amountDue,
			"created": inv.finalizedAt, "currency": "usd", "invoice": inv.id, "is_default": true, "livemode": false,
			"payment":            map[string]any{"type": "payment_intent", "payment_intent": pi},
			"status":             "paid",
			"status_transitions": map[string]any{"canceled_at": nil, "paid_at": at},
		}
	})
}

func (g *generator) emitPaymentIntent(at int64, inv invoice) {
	id, cus := g.newID("pi"), g.cus
	g.emit("payment_intent.succeeded", at, func(bool) map[string]any {
		return map[string]any{
			"id": id, "object": "payment_intent", "amount": inv.amountPaid, "amount_received": inv.amountPaid,
			"currency": "usd", "customer": cus, "latest_charge": inv.chargeID, "status": "succeeded", "created": at,
		}
	})
}

func (g *generator) emitCharge(at int64, c charge, refunded int64) {
	cus := g.cus
	g.emit("charge.refunded", at, func(basil bool) map[string]any {
		obj := map[string]any{
			"id": c.id, "object": "charge", "amount": c.amount, "amount_captured": c.amount,
			"amount_refunded": refunded, "refunded": refunded == c.amount, "captured": true, "paid": true,
			"currency": "usd", "customer": cus, "status": "succeeded", "created": c.at, "livemode": false,
		}
		if !basil {
			obj["invoice"] = c.invoiceID
		}
		return obj
	})
}

func (g *generator) emitDispute(at int64, id string, c charge, status string) {
	typ := "charge.dispute.created"
	if status != "needs_response" {
		typ = "charge.dispute.closed"
	}
	g.emit(typ, at, func(bool) map[string]any {
		return map[string]any{
			"id": id, "object": "dispute", "amount": c.amount, "charge": c.id, "currency": "usd",
			"reason": "fraudulent", "status": status, "is_charge_refundable": false, "created": at, "livemode": false,
		}
	})
}

func orNull(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func orNullTime(t int64) any {
	if t == 0 {
		return nil
	}
	return t
}
