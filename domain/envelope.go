// Package domain is the ledger's pure core: it decodes Stripe event payloads
// (API 2023-10-16 and newer shapes) into billing facts and folds facts into a
// customer's state with the convergence rules of DESIGN §4. It does no I/O.
package domain

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Envelope is the part of a Stripe event the log needs to file it.
type Envelope struct {
	ID         string
	Type       string
	APIVersion string
	Created    time.Time
	Account    string
	ObjectType string // data.object.object, e.g. "subscription"
	ObjectID   string // data.object.id
	CustomerID string // the customer the event is about, empty when it names none

	// Thin events (Stripe's event notifications, "object": "v2.core.event",
	// or a v1 event sent thin) carry no data.object, only what to fetch.
	Thin          bool
	SnapshotEvent string    // the full v1 event to fetch (/v1/events/<id>), when given
	Related       ObjectRef // the object the event is about, when given
}

// ObjectRef is a thin event's related_object.
type ObjectRef struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	URL  string `json:"url"` // the API path to fetch it, e.g. /v1/subscriptions/sub_…
}

// rawEnvelope is what ParseEnvelope reads of an event, data.object
// included, in one pass.
type rawEnvelope struct {
	ID         string    `json:"id"`
	Object     string    `json:"object"`
	Type       string    `json:"type"`
	APIVersion string    `json:"api_version"`
	Created    eventTime `json:"created"`
	Account    string    `json:"account"`
	Data       *struct {
		Object rawObject `json:"object"`
	} `json:"data"`

	Context       string     `json:"context"` // thin events: the Connect account
	SnapshotEvent string     `json:"snapshot_event"`
	RelatedObject *ObjectRef `json:"related_object"`
}

// envelopeApart is rawEnvelope with data.object left unread, for a
// data.object that is not the object it should be.
type envelopeApart struct {
	rawEnvelope
	Data *struct {
		Object json.RawMessage `json:"object"`
	} `json:"data"`
}

// eventTime is an event's created: Unix seconds in v1 events, an RFC 3339
// string in v2 (thin) events. Anything else reads as 0 (none).
type eventTime int64

func (t *eventTime) UnmarshalJSON(data []byte) error {
	*t = 0
	if len(data) > 0 && data[0] == '"' {
		var s string
		if json.Unmarshal(data, &s) == nil {
			if at, err := time.Parse(time.RFC3339Nano, s); err == nil {
				*t = eventTime(at.Unix())
			}
		}
		return nil
	}
	// A JSON number token that is an int64 (no fraction, no exponent), as
	// json.Unmarshal into an int64 would read it.
	if sec, err := strconv.ParseInt(string(data), 10, 64); err == nil {
		*t = eventTime(sec)
	}
	return nil
}

// rawObject is what every data.object carries; Decode's structs embed it.
type rawObject struct {
	ID       string     `json:"id"`
	Object   string     `json:"object"`
	Customer expandable `json:"customer"`
	// The v2 Account that is the customer (Accounts v2, "customer-configured"
	// accounts; stripe-go v84+): a subscription or invoice of such a customer
	// may name it alone, without a cus_ id.
	CustomerAccount expandable `json:"customer_account"`
}

// customer is the id of the customer the object belongs to: its cus_ id,
// else the acct_ id of the v2 Account that is its customer, which then
// keys the customer's stream and read model rows like a cus_ id would.
func (o *rawObject) customer() string {
	if o.Customer != "" {
		return string(o.Customer)
	}
	return string(o.CustomerAccount)
}

