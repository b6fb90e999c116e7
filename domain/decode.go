package domain

import (
	"cmp"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Fact is what one Stripe event tells the ledger: a snapshot of one object,
// stamped with the event's id and created time. Exactly one snapshot pointer
// is set, except for checkout.session.completed, whose fact only says that
// the customer exists.
type Fact struct {
	EventID    string
	Created    time.Time
	Account    string // the Connect account the event came from, "" for the platform
	CustomerID string // empty when the event names no customer (a guest charge, a dispute); folds skip such facts

	Customer     *Customer
	Subscription *Subscription
	Invoice      *Invoice
	Charge       *Charge
	Dispute      *Dispute
	// InvoicePayment (API 2025-03-31+) names its invoice, not its customer:
	// CustomerID is empty unless the invoice came expanded, and the
	// projection finds the customer through the invoice's links (DESIGN §8).
	InvoicePayment *InvoicePayment
}

// Key names the customer the fact is about.
func (f Fact) Key() CustomerKey { return CustomerKey{Account: f.Account, ID: f.CustomerID} }

type objectKind int

const (
	customerObject objectKind = iota + 1
	subscriptionObject
	invoiceObject
	checkoutObject
	chargeObject
	disputeObject
	invoicePaymentObject
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
	"customer.subscription.pending_update_expired": subscriptionObject,

	"invoice.created":                  invoiceObject,
	"invoice.updated":                  invoiceObject,
	"invoice.finalized":                invoiceObject,
	"invoice.finalization_failed":      invoiceObject,
	"invoice.paid":                     invoiceObject,
	"invoice.payment_succeeded":        invoiceObject,
	"invoice.payment_failed":           invoiceObject,
	"invoice.payment_action_required":  invoiceObject,
	"invoice.payment_attempt_required": invoiceObject,
	"invoice.voided":                   invoiceObject,
	"invoice.marked_uncollectible":     invoiceObject,

	"checkout.session.completed": checkoutObject,
	"charge.refunded":            chargeObject,
	"charge.dispute.created":     disputeObject,
	"charge.dispute.closed":      disputeObject,
	"invoice_payment.paid":       invoicePaymentObject,
}

// the data.object "object" each kind must carry
var objectNames = [...]string{
	customerObject:       "customer",
	subscriptionObject:   "subscription",
	invoiceObject:        "invoice",
	checkoutObject:       "checkout.session",
	chargeObject:         "charge",
	disputeObject:        "dispute",
	invoicePaymentObject: "invoice_payment",
}

// TestedAPIVersions are the Stripe API versions whose payload shapes Decode
// is tested with (domaintest renders lifecycles in each). Events of other
// versions are still decoded by shape; the projections count them and say so.
var TestedAPIVersions = []string{"2023-10-16", "2024-06-20", "2025-03-31.basil", "2025-09-30.clover", "2026-03-25.dahlia"}

// TestedAPIVersion reports whether version is one of TestedAPIVersions.
func TestedAPIVersion(version string) bool { return slices.Contains(TestedAPIVersions, version) }

// HandledTypes are the event types Decode understands, sorted: the ones to
// enable on a Stripe webhook endpoint (ledger events prints them).
func HandledTypes() []string { return slices.Sorted(maps.Keys(eventKinds)) }

// Handles reports whether Decode understands events of the given type.
// Events of other types are stored and streamed like any other, but carry no
// facts; callers count them rather than fail.
func Handles(eventType string) bool {
	_, ok := kindOf(eventType)
	return ok
}

// Decode turns a Stripe event (its parsed envelope and raw payload) into its
// fact, reading both the API 2023-10-16 shapes and the 2025-03-31+ ones. An
// event tells at most one fact: an event of a type Decode does not handle
// (see Handles) gives a nil *Fact and no error; a handled one always gives a
// fact or an error. A handled event whose data.object cannot be read fails
// with an EINVALID *Error naming the event and the field.
func Decode(env Envelope, payload []byte, plans Plans) (*Fact, error) {
	return decode(env, payload, plans, nil)
}

// decode is Decode; when links is not nil, it also sets *links to the
// links of the charge, invoice or dispute it reads (see DecodeLinks).
func decode(env Envelope, payload []byte, plans Plans, links *Links) (*Fact, error) {
	kind, ok := kindOf(env.Type)
	if !ok {
		return nil, nil
	}
	// Rebuilds are bound by this function: the event type picks the one
	// struct data.object is read into, so the payload is parsed once.
	fact := &Fact{EventID: env.ID, Created: env.Created, Account: env.Account}
	var err error
	switch kind {
	case customerObject:
		var raw *rawCustomer
		if raw, err = readObject[rawCustomer](env, kind, payload); err == nil {
			fact.CustomerID = raw.ID
			fact.Customer = raw.customer(env)
		}
	case subscriptionObject:
		var ev *event[rawSubscription]
		if ev, err = readEvent[rawSubscription](env, kind, payload); err == nil {
			raw := &ev.Data.Object
			fact.CustomerID = raw.customer()
			if fact.Subscription, err = raw.subscription(env, plans); err == nil {
				fact.Subscription.Previous, err = previousAttributes(env, ev.Data.PreviousAttributes)
			}
		}
	case invoiceObject:
		var raw *rawInvoice
		if raw, err = readObject[rawInvoice](env, kind, payload); err == nil {
			fact.CustomerID = raw.customer()
			fact.Invoice, err = raw.invoice(env)
			setLinks(links, &raw.rawObject, &raw.linkFields, raw.Charge)
		}
	case checkoutObject:
		// The session only tells us that its customer exists.
		var raw *rawObject
		if raw, err = readObject[rawObject](env, kind, payload); err == nil {
			fact.CustomerID = raw.customer()
		}
	case chargeObject:
		var raw *rawCharge
		if raw, err = readObject[rawCharge](env, kind, payload); err == nil {
			fact.CustomerID = raw.customer()
			fact.Charge = raw.charge(env)
			setLinks(links, &raw.rawObject, &raw.linkFields, raw.Charge)
		}
	case disputeObject:
		var raw *rawDispute
		if raw, err = readObject[rawDispute](env, kind, payload); err == nil {
			fact.Dispute = raw.dispute(env)
			fact.CustomerID, err = raw.Charge.customer(env, "charge")
			setLinks(links, &raw.rawObject, &raw.linkFields, expandable(raw.Charge.ID))
		}
	case invoicePaymentObject:
		var raw *rawInvoicePayment
		if raw, err = readObject[rawInvoicePayment](env, kind, payload); err == nil {
			fact.InvoicePayment = raw.invoicePayment(env)
			fact.CustomerID, err = raw.Invoice.customer(env, "invoice")
			raw.linkFields.Invoice = expandable(raw.Invoice.ID)
			setLinks(links, &raw.rawObject, &raw.linkFields, raw.Charge)
		}
	}
	if err != nil {
		return nil, err
	}
	observedFact(env, payload, fact)
	return fact, nil
}

// setLinks sets *links, when asked for, to the links of an object decode read.
func setLinks(links *Links, head *rawObject, f *linkFields, charge expandable) {
	if links != nil {
		*links = newLinks(head, f, charge)
	}
}

// event is a Stripe event as Decode reads it: data.object into T, and
// data.previous_attributes as it came.
type event[T any] struct {
	Data struct {
		Object             T               `json:"object"`
		PreviousAttributes json.RawMessage `json:"previous_attributes"`
	} `json:"data"`
}

// dataObject is a *T that embeds rawObject, the head every data.object has.
type dataObject[T any] interface {
	*T
	head() *rawObject
}

func (o *rawObject) head() *rawObject { return o }

// readObject reads payload's data.object into a T in one pass. When that
// fails, or the head is not the object kind wants, it finds what is wrong
// as a field-by-field read would: the JSON, then the head, then the fields.
func readObject[T any, PT dataObject[T]](env Envelope, kind objectKind, payload []byte) (PT, error) {
	ev, err := readEvent[T, PT](env, kind, payload)
	if err != nil {
		return nil, err
	}
	return PT(&ev.Data.Object), nil
}

// readEvent is readObject, returning the whole event.
func readEvent[T any, PT dataObject[T]](env Envelope, kind objectKind, payload []byte) (*event[T], error) {
	ev := new(event[T])
	err := unmarshal(payload, ev)
	if head := PT(&ev.Data.Object).head(); err == nil && head.Object == objectNames[kind] && head.ID != "" {
		return ev, nil
	}
	if err := checkHead(env, kind, payload); err != nil {
		return nil, err
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		field, _ := strings.CutPrefix(typeErr.Field, "data.object.")
		return nil, decodeError(env, "data.object.%s: a JSON %s cannot be read as %s", field, typeErr.Value, typeErr.Type)
	}
	return nil, decodeError(env, "malformed data.object: %v", err)
}

// checkHead reports what is wrong with the payload's JSON or with data.object's
// object and id, or nil when they are right.
func checkHead(env Envelope, kind objectKind, payload []byte) error {
	var event struct {
		Data struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(payload, &event); err != nil {
		return decodeError(env, "malformed JSON: %v", err)
	}
	var head rawObject
	err := json.Unmarshal(event.Data.Object, &head)
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &typeErr):
		return decodeError(env, "data.object.%s: a JSON %s cannot be read as %s", typeErr.Field, typeErr.Value, typeErr.Type)
	case err != nil:
		return decodeError(env, "malformed data.object: %v", err)
	case head.Object != objectNames[kind]:
		return decodeError(env, "data.object.object is %q, want %q", head.Object, objectNames[kind])
	case head.ID == "":
		return decodeError(env, "data.object.id is missing")
	}
	return nil
}

