package domain_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// scanKinds names the struct the scanner must read each event type's
// payload into (decode's, DecodeLinks' for a type decode does not handle).
func scanKind(eventType string) string {
	switch {
	case strings.HasPrefix(eventType, "customer.subscription."), eventType == domain.ObservedSubscription:
		return "rawSubscription"
	case strings.HasPrefix(eventType, "customer."), eventType == domain.ObservedCustomer:
		return "rawCustomer"
	case strings.HasPrefix(eventType, "invoice_payment."):
		return "rawInvoicePayment"
	case strings.HasPrefix(eventType, "invoice."), eventType == domain.ObservedInvoice:
		return "rawInvoice"
	case strings.HasPrefix(eventType, "charge.dispute."):
		return "rawDispute"
	case eventType == "charge.refunded":
		return "rawCharge"
	case domain.HasLinks(eventType):
		return "rawLinked"
	}
	return "rawObject"
}

// TestScanLifecycles: on every event of domaintest's lifecycles, in every
// API version they render, and on the payloads in testdata, the scanner
// reads what json.Unmarshal reads into each of decode's structs, and it
// reads every one of them into the struct its type is decoded with (no
// event falls back to encoding/json).
func TestScanLifecycles(t *testing.T) {
	t.Parallel()
	payloads := map[string][]byte{}
	versions := map[string]int{}
	for _, d := range domaintest.Lifecycles(rand.New(rand.NewPCG(3, 3)), 300) {
		payloads[d.EventID+" "+d.Type] = d.Payload
		env, err := domain.ParseEnvelope(d.Payload)
		if err != nil {
			t.Fatal(err)
		}
		versions[env.APIVersion]++
	}
	for _, v := range domain.TestedAPIVersions {
		if versions[v] == 0 {
			t.Fatalf("no lifecycle event of API version %s (%v)", v, versions)
		}
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, name := range files {
		payload, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		env, err := domain.ParseEnvelope(payload)
		if err != nil {
			t.Fatal(err)
		}
		payloads[name+" "+env.Type] = payload
	}
	for name, payload := range payloads {
		scanned, err := domain.ScanAgrees(payload)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		eventType := name[strings.LastIndexByte(name, ' ')+1:]
		if kind := scanKind(eventType); !slices.Contains(scanned, kind) {
			t.Errorf("%s: not scanned as %s, only as %v", name, kind, scanned)
		}
	}
}

// FuzzScan: whatever the payload, every struct the scanner reads it into
// holds what json.Unmarshal reads. Its seeds are testdata's payloads and
// the cases where the two could part: keys json.Unmarshal matches by case
// folding or through escapes, a field given twice, null and empty
// arrays, numbers that are not int64s, strings with escapes or invalid
// UTF-8, JSON that is not quite JSON.
func FuzzScan(f *testing.F) {
	addSeeds(f)
	for _, seed := range []string{
		`{"data":{"object":{"id":"sub_1","object":"subscription","status":"active","items":{"data":[{"quantity":2,"price":{"id":"price_1","product":"prod_1"}}]}}}}`,
		`{"data":{"object":{"ID":"sub_1","object":"subscription"}}}`,
		`{"data":{"object":{"id":"sub_1","Status":"active"}}}`,
		`{"data":{"object":{"id":"sub_1","\u0069d":"sub_2"}}}`,
		`{"data":{"object":{"id":"sub_1","cancel_\u212a":1,"statuſ":"x"}}}`,
		`{"DATA":{"object":{"id":"cus_1","object":"customer"}}}`,
		`{"data":{"object":{"id":"sub_1","id":"sub_2"}}}`,
		`{"data":{"object":{"id":"in_1","lines":{"data":[{"period":{"start":1}}]},"lines":{"data":[{"period":{"end":2}}]}}}}`,
		`{"data":{"object":{"id":"in_1","parent":{"subscription_details":{"subscription":"sub_1"}},"parent":{}}}}`,
		`{"data":{"object":null,"previous_attributes":null}}`,
		`{"data":null}`,
		`{"data":{"object":{"id":null,"items":null,"lines":{"data":[]},"parent":null,"price":null}}}`,
		`{"data":{"object":{"items":{"data":[null,{"price":null},{"price":{}}]}}}}`,
		`{"data":{"object":{"items":{"data":{}}}}}`,
		`{"data":{"object":{"amount":1.0,"attempt_count":1e2}}}`,
		`{"data":{"object":{"amount":-0,"quantity":9223372036854775808}}}`,
		`{"data":{"object":{"amount":"1","refunded":"true","status":1}}}`,
		`{"data":{"object":{"id":"cus_\u00e9\n","name":"Zoë","email":"\ud83d\ude00 \ud800","object":"customer"}}}`,
		"{\"data\":{\"object\":{\"id\":\"cus_1\",\"name\":\"\xff\xfe\",\"object\":\"customer\"}}}",
		"{\"data\":{\"object\":{\"id\":\"sub_1234567\\\"89\",\"status\":\"abcdefgh\u00e9ijklmnop\\\\q\",\"name\":\"abcdefghijklmno\x7fp\",\"email\":\"abcdefghi\xc3\xa9j\xff\"}}}",
		"{\"data\":{\"object\":{\"id\":\"sub_12345\x01\"}}}",
		`{"data":{"object":{"id":"ch_1","object":"charge","customer":{"id":"cus_1"},"invoice":{"id":"in_1","customer":"cus_2"}}}}`,
		`{"data":{"object":{"id":"dp_1","object":"dispute","charge":{"id":"ch_1","customer":"cus_1"},"payment_intent":"pi_1"}}}`,
		`{"data":{"object":{"id":"inpay_1","object":"invoice_payment","invoice":{"id":"in_1","customer":"cus_1"},"status_transitions":{"paid_at":7}}}}`,
		`{"data":{"object":{"id":"sub_1"},"previous_attributes":{"status":"trialing","items":{"data":[]}}}}`,
		`{"data":{"object":{"status":"a","status":"b","Status":"c","st\u0061tus":"d"}}}`,
		"{\"data\":{\"object\":{\"st\xffatus\":\"a\",\"\u00e9\":{}}}}",
		`{"data":{"object":{"id":"sub_1","metadata":{"ID":"x","Id":[1,{"a":null}],"\u00e9":true}}}}`,
		`{"data":{"object":{"id":"sub_1"}}} x`,
		`{"data":{"object":{"id":"sub_1"}},}`,
		`{"data":{"object":{"id":"sub_1",}}}`,
		`{"data":{"object":{"id":"sub_1","x":[1,]}}}`,
		`{"data":{"object":{"id":"sub_1","x":01}}}`,
		`{"data":{"object":{"id":"sub_1","x":1.}}}`,
		`{"data":{"object":{"id":"sub_1","x":-}}}`,
		`{"data":{"object":{"id":"sub_1","x":1e}}}`,
		`{"data":{"object":{"id":"sub_1","x":"\x"}}}`,
		`{"data":{"object":{"id":"sub_1","x":"\u12"}}}`,
		"{\"data\":{\"object\":{\"id\":\"sub\t1\"}}}",
		`{"data":{"object":{"id":"sub_1","x":nul}}}`,
		`{"data":{"object":{"id":"sub_1","x":truex}}}`,
		`{"data":{"object":{"id":"sub_1"}}`,
		` {"data" : {"object" : {"id" : "sub_1" } } } ` + "\n",
		`{"id":"evt_1","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_1","object":"customer"}}}`,
		`{"id":"evt_1","created":"2026-01-02T03:04:05Z","object":"v2.core.event","context":"acct_1","related_object":{"id":"sub_1","type":"subscription","url":"/v1/subscriptions/sub_1"}}`,
		`{"id":"evt_1","created":1.5e9,"data":null,"related_object":null,"snapshot_event":"evt_0"}`,
		`{"id":"evt_1","created":-1,"data":{"object":"cus_1"}}`,
		`{"id":"evt_1","data":{"object":{"id":"cus_1"}},"data":{"object":{"customer":"cus_2"}}}`,
		`{"Id":"evt_1","ID":"evt_2","created":"x"}`,
		`{"data":{"object":{"id":"sub_1","current_period_enD":1,"cancel_at_periodX":true,"quantitY":2,"trial_end\u0000":3}}}`,
		"{\"data\":{\"object\":{\"id\":\"sub_1\",\"cancel_at\x7f\":1,\"lines\":{\"da\x7fta\":[]}}}}",
		`{"data":{"object":{"id":"in_1","customer":"cus_\u00e9","subscription":{"id":"sub_1"},"charge":7,"payment_intent":null,"latest_charge":"ch_\"1","invoice":"in_é","customer_account":[]}}}`,
		`{"data":{"object":{"amount_due":999999999999999999,"amount_paid":-999999999999999999,"attempt_count":1000000000000000000,"period_end":-9223372036854775808,"period_start":9223372036854775807,"amount":-0.0}}}`,
		`{"data":{"object":{"id":"sub_1"},"previous_attributes":{"status":"a","items":null}},"previous_attributes":[]}`,
		`[]`,
		`"x"`,
		`{"data":{"object":{"x":` + strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001) + `}}}`,
		`{"data":{"object":{"id":"sub_1","x":` + strings.Repeat(`{"a":`, 600) + `1` + strings.Repeat(`}`, 600) + `}}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if _, err := domain.ScanAgrees(payload); err != nil {
			t.Fatal(err)
		}
	})
}
