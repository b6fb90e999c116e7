package domain

import (
	"cmp"
	"time"
)

// CustomerState is everything the ledger knows about one customer: the
// latest snapshot of the customer and of each of its objects, by id, and the
// entitlement derived from them. Folding the same set of facts in any order,
// with any duplicates, gives the same state (DESIGN §4).
//
// The zero CustomerState is empty and ready to use. A state re-built from
// stored rows folds like the one that was stored, provided every exported
// field was kept.
type CustomerState struct {
	Account       string // the Connect account, "" for the platform
	Customer      Customer
	Subscriptions map[string]Subscription
	Invoices      map[string]Invoice
	Charges       map[string]Charge
	Disputes      map[string]Dispute

	// Derived by Derive from the fields above.
	Plan        string     // the best entitled subscription's plan, FreePlan without one
	Entitled    bool       // some subscription is entitled (see Subscription.Entitled)
	AccessUntil *time.Time // the latest paid-for period end over paid invoices of entitled subscriptions, nil when none

	UpdatedAt time.Time // the latest created time of the facts applied, so that it too is order independent
}

// Apply folds a fact about the state's customer into s: each snapshot
// replaces the stored one of the same object only if it compares greater
// (DESIGN §4), then the entitlement is derived afresh.
func (s *CustomerState) Apply(f Fact) {
	if s.Subscriptions == nil {
		s.Subscriptions = map[string]Subscription{}
		s.Invoices = map[string]Invoice{}
		s.Charges = map[string]Charge{}
		s.Disputes = map[string]Dispute{}
	}
	if s.Customer.ID == "" {
		s.Account, s.Customer.Account, s.Customer.ID = f.Account, f.Account, f.CustomerID
	}
	if f.Created.After(s.UpdatedAt) {
		s.UpdatedAt = f.Created
	}
	switch {
	case f.Customer != nil:
		s.Customer = greater(s.Customer, *f.Customer, compareCustomers)
	case f.Subscription != nil:
		s.applySubscription(*f.Subscription)
	case f.Invoice != nil:
		old, seen := s.Invoices[f.Invoice.ID]
		inv := *f.Invoice
		if seen {
			inv = greater(old, inv, compareInvoices)
		}
		inv = inv.withPayment(old.Payment)
		inv.AttemptCount = max(old.AttemptCount, f.Invoice.AttemptCount)
		s.Invoices[f.Invoice.ID] = inv
	case f.InvoicePayment != nil:
		p := f.InvoicePayment
		inv := s.Invoices[p.InvoiceID].withPayment(p)
		if inv.LastEventID == "" { // no snapshot yet: known only as paid, and any snapshot outranks it
			inv.Account, inv.ID, inv.CustomerID = p.Account, p.InvoiceID, f.CustomerID
			inv.Currency, inv.LastEventCreated = inv.Payment.Currency, inv.Payment.LastEventCreated
		}
		s.Invoices[p.InvoiceID] = inv
	case f.Charge != nil:
		keep(s.Charges, f.Charge.ID, *f.Charge, compareCharges)
	case f.Dispute != nil:
		keep(s.Disputes, f.Dispute.ID, *f.Dispute, compareDisputes)
	}
	s.Derive()
}

// Derive recomputes Plan, Entitled and AccessUntil from the snapshots alone.
// Apply calls it; call it after changing the snapshots by hand. A deleted
// customer is entitled to nothing.
func (s *CustomerState) Derive() {
	s.Plan, s.Entitled, s.AccessUntil = FreePlan, false, nil
	if s.Customer.Deleted {
		return
	}
	var best *Subscription
	for _, sub := range s.Subscriptions {
		if !sub.Entitled() {
			continue
		}
		if best == nil || cmp.Or(
			timeOrZero(sub.CurrentPeriodEnd).Compare(timeOrZero(best.CurrentPeriodEnd)),
			cmp.Compare(sub.ID, best.ID),
		) > 0 {
			best = &sub
		}
	}
	if best == nil {
		return
	}
	s.Plan, s.Entitled = best.Plan, true
	for _, inv := range s.Invoices {
		if inv.Status != "paid" || inv.PaidPeriodEnd == nil || !s.Subscriptions[inv.SubscriptionID].Entitled() {
			continue
		}
		if s.AccessUntil == nil || inv.PaidPeriodEnd.After(*s.AccessUntil) {
			until := *inv.PaidPeriodEnd
			s.AccessUntil = &until
		}
	}
}

// CustomerKey names a customer: the same cus_ id under two Connect accounts
// is two customers (DESIGN §4).
type CustomerKey struct {
	Account string // "" for the platform
	ID      string
}

// Compare orders keys by account, then id.
func (k CustomerKey) Compare(o CustomerKey) int {
	return cmp.Or(cmp.Compare(k.Account, o.Account), cmp.Compare(k.ID, o.ID))
}

// ParseFact parses and decodes one stored Stripe event payload (ParseEnvelope,
// then Decode): nil and no error for an event of a type Decode does not handle.
func ParseFact(payload []byte, plans Plans) (*Fact, error) {
	env, err := ParseEnvelope(payload)
	if err != nil {
		return nil, err
	}
	return Decode(env, payload, plans)
}

// keep stores v under id unless the stored snapshot compares greater or equal.
func keep[T any](m map[string]T, id string, v T, compare func(a, b T) int) {
	if old, ok := m[id]; ok {
		v = greater(old, v, compare)
	}
	m[id] = v
}

// greater returns b if it compares greater than a, else a.
func greater[T any](a, b T, compare func(a, b T) int) T {
	if compare(b, a) > 0 {
		return b
	}
	return a
}
