package domain

import (
	"cmp"
	"encoding/json"
	"errors"
	"time"
)

// Fact is what one Stripe event tells the ledger: a snapshot of one object,
// stamped with the event's id and created time. Exactly one snapshot pointer
// is set, except for checkout.session.completed, whose fact only says that
// the customer exists.
type Fact struct {
	EventID    string
	Created    time.Time
	CustomerID string // empty when the event names no customer (a guest charge, a dispute); folds skip such facts

	Customer     *Customer
	Subscription *Subscription
	Invoice      *Invoice
	Charge       *Charge
	Dispute      *Dispute
}

type objectKind int

const (
	customerObject objectKind = iota + 1
	subscriptionObject
	invoiceObject
	checkoutObject
	chargeObject
	disputeObject
)

var eventKinds = map[string]objectKind{
	"customer.created": customerObject,
	"customer.updated": customerObject,
	"customer.deleted": customerObject,

	"customer.subscription.created":                subscriptionObject,
	"customer.subscription.updated":                subscriptionObject,
	"customer.subscription.deleted":                subscriptionObject,
	"customer.subscription.paused":                 subscriptionObject,
	"customer.subscription.resumed":                subscriptionObject,
	"customer.subscription.trial_will_end":         subscriptionObject,
	"customer.subscription.pending_update_applied": subscriptionObject,

	"invoice.created":              invoiceObject,
	"invoice.finalized":            invoiceObject,
	"invoice.paid":                 invoiceObject,
	"invoice.payment_succeeded":    invoiceObject,
	"invoice.payment_failed":       invoiceObject,
	"invoice.voided":               invoiceObject,
	"invoice.marked_uncollectible": invoiceObject,

	"checkout.session.completed": checkoutObject,
	"charge.refunded":            chargeObject,
	"charge.dispute.created":     disputeObject,
	"charge.dispute.closed":      disputeObject,
}

// the data.object "object" each kind must carry
var objectNames = map[objectKind]string{
	customerObject:     "customer",
	subscriptionObject: "subscription",
	invoiceObject:      "invoice",
	checkoutObject:     "checkout.session",
	chargeObject:       "charge",
	disputeObject:      "dispute",
}

// Handles reports whether Decode understands events of the given type.
// Events of other types are stored and streamed like any other, but carry no
// facts; callers count them rather than fail.
func Handles(eventType string) bool {
	_, ok := eventKinds[eventType]
	return ok
}

