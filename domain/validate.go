package domain

import (
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Limits on what the ledger takes in and stores of an event (DESIGN §4,
// "Poison").
const (
	// MaxIDBytes bounds every Stripe id: Stripe's are far shorter, and a
	// read-model key must fit a btree index entry.
	MaxIDBytes = 255
	// MaxAPIVersionBytes bounds api_version ("2025-03-31.basil").
	MaxAPIVersionBytes = 64
)

// The event times ParseEnvelope accepts: Stripe's created is when the
// event happened, so anything outside these years is not Stripe's.
var (
	minCreated = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxCreated = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
)

// validate checks the envelope ParseEnvelope read, and its created in Unix
// seconds, before anything is stored: the ids the ledger keys and names
// streams by (event, account, customer, snapshot event) are ASCII letters,
// digits and '_', as Stripe's are; an object id may also hold '-' and '.'
// (Stripe lets products, prices, plans and coupons take custom ids); the
// object type is letters, digits, '_' and '.'; the event type and
// api_version are printable ASCII. It returns an EINVALID *Error naming the
// first field that is not.
func (e *Envelope) validate(created int64) error {
	account, customer, objectID, objectType := "account", "data.object.customer", "data.object.id", "data.object.object"
	if e.Thin { // named as a thin event names them
		account, customer, objectID, objectType = "account (or context)", "related_object.id", "related_object.id", "related_object.type"
	}
	for _, f := range []struct {
		name, value, extra string
		required           bool
	}{
		{"id", e.ID, "", true},
		{account, e.Account, "", false},
		{customer, e.CustomerID, "", false},
		{objectID, e.ObjectID, "-.", false},
		{objectType, e.ObjectType, ".", false},
		{"snapshot_event", e.SnapshotEvent, "", false},
	} {
		if f.value == "" && !f.required {
			continue
		}
		if msg := checkStripeID(f.value, f.extra); msg != "" {
			return Errorf(EINVALID, "event field %s %s", f.name, msg)
		}
	}
	if msg := checkPrintable(e.Type, MaxIDBytes); msg != "" {
		return Errorf(EINVALID, "event field type %s", msg)
	}
	if msg := checkPrintable(e.APIVersion, MaxAPIVersionBytes); msg != "" {
		return Errorf(EINVALID, "event field api_version %s", msg)
	}
	if created != 0 && (created < minCreated.Unix() || created >= maxCreated.Unix()) {
		return Errorf(EINVALID, "event field created (%d) is not a time between %d and %d",
			created, minCreated.Year(), maxCreated.Year())
	}
	return nil
}

// ValidID checks an id given to the read API (a path segment, ?account=)
// as ParseEnvelope checks the ids of an event; it returns an EINVALID
// *Error naming what (e.g. "customer id") otherwise.
func ValidID(what, id string) error {
	if msg := checkStripeID(id, "-."); msg != "" {
		return Errorf(EINVALID, "%s %s", what, msg)
	}
	return nil
}

// checkStripeID says what makes id not a Stripe id (ASCII letters, digits,
// '_' and the bytes of extra, at most MaxIDBytes), "" when nothing does.
func checkStripeID(id, extra string) string {
	switch {
	case id == "":
		return "is empty"
	case len(id) > MaxIDBytes:
		return "is " + strconv.Itoa(len(id)) + " bytes long, over " + strconv.Itoa(MaxIDBytes)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || strings.IndexByte(extra, c) >= 0) {
			return "may hold only ASCII letters, digits and _" + quotedList(extra) + " (byte " + strconv.Itoa(i) + " is not)"
		}
	}
	return ""
}

func quotedList(extra string) string {
	var b strings.Builder
	for _, c := range extra {
		b.WriteString(", " + string(c))
	}
	return b.String()
}

// checkPrintable says what makes s not printable ASCII of at most max
// bytes, "" when nothing does.
func checkPrintable(s string, max int) string {
	if len(s) > max {
		return "is " + strconv.Itoa(len(s)) + " bytes long, over " + strconv.Itoa(max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return "may hold only printable ASCII (byte " + strconv.Itoa(i) + " is not)"
		}
	}
	return ""
}

// Times the read model holds: Stripe's timestamps are Unix seconds, and a
// time past year 9999 cannot be rendered in RFC 3339 (or stored: PostgreSQL
// ends at 294276).
var (
	minStorableTime = time.Unix(0, 0).UTC()
	maxStorableTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// keyFields are the fields that identify an object or link it to another:
// cleaning them could make two objects one, so bad text there is an error.
var keyFields = map[string]bool{
	"ID": true, "EventID": true, "CustomerID": true, "SubscriptionID": true, "InvoiceID": true,
	"ChargeID": true, "Account": true,
}

// DecodeStorable is Decode, then makes the fact fit the read model: text
// loses what PostgreSQL cannot hold (NUL, invalid UTF-8), except in ids; an
// id that is over MaxIDBytes or holds a control character or invalid UTF-8,
// or a time before 1970 or after 9999, fails with an EINVALID *Error naming
// the event and the field, for the projection to dead-letter.
func DecodeStorable(env Envelope, payload []byte, plans Plans) (*Fact, error) {
	fact, _, err := DecodeStorableLinks(env, payload, plans)
	return fact, err
}

// DecodeStorableLinks is DecodeStorable that also returns the event's links
// (DecodeLinks), read in the same pass over the payload when Decode handles
// its type: a projection needs both, and rebuilds are bound by JSON
// decoding. The links are returned even when decoding fails (an event that
// cannot be applied may still link objects), and are empty for an event
// whose type does not HasLinks.
func DecodeStorableLinks(env Envelope, payload []byte, plans Plans) (*Fact, Links, error) {
	var links Links
	hasLinks := HasLinks(env.Type)
	linksTo := &links
	if !hasLinks {
		linksTo = nil
	}
	fact, err := decode(env, payload, plans, linksTo)
	if hasLinks && (err != nil || !Handles(env.Type)) {
		links = DecodeLinks(payload) // not read by decode
	}
	if err != nil {
		return nil, links, err
	}
	if fact != nil {
		if msg := makeStorable(reflect.ValueOf(fact).Elem(), "fact"); msg != "" {
			return nil, links, decodeError(Envelope{ID: StorableText(env.ID), Type: StorableText(env.Type)}, "%s", msg)
		}
	}
	return fact, links, nil
}

// StorableText is s without NUL bytes and invalid UTF-8, which PostgreSQL's
// text cannot hold.
func StorableText(s string) string {
	if printableASCII(s) || strings.IndexByte(s, 0) < 0 && utf8.ValidString(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}

var timeType = reflect.TypeFor[time.Time]()

// A storableField is a field of a struct makeStorable cleans or checks:
// its index and name, whether it is a pointer (to what how says), and how.
type storableField struct {
	index   int
	name    string
	pointer bool
	how     storableHow
}

type storableHow int

const (
	storableTime   storableHow = iota + 1 // a time in range
	storableKey                           // a key field: checkID
	storableID                            // a name ending in ID: at most MaxIDBytes, then StorableText
	storableText                          // StorableText
	storableStruct                        // its own fields
)

// storableFields are the storableFields of struct types, made once.
var storableFields sync.Map // reflect.Type → []storableField

func storableFieldsOf(t reflect.Type) []storableField {
	if fields, ok := storableFields.Load(t); ok {
		return fields.([]storableField)
	}
	var fields []storableField
	for i := range t.NumField() {
		f := storableField{index: i, name: t.Field(i).Name}
		ft := t.Field(i).Type
		if ft.Kind() == reflect.Pointer {
			f.pointer, ft = true, ft.Elem()
		}
		switch {
		case ft == timeType:
			f.how = storableTime
		case ft.Kind() == reflect.String && keyFields[f.name]:
			f.how = storableKey
		case ft.Kind() == reflect.String && strings.HasSuffix(f.name, "ID"):
			f.how = storableID
		case ft.Kind() == reflect.String:
			f.how = storableText
		case ft.Kind() == reflect.Struct:
			f.how = storableStruct
		default:
			continue
		}
		fields = append(fields, f)
	}
	storableFields.Store(t, fields)
	return fields
}

// makeStorable cleans and checks the fields of the struct v (path names it
// in messages), following pointers to structs; it returns what is wrong, ""
// when nothing is.
func makeStorable(v reflect.Value, path string) string {
	for _, sf := range storableFieldsOf(v.Type()) {
		f, name := v.Field(sf.index), sf.name
		if sf.pointer {
			if f.IsNil() {
				continue
			}
			f = f.Elem()
		}
		switch sf.how {
		case storableTime:
			if t := f.Addr().Interface().(*time.Time); !t.IsZero() && (t.Before(minStorableTime) || t.After(maxStorableTime)) {
				return path + "." + name + " is out of range (" + t.Format(time.RFC3339) + ")"
			}
		case storableKey:
			if msg := checkID(f.String()); msg != "" {
				return path + "." + name + " " + msg
			}
		case storableID:
			if len(f.String()) > MaxIDBytes {
				return path + "." + name + " " + checkID(f.String())
			}
			setStorable(f)
		case storableText:
			setStorable(f)
		case storableStruct:
			if msg := makeStorable(f, name); msg != "" {
				return path + "." + msg
			}
		}
	}
	return ""
}

// printableASCII reports whether s is printable ASCII (every byte from ' '
// to '~'): what nearly every text of a fact is, and neither StorableText
// nor checkID changes or refuses, which this tells at less cost.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' {
			return false
		}
	}
	return true
}

// setStorable makes the string f StorableText, writing it only when that changes it.
func setStorable(f reflect.Value) {
	if s := f.String(); StorableText(s) != s {
		f.SetString(StorableText(s))
	}
}

// checkID says what makes id unfit to be a key, "" when nothing does.
func checkID(id string) string {
	if len(id) > MaxIDBytes {
		return "is " + strconv.Itoa(len(id)) + " bytes long, over " + strconv.Itoa(MaxIDBytes)
	}
	if printableASCII(id) {
		return ""
	}
	if !utf8.ValidString(id) {
		return "is not valid UTF-8"
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f {
			return "holds a control character"
		}
	}
	return ""
}
