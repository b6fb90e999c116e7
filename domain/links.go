package domain

import (
	"encoding/json"
	"strings"
)

// Links is what one event says about which Stripe objects belong together
// (DESIGN §8). A dispute names only its charge (and payment intent), a
// refund its charge: they reach their customer through the charge, which
// names the customer in its own events (as do payment intents and invoices).
type Links struct {
	CustomerID string   // the customer data.object names; empty when it names none
	Objects    []string // data.object's id, then the ids of the charge, payment intent and invoice it names
}

// linkedPrefixes are the event types whose objects take part in linking.
var linkedPrefixes = []string{"charge.", "payment_intent.", "invoice.", "refund."}

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

// rawLinked is the part of a charge, payment intent, invoice, dispute or
// refund that links it to other objects.
type rawLinked struct {
	rawObject
	Charge        expandable `json:"charge"`
	PaymentIntent expandable `json:"payment_intent"`
	Invoice       expandable `json:"invoice"`
	LatestCharge  expandable `json:"latest_charge"`
}

// DecodeLinks reads the links of an event whose type HasLinks. An event
// without a readable data.object has none: it fails elsewhere (Decode), not here.
func DecodeLinks(payload []byte) Links {
	var ev event[rawLinked]
	if json.Unmarshal(payload, &ev) != nil {
		return Links{}
	}
	obj := ev.Data.Object
	if obj.ID == "" {
		return Links{}
	}
	l := Links{CustomerID: string(obj.Customer), Objects: []string{obj.ID}}
	for _, id := range []expandable{obj.Charge, obj.PaymentIntent, obj.Invoice, obj.LatestCharge} {
		if id != "" && string(id) != obj.ID {
			l.Objects = append(l.Objects, string(id))
		}
	}
	return l
}