// Decode turns a Stripe event (its parsed envelope and raw payload) into
// facts, reading both the API 2023-10-16 shapes and the 2025-03-31+ ones.
// Events of a type it does not handle (see Handles) give no facts and no
// error. A handled event whose data.object cannot be read fails with an
// EINVALID *Error naming the event and the field.
func Decode(env Envelope, payload []byte, plans Plans) ([]Fact, error) {
	kind, ok := eventKinds[env.Type]
	if !ok {
		return nil, nil
	}
	var event struct {
		Data struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(payload, &event); err != nil {
		return nil, decodeError(env, "malformed JSON: %v", err)
	}
	obj := event.Data.Object
	var head rawObject
	if err := unmarshalObject(env, obj, &head); err != nil {
		return nil, err
	}
	switch {
	case head.Object != objectNames[kind]:
		return nil, decodeError(env, "data.object.object is %q, want %q", head.Object, objectNames[kind])
	case head.ID == "":
		return nil, decodeError(env, "data.object.id is missing")
	}
	fact := Fact{EventID: env.ID, Created: env.Created, CustomerID: expandableID(head.Customer)}
	var err error
	switch kind {
	case customerObject:
		fact.CustomerID = head.ID
		fact.Customer, err = decodeCustomer(env, obj)
	case subscriptionObject:
		fact.Subscription, err = decodeSubscription(env, obj, plans)
	case invoiceObject:
		fact.Invoice, err = decodeInvoice(env, obj)
	case checkoutObject:
		// The session only tells us that its customer exists.
	case chargeObject:
		fact.Charge, err = decodeCharge(env, obj)
	case disputeObject:
		fact.Dispute, err = decodeDispute(env, obj)
		if err == nil {
			fact.CustomerID = fact.Dispute.CustomerID
		}
	}
	if err != nil {
		return nil, err
	}
	return []Fact{fact}, nil
}

func decodeCustomer(env Envelope, obj json.RawMessage) (*Customer, error) {
	var raw struct {
		ID    string `json:"id"`
		Email string `json:"email"`
		Name  string `json:"name"`
	}
	if err := unmarshalObject(env, obj, &raw); err != nil {
		return nil, err
	}
	return &Customer{
		ID:               raw.ID,
		Email:            raw.Email,
		Name:             raw.Name,
		Deleted:          env.Type == "customer.deleted",
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}, nil
}

type rawSubscriptionItem struct {
	Quantity           int64 `json:"quantity"`
	CurrentPeriodStart int64 `json:"current_period_start"` // 2025-03-31+
	CurrentPeriodEnd   int64 `json:"current_period_end"`   // 2025-03-31+
	Price              *struct {
		ID        string          `json:"id"`
		LookupKey string          `json:"lookup_key"`
		Product   json.RawMessage `json:"product"`
	} `json:"price"`
}

func decodeSubscription(env Envelope, obj json.RawMessage, plans Plans) (*Subscription, error) {
	var raw struct {
		ID                 string          `json:"id"`
		Customer           json.RawMessage `json:"customer"`
		Status             string          `json:"status"`
		CancelAtPeriodEnd  bool            `json:"cancel_at_period_end"`
		CanceledAt         int64           `json:"canceled_at"`
		EndedAt            int64           `json:"ended_at"`
		TrialEnd           int64           `json:"trial_end"`
		CurrentPeriodStart int64           `json:"current_period_start"` // up to 2025-02-24
		CurrentPeriodEnd   int64           `json:"current_period_end"`   // up to 2025-02-24
		Items              struct {
			Data []rawSubscriptionItem `json:"data"`
		} `json:"items"`
	}
	if err := unmarshalObject(env, obj, &raw); err != nil {
		return nil, err
	}
	sub := &Subscription{
		ID:                raw.ID,
		CustomerID:        expandableID(raw.Customer),
		Status:            raw.Status,
		CancelAtPeriodEnd: raw.CancelAtPeriodEnd,
		CanceledAt:        unixTime(raw.CanceledAt),
		EndedAt:           unixTime(raw.EndedAt),
		TrialEnd:          unixTime(raw.TrialEnd),
		Deleted:           env.Type == "customer.subscription.deleted",
		LastEventID:       env.ID,
		LastEventCreated:  env.Created,
	}
	switch {
	case sub.CustomerID == "":
		return nil, decodeError(env, "data.object.customer is missing")
	case sub.Status == "":
		return nil, decodeError(env, "data.object.status is missing")
	}
	periodStart, periodEnd := raw.CurrentPeriodStart, raw.CurrentPeriodEnd
	if periodEnd == 0 {
		// Newer API versions put the period on each item; take the item that ends last.
		for _, item := range raw.Items.Data {
			if item.CurrentPeriodEnd > periodEnd {
				periodStart, periodEnd = item.CurrentPeriodStart, item.CurrentPeriodEnd
			}
		}
	}
	sub.CurrentPeriodStart, sub.CurrentPeriodEnd = unixTime(periodStart), unixTime(periodEnd)
	if len(raw.Items.Data) > 0 {
		item := raw.Items.Data[0]
		if item.Price == nil {
			return nil, decodeError(env, "data.object.items.data[0].price is missing")
		}
		sub.Quantity = item.Quantity
		sub.PriceID = item.Price.ID
		sub.LookupKey = item.Price.LookupKey
		sub.ProductID = expandableID(item.Price.Product)
		sub.Plan = plans.Plan(sub.PriceID, sub.LookupKey)
	}
	return sub, nil
}

type rawInvoiceLine struct {
	Type         string          `json:"type"`         // up to 2025-02-24: "subscription" or "invoiceitem"
	Subscription json.RawMessage `json:"subscription"` // up to 2025-02-24
	Period       struct {
		Start int64 `json:"start"`
		End   int64 `json:"end"`
	} `json:"period"`
	Parent *struct { // 2025-03-31+
		Type                    string `json:"type"`
		SubscriptionItemDetails *struct {
			Subscription string `json:"subscription"`
		} `json:"subscription_item_details"`
	} `json:"parent"`
}

// subscriptionID is the subscription the line bills, or "" for a line outside
// any subscription; ok reports whether the line belongs to a subscription at all.
func (l rawInvoiceLine) subscriptionID() (id string, ok bool) {
	if id := expandableID(l.Subscription); id != "" {
		return id, true
	}
	if l.Parent != nil && l.Parent.SubscriptionItemDetails != nil && l.Parent.SubscriptionItemDetails.Subscription != "" {
		return l.Parent.SubscriptionItemDetails.Subscription, true
	}
	return "", l.Type == "subscription" || (l.Parent != nil && l.Parent.Type == "subscription_item_details")
}

func decodeInvoice(env Envelope, obj json.RawMessage) (*Invoice, error) {
	var raw struct {
		ID           string          `json:"id"`
		Customer     json.RawMessage `json:"customer"`
		Subscription json.RawMessage `json:"subscription"` // up to 2025-02-24
		Parent       *struct {       // 2025-03-31+
			SubscriptionDetails *struct {
				Subscription json.RawMessage `json:"subscription"`
			} `json:"subscription_details"`
		} `json:"parent"`
		Status            string `json:"status"`
		AmountDue         int64  `json:"amount_due"`
		AmountPaid        int64  `json:"amount_paid"`
		Currency          string `json:"currency"`
		PeriodStart       int64  `json:"period_start"`
		PeriodEnd         int64  `json:"period_end"`
		AttemptCount      int64  `json:"attempt_count"`
		StatusTransitions struct {
			PaidAt int64 `json:"paid_at"`
		} `json:"status_transitions"`
		Lines struct {
			Data []rawInvoiceLine `json:"data"`
		} `json:"lines"`
	}
	if err := unmarshalObject(env, obj, &raw); err != nil {
		return nil, err
	}
	inv := &Invoice{
		ID:               raw.ID,
		CustomerID:       expandableID(raw.Customer),
		SubscriptionID:   expandableID(raw.Subscription),
		Status:           raw.Status,
		AmountDue:        raw.AmountDue,
		AmountPaid:       raw.AmountPaid,
		Currency:         raw.Currency,
		PeriodStart:      unixTime(raw.PeriodStart),
		PeriodEnd:        unixTime(raw.PeriodEnd),
		PaidAt:           unixTime(raw.StatusTransitions.PaidAt),
		AttemptCount:     raw.AttemptCount,
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}
	switch {
	case inv.CustomerID == "":
		return nil, decodeError(env, "data.object.customer is missing")
	case inv.Status == "":
		return nil, decodeError(env, "data.object.status is missing")
	}
	if raw.Parent != nil && raw.Parent.SubscriptionDetails != nil {
		inv.SubscriptionID = cmp.Or(expandableID(raw.Parent.SubscriptionDetails.Subscription), inv.SubscriptionID)
	}
	if len(raw.Lines.Data) == 0 {
		inv.PaidPeriodStart, inv.PaidPeriodEnd = inv.PeriodStart, inv.PeriodEnd
		return inv, nil
	}
	var start, end int64
	for _, line := range raw.Lines.Data {
		id, ok := line.subscriptionID()
		if !ok {
			continue
		}
		if inv.SubscriptionID == "" {
			inv.SubscriptionID = id
		}
		if start == 0 || line.Period.Start < start {
			start = line.Period.Start
		}
		end = max(end, line.Period.End)
	}
	inv.PaidPeriodStart, inv.PaidPeriodEnd = unixTime(start), unixTime(end)
	return inv, nil
}

func decodeCharge(env Envelope, obj json.RawMessage) (*Charge, error) {
	var raw struct {
		ID             string          `json:"id"`
		Customer       json.RawMessage `json:"customer"`
		Invoice        json.RawMessage `json:"invoice"`
		Currency       string          `json:"currency"`
		Amount         int64           `json:"amount"`
		AmountRefunded int64           `json:"amount_refunded"`
		Refunded       bool            `json:"refunded"`
	}
	if err := unmarshalObject(env, obj, &raw); err != nil {
		return nil, err
	}
	return &Charge{
		ID:               raw.ID,
		CustomerID:       expandableID(raw.Customer),
		InvoiceID:        expandableID(raw.Invoice),
		Currency:         raw.Currency,
		Amount:           raw.Amount,
		AmountRefunded:   raw.AmountRefunded,
		Refunded:         raw.Refunded,
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}, nil
}

func decodeDispute(env Envelope, obj json.RawMessage) (*Dispute, error) {
	var raw struct {
		ID       string          `json:"id"`
		Charge   json.RawMessage `json:"charge"`
		Status   string          `json:"status"`
		Currency string          `json:"currency"`
		Amount   int64           `json:"amount"`
	}
	if err := unmarshalObject(env, obj, &raw); err != nil {
		return nil, err
	}
	d := &Dispute{
		ID:               raw.ID,
		ChargeID:         expandableID(raw.Charge),
		Status:           raw.Status,
		Currency:         raw.Currency,
		Amount:           raw.Amount,
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}
	if d.ChargeID == "" {
		return nil, decodeError(env, "data.object.charge is missing")
	}
	var charge rawObject // an expanded charge names its customer
	if json.Unmarshal(raw.Charge, &charge) == nil {
		d.CustomerID = expandableID(charge.Customer)
	}
	return d, nil
}

// unmarshalObject decodes data.object into v, reporting the field that does not fit.
func unmarshalObject(env Envelope, obj json.RawMessage, v any) error {
	err := json.Unmarshal(obj, v)
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &typeErr):
		return decodeError(env, "data.object.%s: a JSON %s cannot be read as %s", typeErr.Field, typeErr.Value, typeErr.Type)
	default:
		return decodeError(env, "malformed data.object: %v", err)
	}
}

func decodeError(env Envelope, format string, args ...any) *Error {
	return Errorf(EINVALID, "event %s (%s): "+format, append([]any{env.ID, env.Type}, args...)...)
}

// unixTime converts a Stripe timestamp; Stripe's null and 0 both mean "none".
func unixTime(sec int64) *time.Time {
	if sec == 0 {
		return nil
	}
	t := time.Unix(sec, 0).UTC()
	return &t
}
