package domain_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

func at(sec int64) time.Time { return time.Unix(sec, 0).UTC() }

func ts(sec int64) *time.Time {
	t := at(sec)
	return &t
}

func decodeFile(t *testing.T, name string, plans domain.Plans) (*domain.Fact, error) {
	t.Helper()
	payload, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, payload, plans)
}

func decode(t *testing.T, payload []byte, plans domain.Plans) (*domain.Fact, error) {
	t.Helper()
	env, err := domain.ParseEnvelope(payload)
	if err != nil {
		t.Fatalf("ParseEnvelope: %v", err)
	}
	return domain.Decode(env, payload, plans)
}

func TestDecode(t *testing.T) {
	t.Parallel()
	plans := domain.Plans{{PriceID: "price_pro_monthly", Plan: "pro"}}
	tests := []struct {
		file string
		want domain.Fact
	}{
		{
			file: "subscription_updated_2023-10-16.json",
			want: domain.Fact{
				EventID: "evt_1OaLegacySubUpd", Created: at(1706745600), CustomerID: "cus_Legacy",
				Subscription: &domain.Subscription{
					ID: "sub_1OaLegacy", CustomerID: "cus_Legacy", Status: "active",
					PriceID: "price_pro_monthly", ProductID: "prod_pro", LookupKey: "pro_monthly", Plan: "pro", Quantity: 3,
					CurrentPeriodStart: ts(1706745600), CurrentPeriodEnd: ts(1709251200), TrialEnd: ts(1706745600),
					CollectionMethod: "charge_automatically", LatestInvoiceID: "in_1OaLegacy", Items: "price_pro_monthly*3",
					Previous:    map[string]string{"status": "trialing", "current_period_start": "1704067200", "current_period_end": "1706745600"},
					LastEventID: "evt_1OaLegacySubUpd", LastEventCreated: at(1706745600),
				},
			},
		},
		{
			file: "subscription_deleted_2025-03-31.json",
			want: domain.Fact{
				EventID: "evt_1RbBasilSubDel", Created: at(1746057600), CustomerID: "cus_Basil",
				Subscription: &domain.Subscription{
					ID: "sub_1RbBasil", CustomerID: "cus_Basil", Status: "canceled",
					PriceID: "price_team_yearly", ProductID: "prod_team", Plan: "price_team_yearly", Quantity: 1,
					CurrentPeriodStart: ts(1743465600), CurrentPeriodEnd: ts(1746057600),
					CancelAtPeriodEnd: true, CancelAt: ts(1746057600), CanceledAt: ts(1744675200), EndedAt: ts(1746057600),
					CollectionMethod: "charge_automatically", Items: "price_team_yearly*1", Deleted: true,
					LastEventID: "evt_1RbBasilSubDel", LastEventCreated: at(1746057600),
				},
			},
		},
		{
			// Switched to paying by invoice: the change chain knows the method it was before.
			file: "subscription_updated_2025-09-30.json",
			want: domain.Fact{
				EventID: "evt_1SeCloverSubUpd", Created: at(1760000000), CustomerID: "cus_Clover",
				Subscription: &domain.Subscription{
					ID: "sub_1SeClover", CustomerID: "cus_Clover", Status: "active",
					PriceID: "price_pro_monthly", ProductID: "prod_pro", Plan: "pro", Quantity: 1,
					CurrentPeriodStart: ts(1759276800), CurrentPeriodEnd: ts(1761955200),
					CollectionMethod: "send_invoice", LatestInvoiceID: "in_1SeClover", Items: "price_pro_monthly*1",
					Previous:    map[string]string{"collection_method": "charge_automatically"},
					LastEventID: "evt_1SeCloverSubUpd", LastEventCreated: at(1760000000),
				},
			},
		},
		{
			// A renewal: the invoice's own period is the month that ended, its line the month paid for.
			file: "invoice_paid_2023-10-16.json",
			want: domain.Fact{
				EventID: "evt_1OaLegacyInvPaid", Created: at(1706749300), CustomerID: "cus_Legacy",
				Invoice: &domain.Invoice{
					ID: "in_1OaLegacy", CustomerID: "cus_Legacy", SubscriptionID: "sub_1OaLegacy", Status: "paid",
					AmountDue: 8700, AmountPaid: 8700, Currency: "usd", AttemptCount: 2,
					PeriodStart: ts(1704067200), PeriodEnd: ts(1706745600), PaidAt: ts(1706749300),
					PaidPeriodStart: ts(1706745600), PaidPeriodEnd: ts(1709251200),
					LastEventID: "evt_1OaLegacyInvPaid", LastEventCreated: at(1706749300),
				},
			},
		},
		{
			// Proration lines on parent.subscription_item_details; the one-off line is not paid-for time.
			file: "invoice_payment_succeeded_2025-03-31.json",
			want: domain.Fact{
				EventID: "evt_1RbBasilInvPaid", Created: at(1743469300), CustomerID: "cus_Basil",
				Invoice: &domain.Invoice{
					ID: "in_1RbBasil", CustomerID: "cus_Basil", SubscriptionID: "sub_1RbBasil", Status: "paid",
					AmountDue: 1200, AmountPaid: 1200, Currency: "eur", AttemptCount: 1,
					PeriodStart: ts(1743465600), PeriodEnd: ts(1743465600), PaidAt: ts(1743469300),
					PaidPeriodStart: ts(1743465600), PaidPeriodEnd: ts(1748736000),
					LastEventID: "evt_1RbBasilInvPaid", LastEventCreated: at(1743469300),
				},
			},
		},
		{
			file: "charge_refunded.json",
			want: domain.Fact{
				EventID: "evt_3ChargeRefunded", Created: at(1707000000), CustomerID: "cus_Legacy",
				Charge: &domain.Charge{
					ID: "ch_1OaLegacy", CustomerID: "cus_Legacy", InvoiceID: "in_1OaLegacy", Currency: "usd",
					Amount: 8700, AmountRefunded: 4350,
					LastEventID: "evt_3ChargeRefunded", LastEventCreated: at(1707000000),
				},
			},
		},
		{
			file: "charge_dispute_closed.json",
			want: domain.Fact{
				EventID: "evt_1DisputeClosed", Created: at(1710000000),
				Dispute: &domain.Dispute{
					ID: "dp_1Legacy", ChargeID: "ch_1OaLegacy", Status: "lost", Currency: "usd", Amount: 8700,
					LastEventID: "evt_1DisputeClosed", LastEventCreated: at(1710000000),
				},
			},
		},
		{
			file: "checkout_session_completed.json",
			want: domain.Fact{EventID: "evt_1CheckoutDone", Created: at(1704067205), CustomerID: "cus_Legacy"},
		},
		{
			file: "customer_deleted.json",
			want: domain.Fact{
				EventID: "evt_1CustomerDeleted", Created: at(1712000000), CustomerID: "cus_Legacy",
				Customer: &domain.Customer{
					ID: "cus_Legacy", Email: "grace@example.com", Name: "Grace", Deleted: true,
					LastEventID: "evt_1CustomerDeleted", LastEventCreated: at(1712000000),
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			fact, err := decodeFile(t, tt.file, plans)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if want := &tt.want; !reflect.DeepEqual(fact, want) {
				t.Errorf("Decode:\n got %s\nwant %s", dump(t, fact), dump(t, want))
			}
		})
	}
}

// event wraps a data.object into a Stripe event of the given type.
func event(typ, object string) []byte {
	return []byte(`{"id":"evt_test","object":"event","api_version":"2023-10-16","created":1700000000,` +
		`"type":"` + typ + `","data":{"object":` + object + `}}`)
}

func TestDecodeExpandableFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, typ, object string
		check             func(domain.Fact) bool
	}{
		{
			name: "expanded subscription customer and product",
			typ:  "customer.subscription.created",
			object: `{"id":"sub_1","object":"subscription","status":"incomplete","customer":{"id":"cus_1","object":"customer"},
				"current_period_end":1702592000,"items":{"data":[{"quantity":1,"price":{"id":"price_1","product":{"id":"prod_1","object":"product"}}}]}}`,
			check: func(f domain.Fact) bool {
				return f.CustomerID == "cus_1" && f.Subscription.CustomerID == "cus_1" && f.Subscription.ProductID == "prod_1"
			},
		},
		{
			name: "expanded invoice subscription, legacy shape",
			typ:  "invoice.finalized",
			object: `{"id":"in_1","object":"invoice","status":"open","customer":"cus_1",
				"subscription":{"id":"sub_1","object":"subscription"},"lines":{"data":[]}}`,
			check: func(f domain.Fact) bool { return f.Invoice.SubscriptionID == "sub_1" },
		},
		{
			name: "expanded invoice subscription on parent",
			typ:  "invoice.finalized",
			object: `{"id":"in_1","object":"invoice","status":"open","customer":"cus_1",
				"parent":{"type":"subscription_details","subscription_details":{"subscription":{"id":"sub_2","object":"subscription"}}}}`,
			check: func(f domain.Fact) bool { return f.Invoice.SubscriptionID == "sub_2" },
		},
		{
			name: "subscription only on the line item",
			typ:  "invoice.created",
			object: `{"id":"in_1","object":"invoice","status":"draft","customer":"cus_1","parent":null,
				"lines":{"data":[{"period":{"start":1700000000,"end":1702592000},
				"parent":{"type":"subscription_item_details","subscription_item_details":{"subscription":"sub_3"}}}]}}`,
			check: func(f domain.Fact) bool {
				return f.Invoice.SubscriptionID == "sub_3" && f.Invoice.PaidPeriodEnd.Equal(at(1702592000))
			},
		},
		{
			name: "no lines: no paid-for period (the invoice's own period is the one that ended)",
			typ:  "invoice.paid",
			object: `{"id":"in_1","object":"invoice","status":"paid","customer":"cus_1","subscription":"sub_1",
				"period_start":1700000000,"period_end":1702592000}`,
			check: func(f domain.Fact) bool {
				return f.Invoice.PaidPeriodStart == nil && f.Invoice.PaidPeriodEnd == nil && f.Invoice.SubscriptionID == "sub_1"
			},
		},
		{
			name: "only one-off lines: no paid-for period",
			typ:  "invoice.paid",
			object: `{"id":"in_1","object":"invoice","status":"paid","customer":"cus_1","period_end":1702592000,
				"lines":{"data":[{"type":"invoiceitem","period":{"start":1700000000,"end":1700000000}}]}}`,
			check: func(f domain.Fact) bool { return f.Invoice.PaidPeriodEnd == nil && f.Invoice.SubscriptionID == "" },
		},
		{
			name:   "dispute on an expanded charge names its customer",
			typ:    "charge.dispute.created",
			object: `{"id":"dp_1","object":"dispute","status":"needs_response","charge":{"id":"ch_1","object":"charge","customer":"cus_9"}}`,
			check: func(f domain.Fact) bool {
				return f.CustomerID == "cus_9" && f.Dispute.CustomerID == "cus_9" && f.Dispute.ChargeID == "ch_1"
			},
		},
		{
			name: "invoice payment (basil+) names its invoice, not its customer",
			typ:  "invoice_payment.paid",
			object: `{"id":"inpay_1","object":"invoice_payment","amount_paid":2900,"amount_requested":2900,"created":1743469200,
				"currency":"usd","invoice":"in_1","is_default":true,"livemode":false,
				"payment":{"type":"payment_intent","payment_intent":"pi_1"},"status":"paid",
				"status_transitions":{"canceled_at":null,"paid_at":1743469260}}`,
			check: func(f domain.Fact) bool {
				p := f.InvoicePayment
				return f.CustomerID == "" && p.ID == "inpay_1" && p.InvoiceID == "in_1" && p.AmountPaid == 2900 &&
					p.Currency == "usd" && p.PaidAt.Equal(at(1743469260)) && p.CustomerID == ""
			},
		},
		{
			name:   "invoice payment on an expanded invoice names its customer",
			typ:    "invoice_payment.paid",
			object: `{"id":"inpay_1","object":"invoice_payment","status":"paid","invoice":{"id":"in_1","object":"invoice","customer":"cus_9"}}`,
			check: func(f domain.Fact) bool {
				return f.CustomerID == "cus_9" && f.InvoicePayment.InvoiceID == "in_1" && f.InvoicePayment.CustomerID == "cus_9"
			},
		},
		{
			name:   "guest charge names no customer",
			typ:    "charge.refunded",
			object: `{"id":"ch_1","object":"charge","customer":null,"amount":500,"amount_refunded":500,"refunded":true}`,
			check:  func(f domain.Fact) bool { return f.CustomerID == "" && f.Charge.Refunded },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fact, err := decode(t, event(tt.typ, tt.object), nil)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if fact == nil || !tt.check(*fact) {
				t.Errorf("Decode: got %s", dump(t, fact))
			}
		})
	}
}

