package domaintest

import (
	"errors"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// Replay decodes Stripe event payloads (as stored in the log) and folds them
// into the state of each customer they name, keyed by account and customer id. Events of
// types domain.Decode does not handle, and facts that name no customer, are skipped,
// but for invoice payments whose invoice another event names with its
// customer (ResolveInvoicePayments).
// Payloads that cannot be parsed or decoded are left out and their errors
// returned, joined, next to the state folded from the others.
func Replay(payloads [][]byte, plans domain.Plans) (map[domain.CustomerKey]*domain.CustomerState, error) {
	states := map[domain.CustomerKey]*domain.CustomerState{}
	var errs []error
	var all []*domain.Fact
	for _, payload := range payloads {
		f, err := domain.ParseFact(payload, plans)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if f != nil {
			all = append(all, f)
		}
	}
	ResolveInvoicePayments(all)
	for _, f := range all {
		if f.CustomerID == "" {
			continue
		}
		st := states[f.Key()]
		if st == nil {
			st = &domain.CustomerState{}
			states[f.Key()] = st
		}
		st.Apply(*f)
	}
	return states, errors.Join(errs...)
}

// ResolveInvoicePayments sets, on every invoice payment fact among facts
// that names no customer, the customer of its invoice, when an invoice fact
// among them names it: what the billing projection does through its links
// (DESIGN §8), for the folds of tests that have no links. Nil facts (events
// Decode does not handle) are passed over.
func ResolveInvoicePayments(facts []*domain.Fact) {
	type invoiceKey struct{ account, id string }
	owners := map[invoiceKey]string{}
	for _, f := range facts {
		if f != nil && f.Invoice != nil {
			owners[invoiceKey{f.Account, f.Invoice.ID}] = f.CustomerID
		}
	}
	for _, f := range facts {
		if f == nil {
			continue
		}
		if p := f.InvoicePayment; p != nil && f.CustomerID == "" {
			f.CustomerID = owners[invoiceKey{f.Account, p.InvoiceID}]
		}
	}
}
