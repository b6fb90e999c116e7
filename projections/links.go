package projections

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"

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
	queueLink(&w, schema, b)
	if err := tx.SendBatch(ctx, &w).Close(); err != nil {
		return fmt.Errorf("link objects in %s: %w", schema, err)
	}
	return nil
}

// queueLink queues link's statements in w; the facts they resolve are
// added to b's as w's results are read.
func queueLink(w *pgx.Batch, schema string, b *batch) {
	// One batch names the same links over and over (every event of an
	// invoice names its charge and payment intent): each is written once.
	b.links, b.streamLinks = distinct(b.links), distinct(b.streamLinks)
	linksTable.queueInsert(w, schema, b.links, keepStored)
	streamLinksTable.queueInsert(w, schema, b.streamLinks, keepStored)
	if len(b.pending) > 0 || len(b.payments) > 0 || len(b.links) > 0 {
		queueCustomPlans(w, func() {
			queuePending(w, b, schema, pendingDisputesTable, "charge_id", b.pending, disputeFact)
			queuePending(w, b, schema, pendingInvoicePaymentsTable, "invoice_id", b.payments, invoicePaymentFact)
			if len(b.links) > 0 {
				// Every stored pending dispute whose charge b links, and every
				// stored pending invoice payment whose invoice it links.
				accounts, objects := make([]string, len(b.links)), make([]string, len(b.links))
				for i, l := range b.links {
					accounts[i], objects[i] = l.account, l.object
				}
				queueResolved(w, b, schema, pendingDisputesTable, "charge_id", accounts, objects, disputeFact)
				queueResolved(w, b, schema, pendingInvoicePaymentsTable, "invoice_id", accounts, objects, invoicePaymentFact)
			}
		})
	}
}

// disputeFact is the fact of a pending dispute, of customer.
func disputeFact(customer string, p pendingDispute) domain.Fact {
	d := p.fact.Dispute
	d.Account, d.CustomerID, d.LastEventID = p.account, customer, p.fact.EventID
	return domain.Fact{EventID: d.LastEventID, Created: d.LastEventCreated, Account: d.Account, CustomerID: customer, Dispute: d}
}

// invoicePaymentFact is the fact of a pending invoice payment, of customer.
func invoicePaymentFact(customer string, p pendingPayment) domain.Fact {
	// As decoded: UTC, and no customer (the event named none).
	ip := p.fact.InvoicePayment
	ip.Account, ip.LastEventID, ip.LastEventCreated = p.account, p.fact.EventID, ip.LastEventCreated.UTC()
	if ip.PaidAt != nil {
		at := ip.PaidAt.UTC()
		ip.PaidAt = &at
	}
	return domain.Fact{EventID: ip.LastEventID, Created: ip.LastEventCreated, Account: ip.Account, CustomerID: customer, InvoicePayment: ip}
}

// queuePending queues the store of rows, pending facts of b that wait in t
// for the link of the object its via column names: those whose object is
// linked already (by b or earlier) are not stored but become facts of its
// customer at once (fact makes them), and only the rest wait in t. So a
// batch that brings a charge and its dispute writes no pending row.
func queuePending[T any](w *pgx.Batch, b *batch, schema string, t table[T], via string, rows []T, fact func(customer string, row T) domain.Fact) {
	if len(rows) == 0 {
		return
	}
	source, args := t.unnest(rows)
	// One lookup of the link per row, whose result both the insert of the
	// waiting rows and the answer read.
	waiting := t.insertSQL(schema, "(SELECT "+t.columnList("p.")+" FROM p WHERE p.linked_customer IS NULL) w", keepStored)
	queueFacts(w, b, t, fmt.Sprintf(`WITH p AS (SELECT l.customer_id AS linked_customer, s.* FROM %s AS s (%s)
  LEFT JOIN %s.%s l ON l.account = s.account AND l.object_id = s.%s), waiting AS (%s)
SELECT p.linked_customer, %s FROM p WHERE p.linked_customer IS NOT NULL`,
		source, t.columnList(""), ident(schema), linksTable.name, via, waiting, t.columnList("p.")), args, fact)
}

