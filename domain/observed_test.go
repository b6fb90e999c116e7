package domain_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

const canceledSub = `{"id":"sub_obs","object":"subscription","customer":"cus_obs","status":"canceled",
 "cancel_at_period_end":false,"canceled_at":1700000500,"ended_at":1700000500,
 "current_period_start":1700000000,"current_period_end":1702592000,
 "items":{"object":"list","data":[{"quantity":1,"price":{"id":"price_pro","lookup_key":"pro","product":"prod_1"}}]}}`

func TestObservedSnapshotFoldsLikeAStripeSnapshot(t *testing.T) {
	fetched := time.Date(2026, 12, 1, 12, 0, 0, 123456789, time.UTC)
	payload, env, err := domain.ObservedEvent(domain.Observation{
		Object: json.RawMessage(canceledSub), Account: "acct_1", APIVersion: "2023-10-16", FetchedAt: fetched, Source: "reconcile",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(payload) || !strings.Contains(string(payload), canceledSub) {
		t.Fatalf("payload %s does not embed the object verbatim", payload)
	}
	if env.Type != domain.ObservedSubscription || env.Stream() != "acct_1/customer-cus_obs" ||
		!env.Created.Equal(fetched.Truncate(time.Second)) || !strings.HasPrefix(env.ID, domain.ObservedPrefix) {
		t.Fatalf("envelope %+v (stream %s)", env, env.Stream())
	}
	again, _, _ := domain.ObservedEvent(domain.Observation{
		Object: json.RawMessage(canceledSub), Account: "acct_1", APIVersion: "2023-10-16", FetchedAt: fetched, Source: "reconcile",
	})
	if string(again) != string(payload) {
		t.Fatal("the same observation renders two different events")
	}

	// The ledger missed the deletion: its last word was an active snapshot.
	active := `{"id":"evt_active","object":"event","type":"customer.subscription.updated","api_version":"2023-10-16","created":1700000100,"account":"acct_1",
	 "data":{"object":` + strings.Replace(strings.Replace(canceledSub, `"canceled"`, `"active"`, 1), `"canceled_at":1700000500,"ended_at":1700000500`, `"canceled_at":null,"ended_at":null`, 1) + `}}`
	for _, order := range [][][]byte{{[]byte(active), payload}, {payload, []byte(active)}} {
		states, err := domaintest.Replay(order, nil)
		if err != nil {
			t.Fatal(err)
		}
		st := states[domain.CustomerKey{Account: "acct_1", ID: "cus_obs"}]
		sub := st.Subscriptions["sub_obs"]
		if sub.Status != "canceled" || !sub.Deleted || st.Entitled || sub.LastEventID != env.ID {
			t.Fatalf("folded %+v entitled=%v, want the observed cancellation to win", sub, st.Entitled)
		}
	}
}

func TestObservedDeletedCustomer(t *testing.T) {
	payload, _, err := domain.ObservedEvent(domain.Observation{
		Object: json.RawMessage(`{"id":"cus_gone","object":"customer","deleted":true}`), APIVersion: "2023-10-16",
		FetchedAt: time.Unix(1700000000, 0), Source: "reconcile",
	})
	if err != nil {
		t.Fatal(err)
	}
	fact, err := domain.ParseFact(payload, nil)
	if err != nil || fact == nil || fact.Customer == nil || !fact.Customer.Deleted {
		t.Fatalf("fact %+v, %v: want a deleted customer", fact, err)
	}
	// Any object can be kept; only customers, subscriptions and invoices fold.
	charge, env, err := domain.ObservedEvent(domain.Observation{Object: json.RawMessage(`{"id":"ch_1","object":"charge","customer":"cus_1"}`),
		FetchedAt: time.Unix(1700000000, 0)})
	if err != nil || env.Type != "ledger.observed.charge" || domain.Handles(env.Type) {
		t.Fatalf("observed charge: %+v, %v", env, err)
	}
	if fact, err := domain.ParseFact(charge, nil); err != nil || fact != nil {
		t.Fatalf("an observed charge gave a fact %+v, %v", fact, err)
	}
	if _, _, err := domain.ObservedEvent(domain.Observation{Object: json.RawMessage(`{"object":"charge"}`)}); err == nil {
		t.Fatal("an object without an id was accepted")
	}
}

func TestThinEnvelopes(t *testing.T) {
	for _, tc := range []struct {
		name, payload string
		want          domain.Envelope
		stream        string
	}{
		{"v2 notification", `{"id":"evt_test_65R9Ijk8X7KY2wsIKGf16R9Ijk8XSQ3UpVAtGGRAm3sK4vc","object":"v2.core.event",
		  "type":"v1.billing.meter.error_report_triggered","livemode":false,"created":"2024-09-17T06:20:52.246Z",
		  "related_object":{"id":"mtr_test_61R9","type":"billing.meter","url":"/v1/billing/meters/mtr_test_61R9"},"context":"acct_9"}`,
			domain.Envelope{ID: "evt_test_65R9Ijk8X7KY2wsIKGf16R9Ijk8XSQ3UpVAtGGRAm3sK4vc", Type: "v1.billing.meter.error_report_triggered",
				Created: time.Date(2024, 9, 17, 6, 20, 52, 0, time.UTC), Account: "acct_9", ObjectType: "billing.meter", ObjectID: "mtr_test_61R9",
				Thin: true, Related: domain.ObjectRef{ID: "mtr_test_61R9", Type: "billing.meter", URL: "/v1/billing/meters/mtr_test_61R9"}},
			"acct_9/object-billing.meter-mtr_test_61R9"},
		{"v1 event sent thin", `{"id":"evt_1Thin","object":"v2.core.event","type":"customer.subscription.deleted","created":"2026-01-02T03:04:05Z",
		  "snapshot_event":"evt_1Full","related_object":{"id":"sub_1","type":"subscription","url":"/v1/subscriptions/sub_1"}}`,
			domain.Envelope{ID: "evt_1Thin", Type: "customer.subscription.deleted", Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				ObjectType: "subscription", ObjectID: "sub_1", Thin: true, SnapshotEvent: "evt_1Full",
				Related: domain.ObjectRef{ID: "sub_1", Type: "subscription", URL: "/v1/subscriptions/sub_1"}},
			"object-subscription-sub_1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, err := domain.ParseEnvelope([]byte(tc.payload))
			if err != nil {
				t.Fatal(err)
			}
			if env != tc.want || env.Stream() != tc.stream {
				t.Fatalf("envelope\n %+v (stream %s), want\n %+v (stream %s)", env, env.Stream(), tc.want, tc.stream)
			}
		})
	}
	full, err := domain.ParseEnvelope([]byte(`{"id":"evt_1","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_1","object":"customer"}}}`))
	if err != nil || full.Thin {
		t.Fatalf("a full event read as thin: %+v %v", full, err)
	}
}