type rawCustomer struct {
	rawObject
	Email string `json:"email"`
	Name  string `json:"name"`
}

func (raw *rawCustomer) customer(env Envelope) *Customer {
	return &Customer{
		Account:          env.Account,
		ID:               raw.ID,
		Email:            raw.Email,
		Name:             raw.Name,
		Deleted:          env.Type == "customer.deleted",
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}
}

type rawSubscription struct {
	rawObject
	Status             string               `json:"status"`
	CancelAtPeriodEnd  bool                 `json:"cancel_at_period_end"`
	CancelAt           int64                `json:"cancel_at"`
	CanceledAt         int64                `json:"canceled_at"`
	EndedAt            int64                `json:"ended_at"`
	TrialEnd           int64                `json:"trial_end"`
	CollectionMethod   string               `json:"collection_method"`
	LatestInvoice      expandable           `json:"latest_invoice"`
	CurrentPeriodStart int64                `json:"current_period_start"` // up to 2025-02-24
	CurrentPeriodEnd   int64                `json:"current_period_end"`   // up to 2025-02-24
	Items              rawSubscriptionItems `json:"items"`
}

type rawSubscriptionItems struct {
	Data []rawSubscriptionItem `json:"data"`
}

type rawSubscriptionItem struct {
	Quantity           int64     `json:"quantity"`
	CurrentPeriodStart int64     `json:"current_period_start"` // 2025-03-31+
	CurrentPeriodEnd   int64     `json:"current_period_end"`   // 2025-03-31+
	Price              *rawPrice `json:"price"`
}

