package domaintest

import (
	"slices"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// Transition is a change of a customer's entitlement in Stripe's history.
type Transition struct {
	At            time.Time
	Before, After notify.Entitlement
}

// CustomerFacts decodes ds into each customer's facts, in the order of ds,
// each event once however often it is delivered; an invoice payment that
// names no customer is its invoice's (ResolveInvoicePayments) and comes
// when both it and an event of its invoice have: where the projection would
// fold it. Events that do not decode are left out.
func CustomerFacts(ds []Delivery, plans domain.Plans) map[domain.CustomerKey][]domain.Fact {
	seen := map[string]bool{}
	var facts []*domain.Fact
	for _, d := range ds {
		if seen[d.EventID] {
			continue
		}
		seen[d.EventID] = true
		if f, err := domain.ParseFact(d.Payload, plans); err == nil && f != nil {
			facts = append(facts, f)
		}
	}
	paidBy := map[int]bool{} // invoice payments resolved through their invoice, by index
	for i, f := range facts {
		paidBy[i] = f.InvoicePayment != nil && f.CustomerID == ""
	}
	ResolveInvoicePayments(facts)
	out := map[domain.CustomerKey][]domain.Fact{}
	var waiting []int
	invoiceSeen := map[string]bool{}
	for i, f := range facts {
		if f.CustomerID == "" {
			continue
		}
		if paidBy[i] && !invoiceSeen[f.Account+"/"+f.InvoicePayment.InvoiceID] {
			waiting = append(waiting, i)
			continue
		}
		out[f.Key()] = append(out[f.Key()], *f)
		if f.Invoice != nil {
			invoiceSeen[f.Account+"/"+f.Invoice.ID] = true
			waiting = slices.DeleteFunc(waiting, func(j int) bool {
				p := facts[j]
				if p.Account != f.Account || p.InvoicePayment.InvoiceID != f.Invoice.ID {
					return false
				}
				out[p.Key()] = append(out[p.Key()], *p)
				return true
			})
		}
	}
	return out
}

// Timeline is the entitlement timeline of one customer's facts, computed
// the plain way: for every distinct second of the facts, a fresh fold
// (domain's, order independent) of every fact created at or before it,
// compared with the second before; the entitlement before the first fact is
// none (not entitled, the free plan).
func Timeline(facts []domain.Fact) []Transition {
	var seconds []time.Time
	for _, f := range facts {
		seconds = append(seconds, f.Created)
	}
	slices.SortFunc(seconds, time.Time.Compare)
	seconds = slices.Compact(seconds)
	var out []Transition
	before := notify.Entitlement{Plan: domain.FreePlan}
	for _, at := range seconds {
		var s domain.CustomerState
		for _, f := range facts {
			if !f.Created.After(at) {
				s.Apply(f)
			}
		}
		after := notify.Entitlement{Entitled: s.Entitled, Plan: s.Plan, AccessUntil: s.AccessUntil}
		if after.AccessUntil != nil {
			u := after.AccessUntil.UTC()
			after.AccessUntil = &u
		}
		if !before.Equal(after) {
			out = append(out, Transition{At: at.UTC(), Before: before, After: after})
		}
		before = after
	}
	return out
}
