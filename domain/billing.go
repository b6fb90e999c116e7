package domain

import (
	"cmp"
	"time"
)

// The records below are snapshots: each is what one event said about one
// Stripe object, stamped with that event's id and created time. A customer's
// state keeps, per object, the snapshot that compares greatest under the
// object's key (DESIGN §4; subscriptions: see subscriptions.go), so every
// field a comparison needs is stored on the record and a state re-loaded from
// rows folds exactly like one kept in memory. Account is the Connect account
// the event came from, "" for the platform: (Account, ID) names an object.
//
// Optional Stripe timestamps are *time.Time, nil when Stripe sent null or 0;
// all times are UTC with one-second resolution.

// Customer is a Stripe customer as its customer.* events describe it.
type Customer struct {
	Account string
	ID      string
	Email   string
	Name    string
	Deleted bool // customer.deleted was seen; terminal

	// The event the fields come from; empty until a customer.* event is seen.
	LastEventID      string
	LastEventCreated time.Time
}

// Subscription is a Stripe subscription. Price, product, lookup key,
// quantity and plan come from its plan item: the first item, in LEDGER_PLANS
// order, whose price is mapped; else its first item (DESIGN §4).
type Subscription struct {
	Account            string
	ID                 string
	CustomerID         string
	Status             string
	PriceID            string
	ProductID          string
	LookupKey          string // the price's lookup_key
	Plan               string // see Plans.Plan
	Quantity           int64
	CurrentPeriodStart *time.Time
	CurrentPeriodEnd   *time.Time
	CancelAtPeriodEnd  bool
	CancelAt           *time.Time
	CanceledAt         *time.Time
	EndedAt            *time.Time
	TrialEnd           *time.Time
	CollectionMethod   string // charge_automatically (Stripe charges the payment method) or send_invoice (the customer pays each invoice)
	LatestInvoiceID    string
	Items              string // every item's price and quantity, "price_a*1 price_b*2": what a change of items changes
	Deleted            bool   // customer.subscription.deleted was seen; terminal

	// Previous is what a customer.subscription.updated event's
	// data.previous_attributes said the changed attributes were before it,
	// for the attributes of chainAttributes, in their canonical text
	// (Subscription.attribute); nil for other events.
	Previous map[string]string `json:",omitempty"`

	LastEventID      string
	LastEventCreated time.Time

	// Snapshots is what the fold chose this snapshot from; empty on a
	// snapshot fresh from Decode.
	Snapshots SubscriptionSnapshots `json:",omitzero"`
}

// SubscriptionSnapshots are the snapshots of one subscription that decide
// which one is current, order-independently (DESIGN §4): every snapshot of
// the latest second seen, and every snapshot of the second before that one,
// whose winner anchors the change chain of the latest. Once the subscription
// is deleted, only its deletions count. Each list is sorted by event id and
// its snapshots carry no Snapshots of their own.
type SubscriptionSnapshots struct {
	Latest []Subscription `json:",omitempty"` // empty when the latest second has only the current snapshot
	Before []Subscription `json:",omitempty"`
}

// Entitled reports whether the subscription grants access: not deleted and
// active, trialing or past_due.
func (s Subscription) Entitled() bool {
	if s.Deleted {
		return false
	}
	switch s.Status {
	case "active", "trialing", "past_due":
		return true
	}
	return false
}

// Invoice is a Stripe invoice: its kept snapshot, marked paid by the
// invoice payments seen (Payment). Status, AmountPaid and PaidAt are what
// the invoice shows: once a Payment is seen, "paid", the greater amount
// paid and the earlier paid time of the snapshot's and the payment's.
type Invoice struct {
	Account        string
	ID             string
	CustomerID     string
	SubscriptionID string // empty for an invoice outside any subscription
	Status         string
	SnapshotStatus string // once a Payment is seen, the status of the kept snapshot, which the fold compares; else ""
	AmountDue      int64
	AmountPaid     int64
	Currency       string
	PeriodStart    *time.Time // for a renewal, the period that just ended
	PeriodEnd      *time.Time
	PaidAt         *time.Time
	AttemptCount   int64 // the highest attempt count seen, whichever snapshot is kept

	// Payment merges the invoice_payment.paid events (API 2025-03-31+) of
	// the invoice, which mark it paid forever whatever its snapshots say
	// (DESIGN §4); nil when none was seen.
	Payment *InvoicePayment `json:",omitempty"`

	// The period the invoice pays for: the span of its subscription lines;
	// nil when no line is a subscription's (never the invoice's own period,
	// which for a renewal is the period that just ended).
	PaidPeriodStart *time.Time
	PaidPeriodEnd   *time.Time

	LastEventID      string
	LastEventCreated time.Time
}