type rawPrice struct {
	ID        string     `json:"id"`
	LookupKey string     `json:"lookup_key"`
	Product   expandable `json:"product"`
}

// period is the subscription's current period: from 2025-03-31 it sits on
// each item, and the item that ends last gives it.
func (items *rawSubscriptionItems) period() (start, end int64) {
	for _, item := range items.Data {
		if item.CurrentPeriodEnd > end {
			start, end = item.CurrentPeriodStart, item.CurrentPeriodEnd
		}
	}
	return start, end
}

// key is Subscription.Items: every item's price id and quantity.
func (items *rawSubscriptionItems) key() string {
	var room [64]byte // most subscriptions' whole key: one allocation, the string's
	b := room[:0]
	for i, item := range items.Data {
		if i > 0 {
			b = append(b, ' ')
		}
		if item.Price != nil {
			b = append(b, item.Price.ID...)
		}
		b = append(b, '*')
		b = strconv.AppendInt(b, item.Quantity, 10)
	}
	return string(b)
}

// planItem is the item a subscription's plan comes from (DESIGN §4): the
// first, in LEDGER_PLANS order, whose price is mapped; else the first item.
func (items *rawSubscriptionItems) planItem(plans Plans) *rawSubscriptionItem {
	best, bestRank := 0, -1
	for i, item := range items.Data {
		if item.Price == nil {
			continue
		}
		if r := plans.rank(item.Price.ID); r >= 0 && (bestRank < 0 || r < bestRank) {
			best, bestRank = i, r
		}
	}
	return &items.Data[best]
}

