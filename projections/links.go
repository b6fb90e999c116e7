package projections

import (
	"context"
	"fmt"
	"time"

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

// linkTables are the tables of links, exposed as views in the readmodel
// schema beside the customer tables. They have no customer_id, so Diff does
// not compare them; what they change (disputes, histories) it does.
var linkTables = []string{"links", "stream_links", "pending_disputes"}

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

// link stores b's links and resolves dispute facts to customers, within the
// fold's transaction and before the customers' states are loaded: b's own
// pending disputes whose charge is linked (by b or earlier), and the stored
// ones whose charge b links, become facts of their customer; the rest wait
// in pending_disputes.
func link(ctx context.Context, tx pgx.Tx, schema string, b *batch) error {
	s := ident(schema)
	var w pgx.Batch
	if len(b.links) > 0 {
		accounts, objects, customers := columns3(b.links, func(l objectLink) (string, string, string) { return l.account, l.object, l.customer })
		w.Queue(`INSERT INTO `+s+`.links (account, object_id, customer_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING`, accounts, objects, customers)
	}
	if len(b.streamLinks) > 0 {
		accounts, objects, streams := columns3(b.streamLinks, func(l streamLink) (string, string, string) { return l.account, l.object, l.stream })
		w.Queue(`INSERT INTO `+s+`.stream_links (account, object_id, stream)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING`, accounts, objects, streams)
	}
	if len(b.pending) > 0 {
		var (
			accounts, events, charges, disputes, statuses, currencies []string
			amounts                                                   []int64
			created                                                   []time.Time
		)
		for _, p := range b.pending {
			d := p.fact.Dispute
			accounts, events, charges, disputes = append(accounts, p.account), append(events, p.fact.EventID), append(charges, d.ChargeID), append(disputes, d.ID)
			statuses, currencies, amounts, created = append(statuses, d.Status), append(currencies, d.Currency), append(amounts, d.Amount), append(created, d.LastEventCreated)
		}
		w.Queue(`INSERT INTO `+s+`.pending_disputes (account, event_id, charge_id, dispute_id, status, currency, amount, last_event_created)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::timestamptz[])
ON CONFLICT DO NOTHING`, accounts, events, charges, disputes, statuses, currencies, amounts, created)
	}
	if len(b.links) > 0 || len(b.pending) > 0 {
		// Every pending dispute whose charge is now linked, this batch's included.
		accounts, charges := pendingKeys(b)
		w.Queue(`DELETE FROM `+s+`.pending_disputes p USING `+s+`.links l
 WHERE l.account = p.account AND l.object_id = p.charge_id
   AND (p.account, p.charge_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
RETURNING l.account, l.customer_id, p.event_id, p.charge_id, p.dispute_id, p.status, p.currency, p.amount, p.last_event_created`,
			accounts, charges).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				d := &domain.Dispute{}
				if err := rows.Scan(&d.Account, &d.CustomerID, &d.LastEventID, &d.ChargeID, &d.ID, &d.Status, &d.Currency, &d.Amount, &d.LastEventCreated); err != nil {
					return fmt.Errorf("scan pending dispute: %w", err)
				}
				f := domain.Fact{EventID: d.LastEventID, Created: d.LastEventCreated, Account: d.Account, CustomerID: d.CustomerID, Dispute: d}
				b.facts[f.Key()] = append(b.facts[f.Key()], f)
			}
			return rows.Err()
		})
	}
	if err := tx.SendBatch(ctx, &w).Close(); err != nil {
		return fmt.Errorf("link objects in %s: %w", schema, err)
	}
	return nil
}

// pendingKeys are the (account, charge) pairs whose pending disputes b may
// resolve: the objects b links and the charges of b's pending disputes.
func pendingKeys(b *batch) (accounts, objects []string) {
	for _, l := range b.links {
		accounts, objects = append(accounts, l.account), append(objects, l.object)
	}
	for _, p := range b.pending {
		accounts, objects = append(accounts, p.account), append(objects, p.fact.Dispute.ChargeID)
	}
	return accounts, objects
}

func columns3[T any](rows []T, f func(T) (string, string, string)) (a, b, c []string) {
	for _, r := range rows {
		x, y, z := f(r)
		a, b, c = append(a, x), append(b, y), append(c, z)
	}
	return a, b, c
}
