// Package notify is the product's side of the ledger's notifications
// (DESIGN §12): the JSON shape of a notification, and Verify, which checks a
// pushed delivery's Ledger-Signature header and decodes its body. It depends
// on the standard library alone, so a receiver imports it without the ledger.
package notify

import (
	"encoding/json"
	"time"
)

// Notification types: what changed, derived from the billing projection's
// state transitions, one notification per transition.
const (
	EntitlementChanged   = "customer.entitlement_changed"
	SubscriptionStatus   = "subscription.status_changed"
	InvoicePaid          = "invoice.paid"
	InvoicePaymentFailed = "invoice.payment_failed"
	DisputeOpened        = "charge.dispute.opened"
)

// Notification is one change the ledger tells the product about. ID is
// stable: the same transition always has the same id (across duplicate
// deliveries, rebuilds and re-sends), so receivers deduplicate by it.
type Notification struct {
	ID         string          `json:"id"`          // ntf_…
	Position   int64           `json:"position"`    // the order of the feed; ?after= takes it
	Type       string          `json:"type"`        // one of the constants above
	Account    string          `json:"account"`     // the Connect account, "" for the platform
	CustomerID string          `json:"customer_id"` // cus_…
	EventIDs   []string        `json:"event_ids"`   // the Stripe events that caused it
	OccurredAt time.Time       `json:"occurred_at"` // the causing event's created time
	Data       json.RawMessage `json:"data"`        // one of the *Data types below, by Type
}

// Entitlement is what a customer may use.
type Entitlement struct {
	Entitled    bool       `json:"entitled"`
	Plan        string     `json:"plan"`
	AccessUntil *time.Time `json:"access_until"`
}

// Equal reports whether e and o grant the same: entitlement, plan and
// access_until (the same instant, or both null).
func (e Entitlement) Equal(o Entitlement) bool {
	return e.Entitled == o.Entitled && e.Plan == o.Plan && (e.AccessUntil == nil) == (o.AccessUntil == nil) &&
		(e.AccessUntil == nil || e.AccessUntil.Equal(*o.AccessUntil))
}

// EntitlementData is the Data of customer.entitlement_changed.
type EntitlementData struct {
	Before Entitlement `json:"before"`
	After  Entitlement `json:"after"`
}

// SubscriptionStatusData is the Data of subscription.status_changed; Before
// is "" for a subscription the ledger had not seen.
type SubscriptionStatusData struct {
	SubscriptionID string `json:"subscription_id"`
	Before         string `json:"before"`
	After          string `json:"after"`
}

// InvoiceData is the Data of invoice.paid and invoice.payment_failed.
type InvoiceData struct {
	InvoiceID      string `json:"invoice_id"`
	SubscriptionID string `json:"subscription_id"`
	Status         string `json:"status"`
	AmountDue      int64  `json:"amount_due"`
	AmountPaid     int64  `json:"amount_paid"`
	Currency       string `json:"currency"`
	AttemptCount   int64  `json:"attempt_count"`
}

// DisputeData is the Data of charge.dispute.opened.
type DisputeData struct {
	DisputeID string `json:"dispute_id"`
	ChargeID  string `json:"charge_id"`
	Status    string `json:"status"`
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
}