func TestDecodeUnknownType(t *testing.T) {
	t.Parallel()
	payload := event("payment_intent.succeeded", `{"id":"pi_1","object":"payment_intent","customer":"cus_1"}`)
	if domain.Handles("payment_intent.succeeded") {
		t.Error("Handles(payment_intent.succeeded) = true")
	}
	facts, err := decode(t, payload, nil)
	if facts != nil || err != nil {
		t.Errorf("Decode = %v, %v; want nil, nil", facts, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, typ, object, want string
	}{
		{"price is not an object", "customer.subscription.updated",
			`{"id":"sub_1","object":"subscription","status":"active","customer":"cus_1","items":{"data":[{"price":"price_1"}]}}`,
			"items.data.price"},
		{"period end is a string", "customer.subscription.updated",
			`{"id":"sub_1","object":"subscription","status":"active","customer":"cus_1","current_period_end":"soon"}`,
			"current_period_end"},
		{"subscription without customer", "customer.subscription.created",
			`{"id":"sub_1","object":"subscription","status":"active"}`, "data.object.customer is missing"},
		{"invoice without status", "invoice.paid",
			`{"id":"in_1","object":"invoice","customer":"cus_1"}`, "data.object.status is missing"},
		{"wrong object", "invoice.paid",
			`{"id":"sub_1","object":"subscription","customer":"cus_1"}`, `data.object.object is "subscription", want "invoice"`},
		{"object without id", "customer.updated", `{"object":"customer"}`, "data.object.id is missing"},
		{"dispute without charge", "charge.dispute.created", `{"id":"dp_1","object":"dispute"}`, "data.object.charge is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := decode(t, event(tt.typ, tt.object), nil)
			if err == nil {
				t.Fatal("Decode succeeded")
			}
			msg := err.Error()
			if domain.ErrorCode(err) != domain.EINVALID || !strings.Contains(msg, "evt_test") || !strings.Contains(msg, tt.want) {
				t.Errorf("Decode error = %q; want an %s error naming evt_test and %q", msg, domain.EINVALID, tt.want)
			}
		})
	}
}