// queueResolved queues the delete of t's pending facts that are now linked
// (by accounts and objects, which the via column of t names), adding the
// fact that fact makes of each, with its customer, to b's facts.
func queueResolved[T any](w *pgx.Batch, b *batch, schema string, t table[T], via string, accounts, objects []string, fact func(customer string, row T) domain.Fact) {
	queueFacts(w, b, t, fmt.Sprintf(`DELETE FROM %[1]s.%[2]s p USING %[1]s.%[3]s l
 WHERE l.account = p.account AND l.object_id = p.%[4]s
   AND (p.account, p.%[4]s) IN (SELECT * FROM unnest($1::text[], $2::text[]))
RETURNING l.customer_id, %[5]s`, ident(schema), t.name, linksTable.name, via, t.columnList("p.")), []any{accounts, objects}, fact)
}

// queueFacts queues sql, which returns pending facts of t that are linked,
// each as its customer and t's columns, adding the fact that fact makes of
// each to b's facts.
func queueFacts[T any](w *pgx.Batch, b *batch, t table[T], sql string, args []any, fact func(customer string, row T) domain.Fact) {
	w.Queue(sql, args...).Query(func(rows pgx.Rows) error {
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

// distinct returns rows without their repeats, in the order first seen.
func distinct[T comparable](rows []T) []T {
	seen := make(map[T]struct{}, len(rows))
	out := rows[:0:0]
	for _, r := range rows {
		if _, ok := seen[r]; !ok {
			seen[r] = struct{}{}
			out = append(out, r)
		}
	}
	return out
}

// heldLinks are the links of a fill (fill.go), held in memory while it folds
// and written at its end: link's rows and its resolution of pending disputes
// and invoice payments, without two tables' inserts and index updates and
// two joins per chunk in the database.
type heldLinks struct {
	customers map[linkKey]string              // links: each object's customer, the first linked
	objects   map[domain.CustomerKey][]string // the objects linked to each customer
	streams   map[linkKey][]string            // stream_links: the streams linked to each object
	disputes  heldPending[pendingDispute]     // pending_disputes
	payments  heldPending[pendingPayment]     // pending_invoice_payments
}

// linkKey is an object of an account.
type linkKey struct{ account, object string }

// heldPending are the rows of a table of pending facts, by the object whose
// link they wait for, and the keys (account, event_id) of the rows held.
type heldPending[T any] struct {
	byObject map[linkKey][]T
	keys     map[linkKey]struct{}
}

func newHeldLinks() *heldLinks {
	return &heldLinks{customers: map[linkKey]string{}, objects: map[domain.CustomerKey][]string{}, streams: map[linkKey][]string{},
		disputes: heldPending[pendingDispute]{byObject: map[linkKey][]pendingDispute{}, keys: map[linkKey]struct{}{}},
		payments: heldPending[pendingPayment]{byObject: map[linkKey][]pendingPayment{}, keys: map[linkKey]struct{}{}}}
}

// link does what link does in a schema, on the links held: it records b's
// links (an object's first link stays) and stream links, adds to b's facts
// those of b's pending disputes and invoice payments whose object is linked
// (by b or earlier) and holds the rest, then adds those of the held ones
// whose object b links.
func (h *heldLinks) link(b *batch) {
	b.links, b.streamLinks = distinct(b.links), distinct(b.streamLinks)
	for _, l := range b.links {
		k := linkKey{l.account, l.object}
		if _, ok := h.customers[k]; !ok {
			h.customers[k] = l.customer
			c := domain.CustomerKey{Account: l.account, ID: l.customer}
			h.objects[c] = append(h.objects[c], l.object)
		}
	}
	for _, l := range b.streamLinks {
		k := linkKey{l.account, l.object}
		if !slices.Contains(h.streams[k], l.stream) {
			h.streams[k] = append(h.streams[k], l.stream)
		}
	}
	holdPending(h, b, &h.disputes, pendingDisputesTable, b.pending, func(p pendingDispute) linkKey {
		return linkKey{p.account, p.fact.Dispute.ChargeID}
	}, disputeFact)
	holdPending(h, b, &h.payments, pendingInvoicePaymentsTable, b.payments, func(p pendingPayment) linkKey {
		return linkKey{p.account, p.fact.InvoicePayment.InvoiceID}
	}, invoicePaymentFact)
	for _, l := range b.links {
		k := linkKey{l.account, l.object}
		resolveHeld(h, b, &h.disputes, pendingDisputesTable, k, disputeFact)
		resolveHeld(h, b, &h.payments, pendingInvoicePaymentsTable, k, invoicePaymentFact)
	}
}

// holdPending is queuePending on the links held: each of rows (as t stores
// it) whose object (via) is linked becomes a fact of b; the others are held,
// unless a row with their key is already.
func holdPending[T any](h *heldLinks, b *batch, held *heldPending[T], t table[T], rows []T, via func(T) linkKey,
	fact func(customer string, row T) domain.Fact) {
	for i := range rows {
		row := stored(t, &rows[i])
		k := via(row)
		if customer, ok := h.customers[k]; ok {
			f := fact(customer, row)
			b.facts[f.Key()] = append(b.facts[f.Key()], f)
			continue
		}
		id := rowKey(t, &row)
		if _, ok := held.keys[id]; !ok {
			held.keys[id] = struct{}{}
			held.byObject[k] = append(held.byObject[k], row)
		}
	}
}

// resolveHeld is queueResolved on the links held, for object k.
func resolveHeld[T any](h *heldLinks, b *batch, held *heldPending[T], t table[T], k linkKey, fact func(customer string, row T) domain.Fact) {
	rows := held.byObject[k]
	if len(rows) == 0 {
		return
	}
	customer := h.customers[k]
	for i := range rows {
		f := fact(customer, rows[i])
		b.facts[f.Key()] = append(b.facts[f.Key()], f)
		delete(held.keys, rowKey(t, &rows[i]))
	}
	delete(held.byObject, k)
}

// rowKey is the primary key of row, a row of t whose key is its first two
// columns, both text: account and the row's id (the tables of pending
// facts, by event_id, and of objects, by the object's id).
func rowKey[T any](t table[T], row *T) linkKey {
	key := t.fields(row)
	return linkKey{*key[0].(*string), *key[1].(*string)}
}

// stored is row as t's columns hold it, what a select of its stored row
// scans: a fresh value, holding nothing the table does not.
func stored[T any](t table[T], row *T) T {
	var out T
	from := t.fields(row)
	for i, to := range t.fields(&out) {
		reflect.ValueOf(to).Elem().Set(reflect.ValueOf(from[i]).Elem())
	}
	return out
}

// linked is linkedStreams on the links held (sorted bytewise).
func (h *heldLinks) linked(key domain.CustomerKey) []string {
	var streams []string
	for _, obj := range h.objects[key] {
		for _, s := range h.streams[linkKey{key.Account, obj}] {
			if !slices.Contains(streams, s) {
				streams = append(streams, s)
			}
		}
	}
	slices.Sort(streams)
	return streams
}

// tableWrite is the write of one table.
type tableWrite struct {
	table string
	write func(context.Context, pgx.Tx) error
}

// writes are the writes of the links held into schema, whose tables of
// links fillCopy made without their keys: one COPY per table, then its keys
// (keysSQL), each to run in a transaction of its own.
func (h *heldLinks) writes(schema string) []tableWrite {
	return []tableWrite{
		{linksTable.name, func(ctx context.Context, tx pgx.Tx) error {
			links := make([]objectLink, 0, len(h.customers))
			for k, c := range h.customers {
				links = append(links, objectLink{account: k.account, object: k.object, customer: c})
			}
			return copyKeyed(ctx, tx, schema, linksTable, links)
		}},
		{streamLinksTable.name, func(ctx context.Context, tx pgx.Tx) error {
			var streams []streamLink
			for k, ss := range h.streams {
				for _, s := range ss {
					streams = append(streams, streamLink{account: k.account, object: k.object, stream: s})
				}
			}
			return copyKeyed(ctx, tx, schema, streamLinksTable, streams)
		}},
		{pendingDisputesTable.name, func(ctx context.Context, tx pgx.Tx) error {
			return copyKeyed(ctx, tx, schema, pendingDisputesTable, slices.Concat(slices.Collect(maps.Values(h.disputes.byObject))...))
		}},
		{pendingInvoicePaymentsTable.name, func(ctx context.Context, tx pgx.Tx) error {
			return copyKeyed(ctx, tx, schema, pendingInvoicePaymentsTable, slices.Concat(slices.Collect(maps.Values(h.payments.byObject))...))
		}},
	}
}

// copyKeyed writes rows into t, made without its keys, with COPY, then adds
// its keys.
func copyKeyed[T any](ctx context.Context, tx pgx.Tx, schema string, t table[T], rows []T) error {
	if err := copyRows(ctx, tx, schema, t, rows, false); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, t.keysSQL(schema)); err != nil {
		return fmt.Errorf("index %s.%s: %w", schema, t.name, err)
	}
	return nil
}