// ParseEnvelope decodes the envelope of a Stripe event, thin or not. It
// fails, with an EINVALID *Error saying what is wrong, when the payload is
// not JSON, has no event id, or carries an envelope field no Stripe event
// has (see Envelope.validate: an id that is not a Stripe id, a type or
// api_version that is not printable ASCII, a created outside 2000-2099).
// Whatever is merely missing (no type, no created, no data.object), a
// verified event is still stored (DESIGN §2: none is ever dropped), filed
// under object-unknown-<event id>, and left to the projections to
// dead-letter. A missing created is the zero time.
//
// The payload is read once, data.object included (by the scanner, else by
// encoding/json); only a data.object that is not the object it should be
// (a string, an id that is a number) is read again, the envelope first and
// the object apart, so that its mistakes never refuse the event.
func ParseEnvelope(payload []byte) (Envelope, error) {
	var raw rawEnvelope
	err := unmarshal(payload, &raw) // scan.go: one pass over the payload
	var wrong *json.UnmarshalTypeError
	if errors.As(err, &wrong) && (wrong.Field == "data.object" || strings.HasPrefix(wrong.Field, "data.object.")) {
		// json.Unmarshal reports the first wrong type only: the envelope's
		// own fields are checked again without the object.
		var apart envelopeApart
		if err = json.Unmarshal(payload, &apart); err == nil {
			raw = apart.rawEnvelope
			if apart.Data != nil {
				raw.Data = &struct {
					Object rawObject `json:"object"`
				}{}
				_ = json.Unmarshal(apart.Data.Object, &raw.Data.Object) // not an object: filed as unknown
			}
		}
	}
	if err != nil {
		return Envelope{}, Errorf(EINVALID, "malformed JSON: %v", err)
	}
	if raw.ID == "" {
		return Envelope{}, Errorf(EINVALID, "event has no id")
	}
	var obj rawObject
	if raw.Data != nil {
		obj = raw.Data.Object
	}
	var created time.Time
	if raw.Created > 0 {
		created = time.Unix(int64(raw.Created), 0).UTC()
	}
	env := Envelope{
		ID:         raw.ID,
		Type:       raw.Type,
		APIVersion: raw.APIVersion,
		Created:    created,
		Account:    raw.Account,
		ObjectType: obj.Object,
		ObjectID:   obj.ID,
		CustomerID: obj.customer(),
	}
	if obj.Object == "customer" {
		env.CustomerID = obj.ID
	}
	if raw.Object == "v2.core.event" || (raw.Data == nil && (raw.SnapshotEvent != "" || raw.RelatedObject != nil)) {
		env.Thin, env.SnapshotEvent = true, raw.SnapshotEvent
		if env.Account == "" {
			env.Account = raw.Context
		}
		if raw.RelatedObject != nil {
			env.Related = *raw.RelatedObject
			env.ObjectType, env.ObjectID = raw.RelatedObject.Type, raw.RelatedObject.ID
			if env.ObjectType == "customer" {
				env.CustomerID = env.ObjectID
			}
		}
	}
	if err := env.validate(int64(raw.Created)); err != nil {
		return Envelope{}, err
	}
	return env, nil
}

// Stream is the event-log stream the event belongs to (DESIGN §2):
// customer-<cus_id> when it names a customer, otherwise
// object-<object type>-<object id>; Connect events are prefixed by "<acct>/".
func (e Envelope) Stream() string {
	var s string
	switch {
	case e.CustomerID != "":
		s = CustomerStream(e.CustomerID)
	case e.ObjectID != "":
		s = "object-" + orUnknown(e.ObjectType) + "-" + e.ObjectID
	default:
		s = "object-" + orUnknown(e.ObjectType) + "-" + e.ID
	}
	if e.Account != "" {
		s = e.Account + "/" + s
	}
	return s
}

// CustomerStream is the stream of a platform customer's events.
func CustomerStream(customerID string) string { return "customer-" + customerID }

// CustomerStreamOf is the stream of the events of account's customer
// customerID (account "" is the platform's), once both are checked as
// Stripe ids (ValidID), so that no input addresses a stream it does not
// name; otherwise an EINVALID *Error.
func CustomerStreamOf(account, customerID string) (string, error) {
	if err := ValidID("customer id", customerID); err != nil {
		return "", err
	}
	if account != "" {
		if err := ValidID("account", account); err != nil {
			return "", err
		}
	}
	return Envelope{CustomerID: customerID, Account: account}.Stream(), nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// expandable is the id in a Stripe expandable field, which is either a
// string id or an expanded object with an "id"; anything else reads as "".
type expandable string

func (e *expandable) UnmarshalJSON(data []byte) error {
	*e = expandable(expandableID(data))
	return nil
}

// expandableID returns the id of an expandable field given as valid JSON.
func expandableID(raw []byte) string {
	if len(raw) == 0 {
		return ""
	}
	switch raw[0] {
	case '"':
		if id, ok := plainString(raw); ok {
			return id
		}
		var id string
		if json.Unmarshal(raw, &id) == nil {
			return id
		}
	case '{':
		var obj struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(raw, &obj) == nil {
			return obj.ID
		}
	}
	return ""
}

// plainString returns the text of a valid JSON string that has no escapes
// and only ASCII, as ids do, without the cost of a json.Unmarshal.
func plainString(quoted []byte) (string, bool) {
	if len(quoted) < 2 {
		return "", false
	}
	text := quoted[1 : len(quoted)-1]
	for _, c := range text {
		if c == '\\' || c >= utf8.RuneSelf {
			return "", false
		}
	}
	return string(text), true
}
