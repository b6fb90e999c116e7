package domain

import (
	"cmp"
	"encoding/json"
	"fmt"
	"reflect"
)

// ScanAgrees scans payload into each of decode's structs (and
// ParseEnvelope's), as an event's data.object and, whether or not that
// scan succeeds, alone, and holds every scan that succeeds to
// json.Unmarshal: it returns the structs the scanner read an event into
// (by name) and the first disagreement.
func ScanAgrees(payload []byte) (scanned []string, err error) {
	for _, check := range []func([]byte) (string, bool, error){
		scanAgrees[rawObject], scanAgrees[rawLinked], scanAgrees[rawCustomer], scanAgrees[rawSubscription],
		scanAgrees[rawInvoice], scanAgrees[rawCharge], scanAgrees[rawDispute], scanAgrees[rawInvoicePayment],
		scanAgrees[rawSubscriptionItems], scanAgrees[rawEnvelope], scanAgrees[map[string]json.RawMessage],
	} {
		name, ok, err := check(payload)
		if err != nil {
			return scanned, err
		}
		if ok {
			scanned = append(scanned, name)
		}
	}
	return scanned, nil
}

func scanAgrees[T any](payload []byte) (name string, ok bool, err error) {
	name = cmp.Or(reflect.TypeFor[T]().Name(), reflect.TypeFor[T]().String())
	ok, err = agrees[event[T]](payload)
	if err != nil {
		return name, ok, fmt.Errorf("%s in an event: %w", name, err)
	}
	if _, err := agrees[T](payload); err != nil {
		return name, ok, fmt.Errorf("%s alone: %w", name, err)
	}
	return name, ok, nil
}

// agrees scans payload into a T and, when it could, decodes it with json.Unmarshal.
func agrees[T any](payload []byte) (bool, error) {
	var scanned, decoded T
	if !scan(payload, reflect.ValueOf(&scanned).Elem()) {
		return false, nil
	}
	if err := json.Unmarshal(payload, &decoded); err != nil {
		return true, fmt.Errorf("scanned a payload json.Unmarshal refuses (%v)", err)
	}
	if !reflect.DeepEqual(scanned, decoded) {
		return true, fmt.Errorf("scanned\n%#v\njson.Unmarshal\n%#v", scanned, decoded)
	}
	return true, nil
}
