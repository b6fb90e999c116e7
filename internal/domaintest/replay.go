package domaintest

import (
	"errors"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// Replay decodes Stripe event payloads (as stored in the log) and folds them
// into the state of each customer they name, keyed by account and customer id. Events of
// types domain.Decode does not handle, and facts that name no customer, are skipped.
// Payloads that cannot be parsed or decoded are left out and their errors
// returned, joined, next to the state folded from the others.
func Replay(payloads [][]byte, plans domain.Plans) (map[domain.CustomerKey]*domain.CustomerState, error) {
	states := map[domain.CustomerKey]*domain.CustomerState{}
	var errs []error
	for _, payload := range payloads {
		f, err := domain.ParseFact(payload, plans)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if f == nil || f.CustomerID == "" {
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
