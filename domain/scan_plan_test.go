package domain

import (
	"reflect"
	"testing"
)

// TestScanPlanRefusesUnmarshalerElements: a pointer or slice whose element
// decodes itself (a json.Unmarshaler, as expandableObject) is beyond the
// scanner, which reads a pointer's or slice's element as an object of
// fields: planning it panics, as for every type it does not read, instead
// of a scan that skips the object's members and leaves the element zero
// where json.Unmarshal calls its UnmarshalJSON.
func TestScanPlanRefusesUnmarshalerElements(t *testing.T) {
	t.Parallel()
	for _, typ := range []reflect.Type{
		reflect.TypeFor[struct {
			Charge *expandableObject `json:"charge"`
		}](),
		reflect.TypeFor[struct {
			Charges []expandableObject `json:"charges"`
		}](),
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("planOf(%v) did not panic", typ)
				}
			}()
			planOf(typ)
		}()
	}
}
