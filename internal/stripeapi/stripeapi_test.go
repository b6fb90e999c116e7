package stripeapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi/stripefake"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi/stripemock"
)

const key = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"

func newClient(t *testing.T, base string, retries int) *stripeapi.Client {
	t.Helper()
	c, err := stripeapi.New(stripeapi.Config{Key: key, Base: base, MaxRetries: retries, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// stripe-mock validates every request against Stripe's OpenAPI spec: the
// query parameters backfill and reconcile send must be ones Stripe accepts,
// and the responses read must parse.
func TestAgainstStripeMock(t *testing.T) {
	base := stripemock.Start(t)
	c := newClient(t, base, 1)
	ctx := context.Background()

	q := url.Values{"limit": {"100"}, "created[gte]": {"1700000000"}, "types[]": {"invoice.paid", "customer.subscription.deleted"}}
	page, err := c.ListPage(ctx, "/v1/events", q, "")
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	if len(page.Data) == 0 {
		t.Fatal("stripe-mock listed no event")
	}
	var ev struct {
		ID, Object string
		Data       struct{ Object json.RawMessage }
	}
	if err := json.Unmarshal(page.Data[0], &ev); err != nil || ev.Object != "event" || !strings.HasPrefix(ev.ID, "evt_") || len(ev.Data.Object) == 0 {
		t.Fatalf("listed event %s does not read as a Stripe event: %v", page.Data[0], err)
	}
	q.Set("starting_after", ev.ID)
	if _, err := c.ListPage(ctx, "/v1/events", q, ""); err != nil {
		t.Fatalf("list events starting_after: %v", err)
	}
	if body, err := c.Get(ctx, "/v1/events/"+ev.ID, nil, ""); err != nil || !json.Valid(body) {
		t.Fatalf("retrieve event: %v", err)
	}
	for _, list := range []struct {
		path  string
		query url.Values
		want  string
	}{
		{"/v1/customers", url.Values{}, "customer"},
		{"/v1/subscriptions", url.Values{"status": {"all"}, "customer": {"cus_123"}}, "subscription"},
		{"/v1/invoices", url.Values{"customer": {"cus_123"}}, "invoice"},
	} {
		n := 0
		err := c.List(ctx, list.path, list.query, "acct_123", func(item json.RawMessage) error {
			var head struct{ Object string }
			if err := json.Unmarshal(item, &head); err != nil || head.Object != list.want {
				return fmt.Errorf("item %.100s is not a %s", item, list.want)
			}
			n++
			return nil
		})
		if err != nil || n == 0 {
			t.Fatalf("list %s: %d items, %v", list.path, n, err)
		}
	}
	if _, err := c.Get(ctx, "/v1/subscriptions/sub_123", nil, ""); err != nil {
		t.Fatalf("retrieve subscription: %v", err)
	}

	// Parameters Stripe does not know are its 400, not retried.
	_, err = c.ListPage(ctx, "/v1/events", url.Values{"no_such_param": {"1"}}, "")
	if !stripeapi.IsKind(err, stripeapi.KindInvalidRequest) {
		t.Fatalf("an unknown parameter: %v, want an invalid_request error", err)
	}
	// A key Stripe does not accept.
	bad, _ := stripeapi.New(stripeapi.Config{Key: "not_a_key", Base: base})
	_, err = bad.Get(ctx, "/v1/customers/cus_123", nil, "")
	if !stripeapi.IsKind(err, stripeapi.KindAuth) || strings.Contains(err.Error(), "not_a_key") {
		t.Fatalf("bad key: %v, want an authentication error that does not repeat the key", err)
	}
}

func TestListPagesWithStartingAfter(t *testing.T) {
	api := stripefake.New(t, key)
	for i := range 250 {
		api.AddEvent(fmt.Appendf(nil, `{"id":"evt_%03d","object":"event","type":"customer.created","created":%d,"data":{"object":{"id":"cus_%d","object":"customer"}}}`, i, 1700000000+i, i))
	}
	c := newClient(t, api.URL, 0)
	var ids []string
	err := c.List(context.Background(), "/v1/events", nil, "", func(item json.RawMessage) error {
		id, err := stripeapi.ItemID(item)
		ids = append(ids, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 250 || ids[0] != "evt_249" || ids[249] != "evt_000" {
		t.Fatalf("listed %d events, first %v last %v; want 250 newest first", len(ids), ids[:1], ids[len(ids)-1:])
	}
	if n := api.Requests("/v1/events"); n != 3 {
		t.Fatalf("%d requests for 250 events at 100 a page, want 3", n)
	}
}

func TestRetries(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		fault    stripefake.Fault
		retries  int
		wantErr  stripeapi.Kind // 0: succeeds after the faults
		requests int
	}{
		{"429 with Retry-After", stripefake.Fault{Count: 2, Status: 429, Header: http.Header{"Retry-After": {"0"}}}, 3, 0, 3},
		{"429 without Retry-After backs off", stripefake.Fault{Count: 3, Status: 429}, 3, 0, 4},
		{"503", stripefake.Fault{Count: 1, Status: 503}, 3, 0, 2},
		{"429 past every retry", stripefake.Fault{Count: 10, Status: 429}, 2, stripeapi.KindRateLimited, 3},
		{"Stripe-Should-Retry false", stripefake.Fault{Count: 1, Status: 503, Header: http.Header{"Stripe-Should-Retry": {"false"}}}, 3, stripeapi.KindUnavailable, 1},
		{"Stripe-Should-Retry true on a 409", stripefake.Fault{Count: 1, Status: 409, Header: http.Header{"Stripe-Should-Retry": {"true"}}}, 3, 0, 2},
		{"400 is not retried", stripefake.Fault{Count: 1, Status: 400}, 3, stripeapi.KindInvalidRequest, 1},
		{"403 is a permission error", stripefake.Fault{Count: 1, Status: 403}, 3, stripeapi.KindPermission, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := stripefake.New(t, key)
			api.Put("", []byte(`{"id":"cus_1","object":"customer"}`))
			api.Inject(tc.fault)
			c := newClient(t, api.URL, tc.retries)
			body, err := c.Get(ctx, "/v1/customers/cus_1", nil, "")
			switch {
			case tc.wantErr == 0 && err != nil:
				t.Fatalf("err %v, want success after the faults", err)
			case tc.wantErr == 0 && !strings.Contains(string(body), "cus_1"):
				t.Fatalf("body %s", body)
			case tc.wantErr != 0 && !stripeapi.IsKind(err, tc.wantErr):
				t.Fatalf("err %v, want kind %s", err, tc.wantErr)
			case err != nil && strings.Contains(err.Error(), key):
				t.Fatalf("the error carries the key: %v", err)
			}
			if n := api.Requests("/v1/customers"); n != tc.requests {
				t.Fatalf("%d requests, want %d", n, tc.requests)
			}
		})
	}
}

// Retry-After is honoured: the client waits at least what Stripe asked.
func TestRetryAfterIsWaited(t *testing.T) {
	api := stripefake.New(t, key)
	api.Put("", []byte(`{"id":"cus_1","object":"customer"}`))
	api.Inject(stripefake.Fault{Count: 1, Status: 429, Header: http.Header{"Retry-After": {"1"}}})
	c, err := stripeapi.New(stripeapi.Config{Key: key, Base: api.URL, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Get(context.Background(), "/v1/customers/cus_1", nil, ""); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("answered after %s; Retry-After asked for 1 s", waited)
	}
}

func TestNotFoundAndNoKey(t *testing.T) {
	api := stripefake.New(t, key)
	c := newClient(t, api.URL, 3)
	_, err := c.Get(context.Background(), "/v1/subscriptions/sub_missing", nil, "")
	if !stripeapi.IsKind(err, stripeapi.KindNotFound) || api.Requests("/v1/") != 1 {
		t.Fatalf("err %v after %d requests, want one not_found", err, api.Requests("/v1/"))
	}
	if _, err := stripeapi.New(stripeapi.Config{Base: api.URL}); err != stripeapi.ErrNoKey {
		t.Fatalf("New without a key: %v", err)
	}
	if _, err := stripeapi.New(stripeapi.Config{Key: key, Base: "ftp://x"}); err == nil {
		t.Fatal("New accepted an ftp base")
	}
}
