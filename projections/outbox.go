package projections

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// The outbox (DESIGN §12): fold derives notifications from the transitions
// each fact makes to a customer's state, one fact at a time, and writes them
// to the notifications table in the transaction of the batch.
//
// A notification's id is a hash of its type, customer and what identifies
// the transition (the invoice for invoice.paid, the dispute for
// charge.dispute.opened, the invoice and attempt for invoice.payment_failed,
// the causing event for the other two), never of the batch or the time it
// was derived. Facts are applied in log order whatever the batch size, so a
// rebuild derives the same transitions with the same ids, and the insert
// keeps the row already there (ON CONFLICT DO NOTHING): a rebuild adds
// nothing that was derived before, and every delivery cursor (a position)
// stays valid.

// notificationLockClass is the transaction-scoped advisory lock that every
// writer of notifications holds from taking positions to its commit, so that
// positions commit in order: a reader that has seen position P never later
// meets a row below P (the live runner and a rebuild both write).
const notificationLockClass = 0x4c4e5446 // 'LNTF'

// NotificationsChannel is the LISTEN channel a commit of new notifications
// signals.
const NotificationsChannel = "ledger_notifications"

// applyNoting applies f to s and appends to out the notifications its
// transition makes. eventType names the type of a batch's event by id.
func applyNoting(out []notify.Notification, s *domain.CustomerState, f domain.Fact, eventType func(string) string) []notify.Notification {
	was := entitlementOf(s)
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
		raw, _ := json.Marshal(data) // plain structs: never fails
		n := notify.Notification{
			ID: notificationID(typ, s.Account, s.Customer.ID, key), Type: typ, Account: s.Account, CustomerID: s.Customer.ID,
			EventIDs: []string{f.EventID}, OccurredAt: f.Created.UTC(), Data: raw,
		}
		// One event may carry several facts of the same customer: its
		// transition is one notification, from the first before to the last after.
		if last := len(out) - 1; last >= 0 && out[last].ID == n.ID {
			if typ == notify.EntitlementChanged {
				var prev notify.EntitlementData
				_ = json.Unmarshal(out[last].Data, &prev)
				now := data.(notify.EntitlementData)
				if sameEntitlement(prev.Before, now.After) {
					out = out[:last]
					return
				}
				n.Data, _ = json.Marshal(notify.EntitlementData{Before: prev.Before, After: now.After})
			}
			out[last] = n
			return
		}
		out = append(out, n)
	}
	if now := entitlementOf(s); !sameEntitlement(was, now) {
		add(notify.EntitlementChanged, f.EventID, notify.EntitlementData{Before: was, After: now})
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

func sameEntitlement(a, b notify.Entitlement) bool {
	if a.Entitled != b.Entitled || a.Plan != b.Plan || (a.AccessUntil == nil) != (b.AccessUntil == nil) {
		return false
	}
	return a.AccessUntil == nil || a.AccessUntil.Equal(*b.AccessUntil)
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

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// eventTypes returns the lookup of the type of b's events by id.
func (b *batch) eventTypes() func(string) string {
	var types map[string]string
	return func(id string) string {
		if types == nil {
			types = make(map[string]string, len(b.recs))
			for _, r := range b.recs {
				types[r.ID] = r.Type
			}
		}
		return types[id]
	}
}

// queueNotifications queues the insert of notes, new ids only, in their
// order, under notificationLockClass, and the signal to listeners.
func queueNotifications(b *pgx.Batch, notes []notify.Notification) {
	if len(notes) == 0 {
		return
	}
	var (
		ids, types, accounts, customers, events []string
		occurred                                []time.Time
		data                                    []string
	)
	for _, n := range notes {
		ids, types, accounts, customers = append(ids, n.ID), append(types, n.Type), append(accounts, n.Account), append(customers, n.CustomerID)
		ev, _ := json.Marshal(n.EventIDs)
		events, occurred, data = append(events, string(ev)), append(occurred, n.OccurredAt), append(data, string(n.Data))
	}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(notificationLockClass))
	b.Queue(`INSERT INTO notifications (id, position, type, account, customer_id, event_ids, occurred_at, data)
SELECT n.id, nextval('notifications_position_seq'), n.type, n.account, n.customer_id,
       ARRAY(SELECT jsonb_array_elements_text(n.event_ids::jsonb)), n.occurred_at, n.data::jsonb
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
       WITH ORDINALITY AS n(id, type, account, customer_id, event_ids, occurred_at, data, ord)
 WHERE NOT EXISTS (SELECT FROM notifications o WHERE o.id = n.id)
 ORDER BY n.ord
ON CONFLICT (id) DO NOTHING`, ids, types, accounts, customers, events, occurred, data)
	b.Queue(`SELECT pg_notify($1, '')`, NotificationsChannel)
}
