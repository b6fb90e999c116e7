package projections

import (
	"context"
	"fmt"
	"strings"

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

// linkTables are the tables of links, exposed as views in the readmodel
// schema beside the customer tables. They have no customer_id, so Diff does
// not compare them; what they change (disputes, histories) it does.
var linkTables = []string{"links", "stream_links", "pending_disputes", "pending_invoice_payments"}

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
	s := ident(schema)
	var w pgx.Batch
	queueInsert(&w, s+".links", "account text, object_id text, customer_id text", b.links,
		func(l objectLink) []any { return []any{l.account, l.object, l.customer} })
	queueInsert(&w, s+".stream_links", "account text, object_id text, stream text", b.streamLinks,
		func(l streamLink) []any { return []any{l.account, l.object, l.stream} })
	queueInsert(&w, s+".pending_disputes", "account text, event_id text, charge_id text, dispute_id text, status text, currency text, amount bigint, last_event_created timestamptz", b.pending,
		func(p pendingDispute) []any {
			d := p.fact.Dispute
			return []any{p.account, p.fact.EventID, d.ChargeID, d.ID, d.Status, d.Currency, d.Amount, d.LastEventCreated}
		})
	queueInsert(&w, s+".pending_invoice_payments", "account text, event_id text, invoice_id text, invoice_payment_id text, amount_paid bigint, currency text, paid_at timestamptz, last_event_created timestamptz", b.payments,
		func(p pendingPayment) []any {
			ip := p.fact.InvoicePayment
			return []any{p.account, p.fact.EventID, ip.InvoiceID, ip.ID, ip.AmountPaid, ip.Currency, ip.PaidAt, ip.LastEventCreated}
		})
	if len(b.links) > 0 || len(b.pending) > 0 || len(b.payments) > 0 {
		// Every pending dispute whose charge is now linked, and every pending
		// invoice payment whose invoice is, this batch's included.
		accounts, objects := pendingKeys(b)
		queueResolved(&w, b, `DELETE FROM `+s+`.pending_disputes p USING `+s+`.links l
 WHERE l.account = p.account AND l.object_id = p.charge_id
   AND (p.account, p.charge_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
RETURNING l.account, l.customer_id, p.event_id, p.charge_id, p.dispute_id, p.status, p.currency, p.amount, p.last_event_created`,
			accounts, objects, func(rows pgx.Rows) (domain.Fact, error) {
				d := &domain.Dispute{}
				if err := rows.Scan(&d.Account, &d.CustomerID, &d.LastEventID, &d.ChargeID, &d.ID, &d.Status, &d.Currency, &d.Amount, &d.LastEventCreated); err != nil {
					return domain.Fact{}, fmt.Errorf("scan pending dispute: %w", err)
				}
				return domain.Fact{EventID: d.LastEventID, Created: d.LastEventCreated, Account: d.Account, CustomerID: d.CustomerID, Dispute: d}, nil
			})
		queueResolved(&w, b, `DELETE FROM `+s+`.pending_invoice_payments p USING `+s+`.links l
 WHERE l.account = p.account AND l.object_id = p.invoice_id
   AND (p.account, p.invoice_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
RETURNING l.account, l.customer_id, p.event_id, p.invoice_id, p.invoice_payment_id, p.amount_paid, p.currency, p.paid_at, p.last_event_created`,
			accounts, objects, func(rows pgx.Rows) (domain.Fact, error) {
				ip := &domain.InvoicePayment{}
				var customer string
				if err := rows.Scan(&ip.Account, &customer, &ip.LastEventID, &ip.InvoiceID, &ip.ID, &ip.AmountPaid, &ip.Currency, &ip.PaidAt, &ip.LastEventCreated); err != nil {
					return domain.Fact{}, fmt.Errorf("scan pending invoice payment: %w", err)
				}
				// As decoded: UTC, and no customer (the event named none).
				ip.LastEventCreated = ip.LastEventCreated.UTC()
				if ip.PaidAt != nil {
					at := ip.PaidAt.UTC()
					ip.PaidAt = &at
				}
				return domain.Fact{EventID: ip.LastEventID, Created: ip.LastEventCreated, Account: ip.Account, CustomerID: customer, InvoicePayment: ip}, nil
			})
	}
	if err := tx.SendBatch(ctx, &w).Close(); err != nil {
		return fmt.Errorf("link objects in %s: %w", schema, err)
	}
	return nil
}

// queueResolved queues sql, which deletes and returns pending facts that
// are now linked (by accounts and objects), adding each fact scan reads
// from its rows to b's facts.
func queueResolved(w *pgx.Batch, b *batch, sql string, accounts, objects []string, scan func(pgx.Rows) (domain.Fact, error)) {
	w.Queue(sql, accounts, objects).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			f, err := scan(rows)
			if err != nil {
				return err
			}
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

// queueInsert queues one INSERT of rows into table, skipping those already
// stored: columns lists "name type" pairs, comma-separated, and values
// gives a row's values in that order. Each column is sent as one array
// (unnest), so a batch of any size is one statement.
func queueInsert[T any](w *pgx.Batch, table, columns string, rows []T, values func(T) []any) {
	if len(rows) == 0 {
		return
	}
	defs := strings.Split(columns, ", ")
	names, arrays := make([]string, len(defs)), make([]string, len(defs))
	params := make([][]any, len(defs))
	for i, def := range defs {
		name, typ, _ := strings.Cut(def, " ")
		names[i], arrays[i] = name, fmt.Sprintf("$%d::%s[]", i+1, typ)
		params[i] = make([]any, 0, len(rows))
	}
	for _, r := range rows {
		for i, v := range values(r) {
			params[i] = append(params[i], v)
		}
	}
	args := make([]any, len(params))
	for i, p := range params {
		args[i] = p
	}
	w.Queue(`INSERT INTO `+table+` (`+strings.Join(names, ", ")+`)
SELECT * FROM unnest(`+strings.Join(arrays, ", ")+`) ON CONFLICT DO NOTHING`, args...)
}
