package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// do sends method path with an Authorization header (when given) and
// returns the status and the decoded JSON body.
func do(t *testing.T, env *testEnv, method, path, authorization string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, env.url+path, nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// TestBearerSchemeIsCaseInsensitive: RFC 9110 auth schemes are
// case-insensitive; the token itself is compared exactly.
func TestBearerSchemeIsCaseInsensitive(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, tc := range []struct {
		authorization string
		authorized    bool
	}{
		{"Bearer " + apiToken, true},
		{"bearer " + apiToken, true},
		{"BEARER  " + apiToken, true},
		{"Basic " + apiToken, false},
		{"bearer " + strings.ToUpper(apiToken), false},
		{apiToken, false},
	} {
		// No projection runs here: an authorized request meets the missing read model (503).
		status, body := do(t, env, http.MethodGet, "/v1/customers/cus_x", tc.authorization)
		if got := status != http.StatusUnauthorized; got != tc.authorized || errorCode(body) == "" {
			t.Errorf("Authorization %q: %d %v, authorized = %v, want %v", tc.authorization, status, body, got, tc.authorized)
		}
	}
}

// TestUnknownRoutesAndMethodsShareTheErrorShape: 404 not_found for a path
// nothing serves, 405 method_not_allowed for a known path asked with
// another method, the same way on every route.
func TestUnknownRoutesAndMethodsShareTheErrorShape(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, "/nope", 404, domain.ENOTFOUND},
		{http.MethodGet, "/v1/nope", 404, domain.ENOTFOUND},
		{http.MethodGet, "/stripe/webhook", 405, "method_not_allowed"},
		{http.MethodPost, "/healthz", 405, "method_not_allowed"},
		{http.MethodPost, "/v1/customers/cus_x", 405, "method_not_allowed"},
		{http.MethodDelete, "/v1/subscriptions/sub_x", 405, "method_not_allowed"},
	} {
		status, body := do(t, env, tc.method, tc.path, "Bearer "+apiToken)
		e, _ := body["error"].(map[string]any)
		if status != tc.status || errorCode(body) != tc.code || e["message"] == "" {
			t.Errorf("%s %s: %d %v, want %d %s", tc.method, tc.path, status, body, tc.status, tc.code)
		}
	}
}

func TestEventsCSVRefusesPagingParameters(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, q := range []string{"limit=abc", "limit=10", "after=3"} {
		status, body := do(t, env, http.MethodGet, "/v1/customers/cus_x/events.csv?"+q, "Bearer "+apiToken)
		if status != http.StatusBadRequest || errorCode(body) != domain.EINVALID {
			t.Errorf("events.csv?%s: %d %v, want 400 invalid", q, status, body)
		}
	}
}

// TestStateBeforeTheFirstEventHasNoUpdatedAt: a state before anything
// happened has no update time (not 0001-01-01).
func TestStateBeforeTheFirstEventHasNoUpdatedAt(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	id := newEventID()
	payload := invoiceEvent(id, "cus_early", "2023-10-16")
	created := time.Now().Truncate(time.Second)
	if _, err := env.log.Append(context.Background(), eventlog.Event{ID: id, Stream: "customer-cus_early", Type: "invoice.paid",
		Created: created, Payload: payload, Signature: sign(payload, secret, time.Now())}); err != nil {
		t.Fatal(err)
	}
	at := created.Add(-time.Hour).UTC().Format(time.RFC3339)
	status, body := do(t, env, http.MethodGet, "/v1/customers/cus_early/state?at="+at, "Bearer "+apiToken)
	if status != http.StatusOK || body["customer_id"] != "cus_early" {
		t.Fatalf("state before the first event: %d %v", status, body)
	}
	if v, ok := body["updated_at"]; ok {
		t.Errorf("state before the first event has updated_at %v, want none", v)
	}
	status, body = do(t, env, http.MethodGet, "/v1/customers/cus_early/state?at="+created.Add(time.Hour).UTC().Format(time.RFC3339), "Bearer "+apiToken)
	if status != http.StatusOK || body["updated_at"] == nil {
		t.Errorf("state after the event: %d %v, want an updated_at", status, body)
	}
}
