package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

func pathEscape(s string) string { return url.PathEscape(s) }

// objectRef names the Stripe object an event carries (data.object).
type objectRef struct {
	Type, ID string
}

type envelopeObject struct {
	Data struct {
		Object             map[string]any `json:"object"`
		PreviousAttributes map[string]any `json:"previous_attributes"`
	} `json:"data"`
}

func decodeObject(payload []byte) (envelopeObject, bool) {
	var e envelopeObject
	d := json.NewDecoder(bytes.NewReader(payload))
	d.UseNumber()
	return e, d.Decode(&e) == nil
}

func objectOf(payload []byte) objectRef {
	e, ok := decodeObject(payload)
	if !ok {
		return objectRef{}
	}
	typ, _ := e.Data.Object["object"].(string)
	id, _ := e.Data.Object["id"].(string)
	return objectRef{Type: typ, ID: id}
}

// fieldChange is one field an event changed: a dotted path, old → new.
type fieldChange struct {
	Field, Old, New string
}

// Where an event's changes come from.
const (
	changesFromStripe  = "stripe"   // data.previous_attributes, as Stripe sent it
	changesComputed    = "computed" // against the previous snapshot of the same object
	changesFirstSeen   = "first"    // no earlier snapshot of the object in the history
	changesUndecodable = "undecodable"
	changesNotAnObject = "none"
)

// fieldChanges is what the event whose payload is given changed: from
// previous_attributes when Stripe sent them, else computed against prev,
// the previous snapshot of the same object (nil: none).
func fieldChanges(payload []byte, prev *eventlog.Record) ([]fieldChange, string) {
	cur, ok := decodeObject(payload)
	switch {
	case !ok:
		return nil, changesUndecodable
	case cur.Data.Object == nil:
		return nil, changesNotAnObject
	case len(cur.Data.PreviousAttributes) > 0:
		old, now := map[string]string{}, map[string]string{}
		flatten("", cur.Data.PreviousAttributes, old)
		flattenOnly("", cur.Data.PreviousAttributes, cur.Data.Object, now)
		return compare(old, now), changesFromStripe
	case prev == nil:
		return nil, changesFirstSeen
	}
	before, ok := decodeObject(prev.Payload)
	if !ok {
		return nil, changesUndecodable
	}
	old, now := map[string]string{}, map[string]string{}
	flatten("", before.Data.Object, old)
	flatten("", cur.Data.Object, now)
	return compare(old, now), changesComputed
}

// flatten writes v's leaves into out under dotted paths; arrays are leaves
// (rendered as JSON), so that a list's change is one row.
func flatten(prefix string, v map[string]any, out map[string]string) {
	for k, x := range v {
		path := join(prefix, k)
		if m, ok := x.(map[string]any); ok && len(m) > 0 {
			flatten(path, m, out)
			continue
		}
		out[path] = render(x)
	}
}

// flattenOnly writes the leaves of obj at the paths shape (previous_attributes) names.
func flattenOnly(prefix string, shape, obj map[string]any, out map[string]string) {
	for k, x := range shape {
		path := join(prefix, k)
		sub, _ := obj[k].(map[string]any)
		if m, ok := x.(map[string]any); ok && len(m) > 0 {
			flattenOnly(path, m, sub, out)
			continue
		}
		if y, present := obj[k]; present {
			if m, ok := y.(map[string]any); ok && len(m) > 0 {
				flatten(path, m, out)
				continue
			}
			out[path] = render(y)
		}
	}
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

func render(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// compare lists the paths whose values differ, by path; an absent side is "(absent)".
func compare(old, now map[string]string) []fieldChange {
	paths := slices.Sorted(maps.Keys(old))
	for p := range now {
		if _, ok := old[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	var out []fieldChange
	for _, p := range paths {
		o, inOld := old[p]
		n, inNew := now[p]
		if inOld && inNew && o == n {
			continue
		}
		if !inOld {
			o = "(absent)"
		}
		if !inNew {
			n = "(absent)"
		}
		out = append(out, fieldChange{Field: p, Old: o, New: n})
	}
	return out
}

// prettyJSON indents a payload for reading; one that is not JSON is shown as stored.
func prettyJSON(payload []byte) string {
	var buf bytes.Buffer
	if err := json.Indent(&buf, payload, "", "  "); err != nil {
		return strings.ToValidUTF8(string(payload), "\uFFFD")
	}
	return buf.String()
}
