package projections

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// The outbox (DESIGN §12): fold derives notifications in the transaction of
// the batch and writes them to the notifications table. Subscription status
// changes, invoices paid and failed and disputes opened come from the
// transition each fact makes to a customer's state, one fact at a time in
// log order; entitlement changes from the customer's timeline (timeline.go).
//
// A notification's id is a hash of its type, customer and what identifies
// the transition (the invoice for invoice.paid, the dispute for
// charge.dispute.opened, the invoice and attempt for invoice.payment_failed,
// the subscription and causing event for subscription.status_changed, the
// after-state and occurrence for customer.entitlement_changed), never of the
// batch or the time it was derived, and the insert keeps the row already
// there (it inserts new ids only), so every delivery cursor (a position)
// stays valid. A build writes none while it folds and, once live, inserts what
// its final state implies (announceFinal), which the live runner derived
// already when the logic is the same.

// notificationLockClass is the transaction-scoped advisory lock that every
// writer of notifications holds from taking positions to its commit, so that
// positions commit in order: a reader that has seen position P never later
// meets a row below P (the live runner and a rebuild both write). Under it
// no other writer inserts, and the insert (a statement of a read-committed
// transaction, after the lock's) sees what every earlier holder committed,
// so its NOT EXISTS is all it needs to insert new ids only: no ON CONFLICT
// arbiter, whose speculative insertion cost each row a second probe of the
// id index and one more WAL record.
const notificationLockClass = 0x4c4e5446 // 'LNTF'

// NotificationsChannel is the LISTEN channel a commit of new notifications
// signals.
const NotificationsChannel = "ledger_notifications"

// applyNoting applies f to s and appends to out the notifications its
// transition makes, but for entitlement changes, which follow the timeline
// (timeline.go). eventType names the type of a batch's event by id.
func applyNoting(out []notify.Notification, s *domain.CustomerState, f domain.Fact, eventType func(string) string) []notify.Notification {
	var oldSub domain.Subscription
	if f.Subscription != nil {
		oldSub = s.Subscriptions[f.Subscription.ID]
	}
	invoiceID := factInvoice(f)
	oldInv := s.Invoices[invoiceID]
	hadDispute := false
	if f.Dispute != nil {
		_, hadDispute = s.Disputes[f.Dispute.ID]
	}
	s.Apply(f)
	add := func(typ, key string, data any) {
		out = append(out, notify.Notification{
			ID: notificationID(typ, s.Account, s.Customer.ID, key), Type: typ, Account: s.Account, CustomerID: s.Customer.ID,
			EventIDs: []string{f.EventID}, OccurredAt: f.Created.UTC(), Data: mustJSON(data),
		})
	}
	if f.Subscription != nil {
		sub := s.Subscriptions[f.Subscription.ID]
		if sub.Status != oldSub.Status {
			add(notify.SubscriptionStatus, sub.ID+"/"+f.EventID,
				notify.SubscriptionStatusData{SubscriptionID: sub.ID, Before: oldSub.Status, After: sub.Status})
		}
	}
	if invoiceID != "" {
		inv := s.Invoices[invoiceID]
		switch {
		case inv.Status == "paid" && oldInv.Status != "paid":
			add(notify.InvoicePaid, inv.ID, invoiceData(inv))
		case inv.Status != "paid" && inv.AttemptCount > oldInv.AttemptCount && eventType(f.EventID) == "invoice.payment_failed":
			add(notify.InvoicePaymentFailed, inv.ID+"/"+itoa(inv.AttemptCount), invoiceData(inv))
		}
	}
	if f.Dispute != nil && !hadDispute {
		d := s.Disputes[f.Dispute.ID]
		add(notify.DisputeOpened, d.ID, notify.DisputeData{DisputeID: d.ID, ChargeID: d.ChargeID, Status: d.Status, Amount: d.Amount, Currency: d.Currency})
	}
	return out
}

// mustJSON encodes the plain structs of notification data, which never fails.
func mustJSON(data any) []byte {
	raw, _ := json.Marshal(data)
	return raw
}

// factInvoice is the invoice f is about, "" when none.
func factInvoice(f domain.Fact) string {
	switch {
	case f.Invoice != nil:
		return f.Invoice.ID
	case f.InvoicePayment != nil:
		return f.InvoicePayment.InvoiceID
	}
	return ""
}