func (raw *rawSubscription) subscription(env Envelope, plans Plans) (*Subscription, error) {
	switch {
	case raw.customer() == "":
		return nil, decodeError(env, "data.object.customer is missing")
	case raw.Status == "":
		return nil, decodeError(env, "data.object.status is missing")
	}
	for i, item := range raw.Items.Data {
		if item.Price == nil {
			return nil, decodeError(env, "data.object.items.data[%d].price is missing", i)
		}
	}
	periodStart, periodEnd := raw.CurrentPeriodStart, raw.CurrentPeriodEnd
	if periodEnd == 0 {
		periodStart, periodEnd = raw.Items.period()
	}
	sub, times := withTimes[Subscription]()
	*sub = Subscription{
		Account:            env.Account,
		ID:                 raw.ID,
		CustomerID:         raw.customer(),
		Status:             raw.Status,
		CancelAtPeriodEnd:  raw.CancelAtPeriodEnd,
		CurrentPeriodStart: unixTimeIn(&times, periodStart),
		CurrentPeriodEnd:   unixTimeIn(&times, periodEnd),
		CancelAt:           unixTimeIn(&times, raw.CancelAt),
		CanceledAt:         unixTimeIn(&times, raw.CanceledAt),
		EndedAt:            unixTimeIn(&times, raw.EndedAt),
		TrialEnd:           unixTimeIn(&times, raw.TrialEnd),
		CollectionMethod:   raw.CollectionMethod,
		LatestInvoiceID:    string(raw.LatestInvoice),
		Items:              raw.Items.key(),
		Deleted:            env.Type == "customer.subscription.deleted",
		LastEventID:        env.ID,
		LastEventCreated:   env.Created,
	}
	if len(raw.Items.Data) > 0 {
		item := raw.Items.planItem(plans)
		sub.Quantity = item.Quantity
		sub.PriceID = item.Price.ID
		sub.LookupKey = item.Price.LookupKey
		sub.ProductID = string(item.Price.Product)
		sub.Plan = plans.Plan(sub.PriceID, sub.LookupKey)
	}
	return sub, nil
}

