package api_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/api"
)

// TestWebhookRefusesBadEnvelopes: validly signed events whose envelope no
// Stripe event has get a 400 naming the field, and nothing is stored
// (they were 500s, retried by Stripe for three days).
func TestWebhookRefusesBadEnvelopes(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	long := strings.Repeat("a", 3000)
	event := func(id, customer, apiVersion, created string) []byte {
		return []byte(`{"id":"` + id + `","object":"event","api_version":"` + apiVersion + `","created":` + created +
			`,"type":"invoice.paid","data":{"object":{"id":"in_env","object":"invoice","customer":"` + customer + `"}}}`)
	}
	for _, tc := range []struct {
		name, field string
		body        []byte
	}{
		{"3,000-character event id", "id", event("evt_"+long, "cus_env", "2023-10-16", "1700000000")},
		{"3,000-character customer", "data.object.customer", event("evt_env_1", "cus_"+long, "2023-10-16", "1700000000")},
		{"NUL in the event id", "id", event(`evt_env\u0000x`, "cus_env", "2023-10-16", "1700000000")},
		{"NUL in the customer", "data.object.customer", event("evt_env_2", `cus_env\u0000`, "2023-10-16", "1700000000")},
		{"NUL in api_version", "api_version", event("evt_env_3", "cus_env", `2023-10-16\u0000`, "1700000000")},
		{"65-byte api_version", "api_version", event("evt_env_4", "cus_env", strings.Repeat("9", 65), "1700000000")},
		{"slash in the account", "account", []byte(`{"id":"evt_env_5","object":"event","account":"acct_1/customer-cus_x","created":1700000000,"type":"invoice.paid"}`)},
		{"created 9.3e12", "created", event("evt_env_6", "cus_env", "2023-10-16", "9300000000000")},
		{"created negative", "created", event("evt_env_7", "cus_env", "2023-10-16", "-1000000000000")},
		{"invalid UTF-8 in the event id", "id", event("evt_env_\xff", "cus_env", "2023-10-16", "1700000000")},
		{"3,000-character object id", "data.object.id", []byte(`{"id":"evt_env_8","object":"event","created":1700000000,"type":"x","data":{"object":{"id":"` + long + `","object":"thing"}}}`)},
	} {
		status, body := post(t, env.url, tc.body, sign(tc.body, secret, time.Now()))
		errObj, _ := body["error"].(map[string]any)
		msg, _ := errObj["message"].(string)
		if status != http.StatusBadRequest || !strings.Contains(msg, "event field "+tc.field+" ") {
			t.Errorf("%s: got %d %v, want 400 naming %s", tc.name, status, body, tc.field)
		}
	}
	if n := env.count(t); n != 0 {
		t.Fatalf("%d events stored after refused envelopes, want 0", n)
	}
}

// TestWebhookNeverMergesInvalidUTF8Ids: two events whose ids differ only in
// invalid UTF-8 bytes are both refused, never deduplicated as one (JSON
// decoding turns every invalid byte into U+FFFD).
func TestWebhookNeverMergesInvalidUTF8Ids(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, bad := range []string{"\xfe", "\xff"} {
		// The raw byte in the JSON string, as a client would send it.
		body := bytes.Replace(invoiceEvent("evt_utf8_BAD", "cus_utf8", "2023-10-16"), []byte("BAD"), []byte(bad), 1)
		id := string(bytes.Split(body, []byte(`"`))[3])
		if status, resp := post(t, env.url, body, sign(body, secret, time.Now())); status != http.StatusBadRequest {
			t.Errorf("id %q: got %d %v, want 400", id, status, resp)
		}
	}
	if n := env.count(t); n != 0 {
		t.Fatalf("%d events stored, want 0", n)
	}
}

// TestReadAPIRefusesBadIds: path ids and ?account= that are not Stripe ids
// get a 400 naming them, never reaching a query (GET /v1/customers/%00 was
// a 500).
func TestReadAPIRefusesBadIds(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	long := strings.Repeat("x", 3000)
	for _, tc := range []struct{ path, what string }{
		{"/v1/customers/%00", "customer id"},
		{"/v1/customers/cus_" + long, "customer id"},
		{"/v1/customers/%FF%FE", "customer id"},
		{"/v1/subscriptions/%00", "subscription id"},
		{"/v1/customers/%00/events", "customer id"},
		{"/v1/customers/%00/events.csv", "customer id"},
		{"/v1/customers/%00/state?at=2024-01-01T00:00:00Z", "customer id"},
		{"/v1/customers/cus_ok/events?account=" + url.QueryEscape("acct_1\x00"), "account"},
	} {
		status, body := getJSON(t, env.url+tc.path, apiToken)
		errObj, _ := body["error"].(map[string]any)
		msg, _ := errObj["message"].(string)
		if status != http.StatusBadRequest || !strings.HasPrefix(msg, tc.what+" ") {
			t.Errorf("GET %.60s: got %d %v, want 400 about the %s", tc.path, status, body, tc.what)
		}
	}
	if status, body := getJSON(t, env.url+"/v1/customers/cus_unknown/events", apiToken); status != http.StatusNotFound {
		t.Errorf("GET an unknown customer: got %d %v, want 404", status, body)
	}
}

// TestWebhookInflightCap: beyond the cap, a delivery is answered 503 (Stripe
// retries) instead of queueing for the database pool; slots free up when
// the requests holding them end.
func TestWebhookInflightCap(t *testing.T) {
	t.Parallel()
	env := newTestEnvWith(t, func(c *api.Config) { c.MaxInflightWebhooks = 2 })
	// Two senders that sent their headers and stall on the body.
	var stalled []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", strings.TrimPrefix(env.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
		stalled = append(stalled, c)
	}
	waitMetric(t, env, "ledger_webhook_inflight 2")
	payload := invoiceEvent(newEventID(), "cus_cap", "2023-10-16")
	if status, body := post(t, env.url, payload, sign(payload, secret, time.Now())); status != http.StatusServiceUnavailable {
		t.Fatalf("with 2 requests in flight and a cap of 2: got %d %v, want 503", status, body)
	}
	for _, c := range stalled {
		c.Close()
	}
	postUntil(t, env, payload, http.StatusOK, "after the stalled requests ended")
	if n := env.count(t); n != 1 {
		t.Fatalf("%d events stored, want 1", n)
	}
}

// postUntil posts payload until the webhook answers want, failing after 10 s.
func postUntil(t *testing.T, env *testEnv, payload []byte, want int, when string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body := post(t, env.url, payload, sign(payload, secret, time.Now()))
		if status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %d %v, want %d", when, status, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMetric waits up to 30 s for /metrics to show line.
func waitMetric(t *testing.T, env *testEnv, line string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(env.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(body, []byte("\n"+line+"\n")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never showed %q", line)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
