package projections

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Links (DESIGN §8). Stripe files disputes and refunds under their charge,
// not their customer, so their events land in object-… streams. The billing
// projection records, order-independently:
//
//   - links: object → customer, from every event that names both (a charge
//     and its payment intent and invoice, a payment intent and its latest
//     charge, an invoice and its charge and payment intent);
//   - stream_links: object → stream, for the streams of events that name no
//     customer (a dispute's or refund's stream, by its own id and its charge's
//     and payment intent's), so that a customer's history is the customer's
//     stream merged with every stream linked to one of its objects
//     (CustomerStreams), whichever arrived first;
//   - pending_disputes: dispute snapshots whose charge is not linked yet. When
//     the link arrives they are folded into the customer's state like any
//     dispute fact (the fold is order independent), so readmodel.disputes
//     carries the customer whether the dispute came before or after its charge.
//   - pending_invoice_payments: likewise, invoice payments (invoice_payment.paid,
//     API 2025-03-31+, which name only their invoice) whose invoice is not
//     linked yet: once it is, they mark the customer's invoice paid.
//
// A link is never replaced: a charge's, invoice's or payment intent's customer
// does not change in Stripe once set.

type objectLink struct{ account, object, customer string }

type streamLink struct{ account, object, stream string }

// pendingDispute is a dispute fact that names no customer.
type pendingDispute struct {
	account string
	fact    domain.Fact
}

// pendingPayment is an invoice payment fact that names no customer.
type pendingPayment struct {
	account string
	fact    domain.Fact
}

// addLinks records what rec says about which objects belong together.
func (b *batch) addLinks(rec eventlog.Record, l domain.Links) {
	for _, obj := range l.Objects {
		if l.CustomerID != "" {
			b.links = append(b.links, objectLink{account: rec.Account, object: obj, customer: l.CustomerID})
		} else {
			b.streamLinks = append(b.streamLinks, streamLink{account: rec.Account, object: obj, stream: rec.Stream})
		}
	}
}

// link stores b's links and resolves dispute and invoice payment facts to
// customers, within the fold's transaction and before the customers' states
// are loaded: b's own pending disputes whose charge is linked (by b or
// earlier), and the stored ones whose charge b links, become facts of their
// customer; the rest wait in pending_disputes. Invoice payments do the same
// by their invoice, in pending_invoice_payments.
func link(ctx context.Context, tx pgx.Tx, schema string, b *batch) error {
	var w pgx.Batch
	linksTable.queueInsert(&w, schema, b.links, keepStored)
	streamLinksTable.queueInsert(&w, schema, b.streamLinks, keepStored)
	pendingDisputesTable.queueInsert(&w, schema, b.pending, keepStored)
	pendingInvoicePaymentsTable.queueInsert(&w, schema, b.payments, keepStored)
	if len(b.links) > 0 || len(b.pending) > 0 || len(b.payments) > 0 {
		// Every pending dispute whose charge is now linked, and every pending
		// invoice payment whose invoice is, this batch's included.
		accounts, objects := pendingKeys(b)
		queueResolved(&w, b, schema, pendingDisputesTable, "charge_id", accounts, objects, func(customer string, p pendingDispute) domain.Fact {
			d := p.fact.Dispute
			d.Account, d.CustomerID, d.LastEventID = p.account, customer, p.fact.EventID
			return domain.Fact{EventID: d.LastEventID, Created: d.LastEventCreated, Account: d.Account, CustomerID: customer, Dispute: d}
		})
		queueResolved(&w, b, schema, pendingInvoicePaymentsTable, "invoice_id", accounts, objects, func(customer string, p pendingPayment) domain.Fact {
			// As decoded: UTC, and no customer (the event named none).
			ip := p.fact.InvoicePayment
			ip.Account, ip.LastEventID, ip.LastEventCreated = p.account, p.fact.EventID, ip.LastEventCreated.UTC()
			if ip.PaidAt != nil {
				at := ip.PaidAt.UTC()
				ip.PaidAt = &at
			}
			return domain.Fact{EventID: ip.LastEventID, Created: ip.LastEventCreated, Account: ip.Account, CustomerID: customer, InvoicePayment: ip}
		})
	}
	if err := tx.SendBatch(ctx, &w).Close(); err != nil {
		return fmt.Errorf("link objects in %s: %w", schema, err)
	}
	return nil
}

// queueResolved queues the delete of t's pending facts that are now linked
// (by accounts and objects, which the via column of t names), adding the
// fact that fact makes of each, with its customer, to b's facts.
func queueResolved[T any](w *pgx.Batch, b *batch, schema string, t table[T], via string, accounts, objects []string, fact func(customer string, row T) domain.Fact) {
	sql := fmt.Sprintf(`DELETE FROM %[1]s.%[2]s p USING %[1]s.%[3]s l
 WHERE l.account = p.account AND l.object_id = p.%[4]s
   AND (p.account, p.%[4]s) IN (SELECT * FROM unnest($1::text[], $2::text[]))
RETURNING l.customer_id, %[5]s`, ident(schema), t.name, linksTable.name, via, t.columnList("p."))
	w.Queue(sql, accounts, objects).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var (
				customer string
				row      T
			)
			if err := rows.Scan(append([]any{&customer}, t.fields(&row)...)...); err != nil {
				return fmt.Errorf("scan %s: %w", t.name, err)
			}
			f := fact(customer, row)
			b.facts[f.Key()] = append(b.facts[f.Key()], f)
		}
		return rows.Err()
	})
}

// pendingKeys are the (account, object) pairs whose pending disputes and
// invoice payments b may resolve: the objects b links, the charges of b's
// pending disputes and the invoices of its pending invoice payments.
func pendingKeys(b *batch) (accounts, objects []string) {
	for _, l := range b.links {
		accounts, objects = append(accounts, l.account), append(objects, l.object)
	}
	for _, p := range b.pending {
		accounts, objects = append(accounts, p.account), append(objects, p.fact.Dispute.ChargeID)
	}
	for _, p := range b.payments {
		accounts, objects = append(accounts, p.account), append(objects, p.fact.InvoicePayment.InvoiceID)
	}
	return accounts, objects
}