// previousAttributes reads data.previous_attributes of a subscription event
// into Subscription.Previous: the chain attributes it names, in the text
// Subscription.attribute gives them. Items that carry periods (2025-03-31+)
// also give the previous current period, unless it is named itself.
func previousAttributes(env Envelope, raw json.RawMessage) (map[string]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	prev, err := chainValues(raw)
	if err != nil {
		return nil, decodeError(env, "data.previous_attributes: %v", err)
	}
	var out map[string]string
	for i, name := range chainAttributes {
		v := prev[i]
		if v == nil {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		var err error
		switch name {
		case "status", "collection_method":
			out[name], err = jsonText(v)
		case "cancel_at_period_end":
			var b bool
			b, err = jsonBool(v)
			out[name] = strconv.FormatBool(b)
		case "latest_invoice":
			out[name] = expandableID(v)
		case "items":
			var items rawSubscriptionItems
			if err = unmarshal(v, &items); err == nil {
				out[name] = items.key()
				if start, end := items.period(); end != 0 && prev[currentPeriodEnd] == nil {
					out["current_period_start"], out["current_period_end"] = unixText(unixTime(start)), unixText(unixTime(end))
				}
			}
		default: // a timestamp or null
			out[name], err = jsonTimestampText(v)
		}
		if err != nil {
			return nil, decodeError(env, "data.previous_attributes.%s: %v", name, err)
		}
	}
	return out, nil
}

// jsonText is json.Unmarshal of v, valid JSON, into a string, read in place
// when v is a string without escapes.
func jsonText(v json.RawMessage) (string, error) {
	if v[0] == '"' {
		if text, ok := plainString(v); ok {
			return text, nil
		}
	}
	var text string
	err := json.Unmarshal(v, &text)
	return text, err
}

// jsonBool is json.Unmarshal of v, valid JSON, into a bool.
func jsonBool(v json.RawMessage) (bool, error) {
	switch string(v) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	var b bool
	err := json.Unmarshal(v, &b)
	return b, err
}

// jsonTimestampText is v, valid JSON, a Stripe timestamp or null, in the
// text Subscription.attribute gives times ("" for none), as json.Unmarshal
// reads it into an *int64.
func jsonTimestampText(v json.RawMessage) (string, error) {
	if sec, err := strconv.ParseInt(string(v), 10, 64); err == nil { // as json.Unmarshal reads an int64 (v is JSON: no sign +)
		return unixText(unixTime(sec)), nil
	}
	var sec *int64
	if err := json.Unmarshal(v, &sec); err != nil || sec == nil {
		return "", err
	}
	return unixText(unixTime(*sec)), nil
}

// currentPeriodEnd is the index of "current_period_end" in chainAttributes.
var currentPeriodEnd = slices.Index(chainAttributes[:], "current_period_end")

// chainValues are the values that previous_attributes, JSON, gives the
// chainAttributes, as they stand: nil for one it does not name, the last
// for one named twice (as json.Unmarshal into a map keeps it). They are
// read in place by the scanner unless a key has escapes (encoding/json
// reads those, and says what is wrong with what is not an object).
func chainValues(raw []byte) (values [len(chainAttributes)]json.RawMessage, err error) {
	if eachMember(raw, func(key, value []byte) {
		for i, name := range chainAttributes {
			if name == string(key) {
				values[i] = value
			}
		}
	}) {
		return values, nil
	}
	var prev map[string]json.RawMessage
	if err := json.Unmarshal(raw, &prev); err != nil {
		return values, err
	}
	for i, name := range chainAttributes {
		values[i] = prev[name]
	}
	return values, nil
}

type rawInvoice struct {
	rawObject
	linkFields              // before basil: its charge and payment intent
	Subscription expandable `json:"subscription"` // up to 2025-02-24
	Parent       struct {   // 2025-03-31+
		SubscriptionDetails struct {
			Subscription expandable `json:"subscription"`
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

type rawInvoiceLine struct {
	Type         string     `json:"type"`         // up to 2025-02-24: "subscription" or "invoiceitem"
	Subscription expandable `json:"subscription"` // up to 2025-02-24
	Period       struct {
		Start int64 `json:"start"`
		End   int64 `json:"end"`
	} `json:"period"`
	Parent struct { // 2025-03-31+
		Type                    string `json:"type"`
		SubscriptionItemDetails struct {
			Subscription string `json:"subscription"`
		} `json:"subscription_item_details"`
	} `json:"parent"`
}

// subscriptionID is the subscription the line bills, or "" for a line outside
// any subscription; ok reports whether the line belongs to a subscription at all.
func (l *rawInvoiceLine) subscriptionID() (id string, ok bool) {
	if l.Subscription != "" {
		return string(l.Subscription), true
	}
	if id := l.Parent.SubscriptionItemDetails.Subscription; id != "" {
		return id, true
	}
	return "", l.Type == "subscription" || l.Parent.Type == "subscription_item_details"
}

func (raw *rawInvoice) invoice(env Envelope) (*Invoice, error) {
	switch {
	case raw.customer() == "":
		return nil, decodeError(env, "data.object.customer is missing")
	case raw.Status == "":
		return nil, decodeError(env, "data.object.status is missing")
	}
	subscriptionID := string(raw.Subscription)
	subscriptionID = cmp.Or(string(raw.Parent.SubscriptionDetails.Subscription), subscriptionID)
	var paidStart, paidEnd int64
	for i := range raw.Lines.Data {
		line := &raw.Lines.Data[i]
		id, ok := line.subscriptionID()
		if !ok {
			continue
		}
		if subscriptionID == "" {
			subscriptionID = id
		}
		if paidStart == 0 || line.Period.Start < paidStart {
			paidStart = line.Period.Start
		}
		paidEnd = max(paidEnd, line.Period.End)
	}
	inv, times := withTimes[Invoice]()
	*inv = Invoice{
		Account:          env.Account,
		ID:               raw.ID,
		CustomerID:       raw.customer(),
		SubscriptionID:   subscriptionID,
		Status:           raw.Status,
		AmountDue:        raw.AmountDue,
		AmountPaid:       raw.AmountPaid,
		Currency:         raw.Currency,
		PeriodStart:      unixTimeIn(&times, raw.PeriodStart),
		PeriodEnd:        unixTimeIn(&times, raw.PeriodEnd),
		PaidAt:           unixTimeIn(&times, raw.StatusTransitions.PaidAt),
		AttemptCount:     raw.AttemptCount,
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}
	// Only subscription lines say what was paid for: the invoice's own
	// period is, for a renewal, the one that just ended (DESIGN §4).
	inv.PaidPeriodStart, inv.PaidPeriodEnd = unixTimeIn(&times, paidStart), unixTimeIn(&times, paidEnd)
	return inv, nil
}

type rawCharge struct {
	rawObject
	linkFields            // its invoice and payment intent
	Currency       string `json:"currency"`
	Amount         int64  `json:"amount"`
	AmountRefunded int64  `json:"amount_refunded"`
	Refunded       bool   `json:"refunded"`
}

func (raw *rawCharge) charge(env Envelope) *Charge {
	return &Charge{
		Account:          env.Account,
		ID:               raw.ID,
		CustomerID:       raw.customer(),
		InvoiceID:        string(raw.Invoice),
		Currency:         raw.Currency,
		Amount:           raw.Amount,
		AmountRefunded:   raw.AmountRefunded,
		Refunded:         raw.Refunded,
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}
}

type rawDispute struct {
	rawObject
	linkFields                  // its payment intent; Charge below hides linkFields.Charge
	Charge     expandableObject `json:"charge"`
	Status     string           `json:"status"`
	Currency   string           `json:"currency"`
	Amount     int64            `json:"amount"`
}

func (raw *rawDispute) dispute(env Envelope) *Dispute {
	return &Dispute{
		Account:          env.Account,
		ID:               raw.ID,
		CustomerID:       raw.Charge.CustomerID,
		ChargeID:         raw.Charge.ID,
		Status:           raw.Status,
		Currency:         raw.Currency,
		Amount:           raw.Amount,
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}
}

// rawInvoicePayment is an InvoicePayment (API 2025-03-31+, stripe-go v82's
// InvoicePayment): a payment of one invoice, which it names; its customer
// only when the invoice came expanded.
type rawInvoicePayment struct {
	rawObject
	linkFields                         // none at the top but invoice; Invoice below hides linkFields.Invoice
	Invoice           expandableObject `json:"invoice"`
	Status            string           `json:"status"` // open, paid or canceled
	AmountPaid        int64            `json:"amount_paid"`
	Currency          string           `json:"currency"`
	StatusTransitions struct {
		PaidAt int64 `json:"paid_at"`
	} `json:"status_transitions"`
}

func (raw *rawInvoicePayment) invoicePayment(env Envelope) *InvoicePayment {
	return &InvoicePayment{
		Account:          env.Account,
		ID:               raw.ID,
		InvoiceID:        raw.Invoice.ID,
		CustomerID:       raw.Invoice.CustomerID,
		AmountPaid:       raw.AmountPaid,
		Currency:         raw.Currency,
		PaidAt:           unixTime(raw.StatusTransitions.PaidAt),
		LastEventID:      env.ID,
		LastEventCreated: env.Created,
	}
}

// expandableObject is an expandable field that names an object of a
// customer (a dispute's charge, an invoice payment's invoice): its id, and
// the customer the object names when it came expanded.
type expandableObject struct {
	ID         string
	CustomerID string
}

func (c *expandableObject) UnmarshalJSON(data []byte) error {
	*c = expandableObject{}
	if len(data) > 0 && data[0] == '{' {
		var obj rawObject
		if unmarshal(data, &obj) == nil {
			*c = expandableObject{ID: obj.ID, CustomerID: obj.customer()}
			return nil
		}
	}
	c.ID = expandableID(data)
	return nil
}

// customer is the customer the object names (when it came expanded); an
// EINVALID *Error when data.object's field names no object.
func (c *expandableObject) customer(env Envelope, field string) (string, error) {
	if c.ID == "" {
		return "", decodeError(env, "data.object.%s is missing", field)
	}
	return c.CustomerID, nil
}

func decodeError(env Envelope, format string, args ...any) *Error {
	return Errorf(EINVALID, "event %s (%s): "+format, append([]any{env.ID, env.Type}, args...)...)
}

// withTimes allocates a record and room for the times it points to (six
// at most, see unixTimeIn) at once: one allocation for both.
func withTimes[T any]() (*T, []time.Time) {
	rec := new(struct {
		record T
		times  [6]time.Time
	})
	return &rec.record, rec.times[:0]
}

// unixTimeIn converts a Stripe timestamp, Stripe's null and 0 both meaning
// "none", into the next free slot of *times, which must have room: one
// allocation for all of a record's times.
func unixTimeIn(times *[]time.Time, sec int64) *time.Time {
	if sec == 0 {
		return nil
	}
	*times = append(*times, time.Unix(sec, 0).UTC())
	return &(*times)[len(*times)-1]
}

// unixTime is a Stripe timestamp as a time, nil for 0.
func unixTime(sec int64) *time.Time {
	if sec == 0 {
		return nil
	}
	t := time.Unix(sec, 0).UTC()
	return &t
}
