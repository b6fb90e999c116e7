package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Observed snapshots (DESIGN §10): what `ledger reconcile` (or the thin-event
// fetcher) saw of an object through Stripe's API, stored as an event of its
// own so that the read model converges to Stripe's truth and a rebuild from
// the log reproduces it. Its payload has a Stripe event's shape, with the
// object exactly as the API returned it under data.object, and its created
// is the time it was fetched: the convergence rules order it against
// Stripe's events like any snapshot (DESIGN §4).
const (
	ObservedCustomer     = "ledger.observed.customer"
	ObservedSubscription = "ledger.observed.subscription"
	ObservedInvoice      = "ledger.observed.invoice"
)

// ObservedPrefix starts every observed snapshot's event id; Stripe's own
// event ids start with evt_, so the two never collide.
const ObservedPrefix = "obs_"

var observedKinds = map[string]objectKind{
	ObservedCustomer:     customerObject,
	ObservedSubscription: subscriptionObject,
	ObservedInvoice:      invoiceObject,
}

// ObservedType is the observed-snapshot event type for a Stripe object type
// ("subscription": ledger.observed.subscription). Snapshots of any object
// can be stored; Decode folds customers, subscriptions and invoices.
func ObservedType(object string) string { return "ledger.observed." + object }

// kindOf is the object kind Decode reads for an event type.
func kindOf(eventType string) (objectKind, bool) {
	if k, ok := eventKinds[eventType]; ok {
		return k, true
	}
	k, ok := observedKinds[eventType]
	return k, ok
}

// Observation is one object fetched from Stripe's API.
type Observation struct {
	Object     json.RawMessage // the object's JSON, as the API returned it
	Account    string          // Connect account, "" for the platform
	APIVersion string          // the Stripe-Version it was fetched with
	FetchedAt  time.Time       // when; the snapshot's created
	Source     string          // what observed it: "reconcile" or "thin"
}

// ObservedEvent renders an observation as an observed-snapshot event: its
// payload and envelope. The event id is a digest of everything in it, so
// storing the same observation twice is a duplicate.
func ObservedEvent(o Observation) ([]byte, Envelope, error) {
	var head rawObject
	if err := json.Unmarshal(o.Object, &head); err != nil || head.ID == "" || head.Object == "" {
		return nil, Envelope{}, Errorf(EINVALID, "observed object is not a Stripe object with an id and a type")
	}
	typ := ObservedType(head.Object)
	created := o.FetchedAt.UTC().Truncate(time.Second)
	sum := sha256.New()
	fmt.Fprintf(sum, "%s\x00%s\x00%d\x00%s\x00", typ, o.Account, o.FetchedAt.UnixNano(), o.Source)
	sum.Write(o.Object)
	id := ObservedPrefix + hex.EncodeToString(sum.Sum(nil)[:16])

	buf := make([]byte, 0, len(o.Object)+256)
	buf = append(buf, `{"id":`...)
	buf = strconv.AppendQuote(buf, id)
	buf = append(buf, `,"object":"event","type":`...)
	buf = strconv.AppendQuote(buf, typ)
	buf = append(buf, `,"api_version":`...)
	buf = strconv.AppendQuote(buf, o.APIVersion)
	buf = append(buf, `,"created":`...)
	buf = strconv.AppendInt(buf, created.Unix(), 10)
	if o.Account != "" {
		buf = append(buf, `,"account":`...)
		buf = strconv.AppendQuote(buf, o.Account)
	}
	buf = append(buf, `,"ledger":{"source":`...)
	buf = strconv.AppendQuote(buf, o.Source)
	buf = append(buf, `,"fetched_at":`...)
	buf = strconv.AppendQuote(buf, o.FetchedAt.UTC().Format(time.RFC3339Nano))
	buf = append(buf, `},"data":{"object":`...)
	buf = append(buf, o.Object...)
	buf = append(buf, "}}"...)
	env, err := ParseEnvelope(buf)
	return buf, env, err
}

// observedFact completes what Decode read from an observed snapshot with
// what a Stripe event's type would have said: a canceled subscription is
// final in Stripe (customer.subscription.deleted), and so is a customer the
// API reports as deleted.
func observedFact(env Envelope, payload []byte, f *Fact) {
	switch {
	case env.Type == ObservedSubscription && f.Subscription != nil:
		f.Subscription.Deleted = f.Subscription.Status == "canceled"
	case env.Type == ObservedCustomer && f.Customer != nil:
		var ev struct {
			Data struct {
				Object struct {
					Deleted bool `json:"deleted"`
				} `json:"object"`
			} `json:"data"`
		}
		_ = json.Unmarshal(payload, &ev) // it was read once already
		f.Customer.Deleted = ev.Data.Object.Deleted
	}
}