func TestParsePlans(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    domain.Plans
		wantErr string
	}{
		{in: "", want: domain.Plans{}},
		{in: "price_abc=pro,price_def=team", want: domain.Plans{{PriceID: "price_abc", Plan: "pro"}, {PriceID: "price_def", Plan: "team"}}},
		{in: " price_abc = pro , price_def=team ", want: domain.Plans{{PriceID: "price_abc", Plan: "pro"}, {PriceID: "price_def", Plan: "team"}}},
		{in: "price_abc", wantErr: `entry "price_abc"`},
		{in: "price_abc=pro,", wantErr: `entry ""`},
		{in: "=pro", wantErr: `entry "=pro"`},
		{in: "price_abc=", wantErr: `entry "price_abc="`},
		{in: "price_abc=pro,price_abc=team", wantErr: "price_abc is mapped twice"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := domain.ParsePlans(tt.in)
			switch {
			case tt.wantErr != "":
				if err == nil || domain.ErrorCode(err) != domain.EINVALID || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("ParsePlans(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
			case err != nil || !reflect.DeepEqual(got, tt.want):
				t.Errorf("ParsePlans(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestPlansPlan(t *testing.T) {
	t.Parallel()
	plans := domain.Plans{{PriceID: "price_abc", Plan: "pro"}}
	tests := []struct{ price, lookupKey, want string }{
		{"price_abc", "pro_monthly", "pro"},
		{"price_def", "team_monthly", "team_monthly"},
		{"price_def", "", "price_def"},
	}
	for _, tt := range tests {
		if got := plans.Plan(tt.price, tt.lookupKey); got != tt.want {
			t.Errorf("Plan(%q, %q) = %q; want %q", tt.price, tt.lookupKey, got, tt.want)
		}
	}
	if got := domain.Plans(nil).Plan("price_abc", ""); got != "price_abc" {
		t.Errorf("nil Plans: Plan(price_abc) = %q", got)
	}
}
func TestCustomerStreamOf(t *testing.T) {
	t.Parallel()
	cases := []struct {
		customer, account, want string
		ok                      bool
	}{
		{"cus_123", "", "customer-cus_123", true},
		{"cus_123", "acct_9", "acct_9/customer-cus_123", true},
		{"", "", "", false},
		{"cus_1/../x", "", "", false},
		{"cus_1", "acct 9", "", false},
	}
	for _, tc := range cases {
		got, err := domain.CustomerStreamOf(tc.account, tc.customer)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("CustomerStreamOf(%q, %q) = %q, %v; want %q, ok=%v", tc.account, tc.customer, got, err, tc.want, tc.ok)
		}
	}
}

// TestDecodeStorableNamesTheField: a fact the read model cannot hold fails
// with the path of the field at fault, and text it can hold once cleaned
// is cleaned, in nested records too.
func TestDecodeStorableNamesTheField(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, eventType, object, wantErr string
	}{
		{"time past 9999", "customer.subscription.updated",
			`{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","current_period_end":253402300800}`,
			"fact.Subscription.CurrentPeriodEnd is out of range (10000-01-01T00:00:00Z)"},
		{"control character in a key", "customer.subscription.updated",
			`{"id":"sub_\u0001","object":"subscription","customer":"cus_1","status":"active"}`,
			"fact.Subscription.ID holds a control character"},
		{"overlong id", "invoice.paid",
			`{"id":"in_1","object":"invoice","customer":"cus_1","status":"paid","subscription":"sub_` + strings.Repeat("x", 300) + `"}`,
			"fact.Invoice.SubscriptionID is 304 bytes long, over 255"},
		{"NUL in text", "customer.updated", `{"id":"cus_1","object":"customer","name":"a\u0000b"}`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			payload := []byte(`{"id":"evt_1","object":"event","type":"` + c.eventType + `","created":1700000000,"data":{"object":` + c.object + `}}`)
			env := domain.Envelope{ID: "evt_1", Type: c.eventType, Created: time.Unix(1700000000, 0).UTC()}
			f, err := domain.DecodeStorable(env, payload, nil)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatal(err)
			case c.wantErr == "":
				if f.Customer.Name != "ab" {
					t.Fatalf("name %q, want the NUL cleaned away", f.Customer.Name)
				}
			case err == nil || !strings.Contains(err.Error(), c.wantErr) || domain.ErrorCode(err) != domain.EINVALID:
				t.Fatalf("error %v, want EINVALID %q", err, c.wantErr)
			}
		})
	}
}