func entitlementOf(s *domain.CustomerState) notify.Entitlement {
	e := notify.Entitlement{Entitled: s.Entitled, Plan: s.Plan, AccessUntil: s.AccessUntil}
	if e.Plan == "" { // a state never derived: nothing seen of the customer yet
		e.Plan = domain.FreePlan
	}
	if e.AccessUntil != nil {
		t := e.AccessUntil.UTC()
		e.AccessUntil = &t
	}
	return e
}

func invoiceData(inv domain.Invoice) notify.InvoiceData {
	return notify.InvoiceData{InvoiceID: inv.ID, SubscriptionID: inv.SubscriptionID, Status: inv.Status, AmountDue: inv.AmountDue,
		AmountPaid: inv.AmountPaid, Currency: inv.Currency, AttemptCount: inv.AttemptCount}
}

// notificationID is the stable id of a transition: ntf_ and 128 bits of
// SHA-256 over what identifies it.
func notificationID(typ, account, customer, key string) string {
	h := sha256.Sum256([]byte(typ + "\x00" + account + "\x00" + customer + "\x00" + key))
	return "ntf_" + hex.EncodeToString(h[:16])
}

// arrayLiteral is ss as the text of a PostgreSQL text[], every element
// quoted, so that any string (commas, braces, quotes, "NULL") reads back
// as itself.
func arrayLiteral(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, c := range []byte(s) {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// eventTypes returns the lookup of the type of b's events by id, safe for
// concurrent use (the fill folds customers in parallel).
func (b *batch) eventTypes() func(string) string {
	types := sync.OnceValue(func() map[string]string {
		types := make(map[string]string, len(b.recs))
		for _, r := range b.recs {
			types[r.ID] = r.Type
		}
		return types
	})
	return func(id string) string { return types()[id] }
}

// queueNotifications queues the insert of notes, new ids only, in their
// order (an id that notes repeat as its first), under
// notificationLockClass, and the signal to listeners; the rows inserted are
// added to added once the batch has run. Each
// notification's event ids travel as one text[] literal (arrayLiteral),
// which the insert casts: PostgreSQL arrays cannot be ragged, and
// unpacking a JSON array per row cost a subquery per row.
func queueNotifications(b *pgx.Batch, notes []notify.Notification, added *int64) {
	if len(notes) == 0 {
		return
	}
	var (
		ids, types, accounts, customers, events []string
		occurred                                []time.Time
		data                                    []string
	)
	seen := make(map[string]bool, len(notes))
	for _, n := range notes {
		if seen[n.ID] {
			continue
		}
		seen[n.ID] = true
		ids, types, accounts, customers = append(ids, n.ID), append(types, n.Type), append(accounts, n.Account), append(customers, n.CustomerID)
		events, occurred, data = append(events, arrayLiteral(n.EventIDs)), append(occurred, n.OccurredAt), append(data, string(n.Data))
	}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(notificationLockClass))
	b.Queue(`INSERT INTO notifications (id, position, type, account, customer_id, event_ids, occurred_at, data)
SELECT n.id, nextval('notifications_position_seq'), n.type, n.account, n.customer_id,
       n.event_ids::text[], n.occurred_at, n.data::jsonb
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
       WITH ORDINALITY AS n(id, type, account, customer_id, event_ids, occurred_at, data, ord)
 WHERE NOT EXISTS (SELECT FROM notifications o WHERE o.id = n.id)
 ORDER BY n.ord`, ids, types, accounts, customers, events, occurred, data).Exec(func(tag pgconn.CommandTag) error {
		*added += tag.RowsAffected()
		return nil
	})
	b.Queue(`SELECT pg_notify($1, '')`, NotificationsChannel)
}

// announceFinal adds to the outbox, once a build made schema live, the
// notifications its final state implies: every entitlement change of every
// customer's timeline, every paid invoice, every dispute of a customer. The
// live runner announced each of them when it first held it (a timeline's
// transitions as they appear in it, an invoice when it becomes paid, which
// it stays, a dispute when it is first seen), so with the live version's
// logic nothing is added: the count says so. Subscription status changes
// and failed attempts are announced per event in log order, which the
// final state does not keep: a build does not derive them again.
//
// replaced is the live version the build's swap replaced, 0 for none. One older
// than timelineIDsSince announced entitlement changes under ids of their
// causing event: under timeline ids every one of them would be new, and
// announcing them would send every customer's whole entitlement history
// again, years old. So a build that replaces such a version announces no
// entitlement change (the live runner announces the next ones), and logs
// that it held them back.
func (b *builder) announceFinal(ctx context.Context, schema string, replaced int) error {
	if b.p.outbox != outboxBuild {
		return nil
	}
	var err error
	if replaced == 0 || replaced >= timelineIDsSince {
		err = b.announceTimelines(ctx, schema)
	} else {
		b.logger.InfoContext(ctx, "entitlement changes not announced again: the replaced version identified them by their causing event",
			"replaced_version", replaced)
	}
	if err == nil {
		err = announceRows(ctx, b, invoicesTable, schema, "status = 'paid'", func(inv domain.Invoice) (string, string) { return inv.Account, inv.ID },
			func(inv domain.Invoice) []notify.Notification {
				return []notify.Notification{{ID: notificationID(notify.InvoicePaid, inv.Account, inv.CustomerID, inv.ID), Type: notify.InvoicePaid,
					Account: inv.Account, CustomerID: inv.CustomerID, EventIDs: []string{inv.LastEventID}, OccurredAt: inv.LastEventCreated.UTC(),
					Data: mustJSON(invoiceData(inv))}}
			})
	}
	if err == nil {
		err = announceRows(ctx, b, disputesTable, schema, "customer_id <> ''", func(d domain.Dispute) (string, string) { return d.Account, d.ID },
			func(d domain.Dispute) []notify.Notification {
				return []notify.Notification{{ID: notificationID(notify.DisputeOpened, d.Account, d.CustomerID, d.ID), Type: notify.DisputeOpened,
					Account: d.Account, CustomerID: d.CustomerID, EventIDs: []string{d.LastEventID}, OccurredAt: d.LastEventCreated.UTC(),
					Data: mustJSON(notify.DisputeData{DisputeID: d.ID, ChargeID: d.ChargeID, Status: d.Status, Amount: d.Amount, Currency: d.Currency})}}
			})
	}
	return err
}

// timelineIDsSince is the first BillingVersion whose entitlement changes
// are identified by their place in the customer's timeline (after-state and
// occurrence) rather than by the event that caused them: 0286a8b's, which
// BillingVersion 8 numbers (version 7, 4a21f76..9409154, still used the
// causing event's ids).
const timelineIDsSince = 8

// announceTimelines adds every transition of every customer's timeline in
// schema to the outbox.
func (b *builder) announceTimelines(ctx context.Context, schema string) error {
	return announceRows(ctx, b, customersTable, schema, "true", func(r customerRow) (string, string) { return r.Account, r.ID },
		func(r customerRow) []notify.Notification {
			notes := make([]notify.Notification, 0, len(r.Timeline))
			for _, tr := range r.Timeline {
				notes = append(notes, tr.note(r.Account, r.ID, nil))
			}
			return notes
		})
}

// announceRows inserts into the outbox the notifications of the rows of t
// in schema that where selects, a page of rows at a time in key order.
func announceRows[T any](ctx context.Context, b *builder, t table[T], schema, where string, key func(T) (account, id string),
	notes func(T) []notify.Notification) error {
	const page = 1000
	sql := fmt.Sprintf("WHERE %s AND (account, %s) > ($1, $2) ORDER BY account, %[2]s LIMIT $3", where, t.keyColumn())
	for account, id := "", ""; ; {
		rows, err := t.list(ctx, b.pool, schema, sql, account, id, page)
		if err != nil {
			return fmt.Errorf("read %s.%s: %w", schema, t.name, err)
		}
		var out []notify.Notification
		for _, r := range rows {
			out = append(out, notes(r)...)
			account, id = key(r)
		}
		if len(out) > 0 {
			err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
				var w pgx.Batch
				queueNotifications(&w, out, &b.added)
				return tx.SendBatch(ctx, &w).Close()
			})
			if err != nil {
				return fmt.Errorf("announce %s of %s: %w", t.name, schema, err)
			}
		}
		if len(rows) < page {
			return nil
		}
	}
}
