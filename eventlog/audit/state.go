package audit

import (
	"context"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Folded is a customer's state folded from its history, with what was read.
type Folded struct {
	State       *domain.CustomerState
	Total       int // records in the history
	Folded      int // records include kept
	Undecodable int // of those, records that do not decode (the projections dead-letter them)
}

// FoldState folds the records of a customer's history (streams: its own
// first, then its linked objects', DESIGN §8) that include keeps, in log
// order, with domain's fold, batch by batch: memory is the customer's state,
// not its history.
func FoldState(ctx context.Context, l StreamReader, streams []string, key domain.CustomerKey, plans domain.Plans, include func(eventlog.Record) bool) (Folded, error) {
	st := &domain.CustomerState{Account: key.Account, Customer: domain.Customer{Account: key.Account, ID: key.ID}}
	st.Derive()
	res, err := EachFact(ctx, l, streams, key, plans, include, st.Apply)
	res.State = st
	return res, err
}

// EachFact hands each the facts of the customer key in the records of its
// history (streams: its own first, then its linked objects') that include
// keeps, in log order. A dispute or invoice payment met in a linked stream
// is the customer's, as the projection links it. The result counts what was
// read; its State is nil.
func EachFact(ctx context.Context, l StreamReader, streams []string, key domain.CustomerKey, plans domain.Plans, include func(eventlog.Record) bool,
	each func(domain.Fact)) (Folded, error) {
	var res Folded
	err := EachInStreams(ctx, l, streams, eventlog.Start, BatchSize, func(batch []eventlog.Record) error {
		for _, r := range batch {
			res.Total++
			if !include(r) {
				continue
			}
			res.Folded++
			// The log parsed and stored the envelope when it took the event in.
			env := domain.Envelope{ID: r.ID, Type: r.Type, APIVersion: r.APIVersion, Created: r.Created, Account: r.Account}
			f, err := domain.Decode(env, r.Payload, plans)
			if err != nil {
				res.Undecodable++
				continue
			}
			if f == nil {
				continue
			}
			if f.CustomerID == "" && f.Dispute != nil && r.Stream != streams[0] {
				d := *f.Dispute
				d.CustomerID, f.CustomerID, f.Dispute = key.ID, key.ID, &d
			}
			if f.CustomerID == "" && f.InvoicePayment != nil && r.Stream != streams[0] {
				f.CustomerID = key.ID // linked through its invoice, as the projection links it
			}
			if f.Key() == key {
				each(*f)
			}
		}
		return nil
	})
	return res, err
}