// InvoicePayment is a paid payment of an invoice, as invoice_payment.paid
// (API 2025-03-31+) describes it. On an Invoice it merges every payment
// seen, order-independently: the greatest amount paid, the earliest paid
// time, and the id and event of the payment seen last (by event created,
// then event id).
type InvoicePayment struct {
	Account    string
	ID         string
	InvoiceID  string
	CustomerID string // empty unless the event's invoice came expanded
	AmountPaid int64
	Currency   string
	PaidAt     *time.Time

	LastEventID      string
	LastEventCreated time.Time
}

// merge is the payment that merges p and q (either may be nil).
func (p *InvoicePayment) merge(q *InvoicePayment) *InvoicePayment {
	if p == nil || q == nil {
		return cmp.Or(p, q)
	}
	m := *p
	if cmp.Or(q.LastEventCreated.Compare(p.LastEventCreated), cmp.Compare(q.LastEventID, p.LastEventID)) > 0 {
		m = *q
	}
	m.AmountPaid = max(p.AmountPaid, q.AmountPaid)
	m.PaidAt = earlier(p.PaidAt, q.PaidAt)
	return &m
}

// withPayment is inv marked paid by p (nil: inv unchanged).
func (inv Invoice) withPayment(p *InvoicePayment) Invoice {
	if p == nil {
		return inv
	}
	inv.SnapshotStatus = inv.snapshotStatus()
	inv.Payment = inv.Payment.merge(p)
	inv.Status = "paid"
	inv.AmountPaid = max(inv.AmountPaid, inv.Payment.AmountPaid)
	inv.PaidAt = earlier(inv.PaidAt, inv.Payment.PaidAt)
	return inv
}

// snapshotStatus is the status of inv's snapshot: SnapshotStatus, or
// Status for an invoice no payment marked (one made by hand, say).
func (inv Invoice) snapshotStatus() string {
	if inv.SnapshotStatus == "" && inv.Payment == nil {
		return inv.Status
	}
	return inv.SnapshotStatus
}

// earlier is the earlier of two optional times, nil only when both are.
func earlier(a, b *time.Time) *time.Time {
	if a == nil || (b != nil && b.Before(*a)) {
		return b
	}
	return a
}

// Charge is a Stripe charge as charge.refunded describes it.
type Charge struct {
	Account        string
	ID             string
	CustomerID     string
	InvoiceID      string // absent from API 2025-03-31 and later payloads
	Currency       string
	Amount         int64
	AmountRefunded int64
	Refunded       bool

	LastEventID      string
	LastEventCreated time.Time
}

// Dispute is a Stripe dispute on a charge.
type Dispute struct {
	Account    string
	ID         string
	CustomerID string // Stripe's disputes name only the charge: empty unless the charge was expanded
	ChargeID   string
	Status     string
	Currency   string
	Amount     int64

	LastEventID      string
	LastEventCreated time.Time
}

// Lifecycle order of statuses; unknown statuses rank lowest.
var (
	subscriptionStatusRank = map[string]int{
		"incomplete": 1, "trialing": 2, "active": 3, "past_due": 4, "unpaid": 5,
		"paused": 6, "incomplete_expired": 7, "canceled": 8,
	}
	invoiceStatusRank = map[string]int{
		"draft": 1, "open": 2, "uncollectible": 3, "void": 4, "paid": 5,
	}
	disputeClosed = map[string]bool{"won": true, "lost": true, "warning_closed": true}
)

// A deleted customer or subscription outranks every live snapshot, so a
// late-arriving older snapshot never revives it.
func compareCustomers(a, b Customer) int {
	return cmp.Or(
		compareBools(a.Deleted, b.Deleted),
		a.LastEventCreated.Compare(b.LastEventCreated),
		cmp.Compare(a.LastEventID, b.LastEventID),
	)
}

// Snapshots by their own status first: paid is forever, and Stripe's
// invoice statuses only move up the rank. An invoice known only from its
// payments (no snapshot yet) loses to any snapshot.
func compareInvoices(a, b Invoice) int {
	return cmp.Or(
		compareBools(a.LastEventID != "", b.LastEventID != ""),
		cmp.Compare(invoiceStatusRank[a.snapshotStatus()], invoiceStatusRank[b.snapshotStatus()]),
		a.LastEventCreated.Compare(b.LastEventCreated),
		cmp.Compare(a.LastEventID, b.LastEventID),
	)
}

// Refunds only accumulate.
func compareCharges(a, b Charge) int {
	return cmp.Or(
		cmp.Compare(a.AmountRefunded, b.AmountRefunded),
		a.LastEventCreated.Compare(b.LastEventCreated),
		cmp.Compare(a.LastEventID, b.LastEventID),
	)
}

func compareDisputes(a, b Dispute) int {
	return cmp.Or(
		compareBools(disputeClosed[a.Status], disputeClosed[b.Status]),
		a.LastEventCreated.Compare(b.LastEventCreated),
		cmp.Compare(a.LastEventID, b.LastEventID),
	)
}

func compareBools(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	default:
		return -1
	}
}

func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
