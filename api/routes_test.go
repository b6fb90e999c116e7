package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

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
