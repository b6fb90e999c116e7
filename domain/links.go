package domain

import (
	"strings"
)

// Links is what one event says about which Stripe objects belong together
// (DESIGN §8). A dispute names only its charge (and payment intent), a
// refund its charge, an invoice payment its invoice: they reach their
// customer through the charge or invoice, which names the customer in its
// own events (as do payment intents).
type Links struct {
	CustomerID string   // the customer data.object names; empty when it names none
	Objects    []string // data.object's id, then the ids of the charge, payment intent and invoice it names
}

// linkedPrefixes are the event types whose objects take part in linking.
var linkedPrefixes = []string{"charge.", "payment_intent.", "invoice.", "refund.", "invoice_payment."}

// HasLinks reports whether events of eventType can carry links, so that
// callers decode only those.
func HasLinks(eventType string) bool {
	for _, p := range linkedPrefixes {
		if strings.HasPrefix(eventType, p) {
			return true
		}
	}
	return false
}

// linkFields are the fields of a charge, payment intent, invoice, dispute
// or refund that link it to other objects. Decode's structs for those
// objects embed them, so that one pass over the payload reads both.
type linkFields struct {
	Charge        expandable `json:"charge"`
	PaymentIntent expandable `json:"payment_intent"`
	Invoice       expandable `json:"invoice"`
	LatestCharge  expandable `json:"latest_charge"`
}

type rawLinked struct {
	rawObject
	linkFields
}

// DecodeLinks reads the links of an event whose type HasLinks. An event
// without a readable data.object has none: it fails elsewhere (Decode), not here.
func DecodeLinks(payload []byte) Links {
	var ev event[rawLinked]
	if unmarshal(payload, &ev) != nil {
		return Links{}
	}
	obj := &ev.Data.Object
	return newLinks(&obj.rawObject, &obj.linkFields, obj.Charge)
}

// newLinks are the links of the object whose head and link fields are given;
// charge is its charge's id (a dispute reads its own charge field).
func newLinks(head *rawObject, f *linkFields, charge expandable) Links {
	if head.ID == "" {
		return Links{}
	}
	l := Links{CustomerID: head.customer(), Objects: []string{head.ID}}
	for _, id := range [...]expandable{charge, f.PaymentIntent, f.Invoice, f.LatestCharge} {
		if id != "" && string(id) != head.ID {
			l.Objects = append(l.Objects, string(id))
		}
	}
	return l
}
