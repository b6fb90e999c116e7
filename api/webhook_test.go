package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

const (
	secret    = "whsec_test_current"
	oldSecret = "whsec_test_previous"
)

var eventSeq atomic.Int64

// invoiceEvent renders a Stripe-shaped invoice.paid event for a customer.
func invoiceEvent(id, customer, apiVersion string) []byte {
	return []byte(fmt.Sprintf(`{
  "id": %q,
  "object": "event",
  "api_version": %q,
  "created": %d,
  "livemode": false,
  "pending_webhooks": 1,
  "type": "invoice.paid",
  "data": {"object": {"id": "in_%s", "object": "invoice", "customer": %q, "status": "paid", "amount_due": 2000, "amount_paid": 2000, "currency": "usd"}}
}`, id, apiVersion, time.Now().Unix(), id, customer))
}

func newEventID() string {
	return fmt.Sprintf("evt_test_%d_%d", time.Now().UnixNano(), eventSeq.Add(1))
}

// sign returns the Stripe-Signature header for payload, made by stripe-go.
func sign(payload []byte, secret string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: at}).Header
}

func post(t testing.TB, url string, body []byte, signature string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/stripe/webhook", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if signature != "" {
		req.Header.Set("Stripe-Signature", signature)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST webhook: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("response is not JSON (%d): %s", resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func TestWebhookStoresVerifiedEventByteForByte(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	id := newEventID()
	payload := invoiceEvent(id, "cus_bytes", "2023-10-16")
	payload = append(payload, "\n  "...) // whitespace must survive: it is part of what was signed
	sig := sign(payload, secret, time.Now())

	status, body := post(t, env.url, payload, sig)
	if status != http.StatusOK || body["received"] != true || body["duplicate"] != false {
		t.Fatalf("got %d %v, want 200 received, not duplicate", status, body)
	}
	recs, err := env.log.ReadStream(context.Background(), "customer-cus_bytes", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("stream has %d records, want 1", len(recs))
	}
	r := recs[0]
	if !bytes.Equal(r.Payload, payload) {
		t.Errorf("stored payload differs from the request body")
	}
	if r.Signature != sig || r.ID != id || r.Type != "invoice.paid" || r.APIVersion != "2023-10-16" || r.StreamVersion != 0 {
		t.Errorf("stored record = %+v", r.Event)
	}
}

func TestWebhookRedeliveryIsDuplicate(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	id := newEventID()
	payload := invoiceEvent(id, "cus_dup", "2023-10-16")
	for i, wantDup := range []bool{false, true, true} {
		// Stripe re-signs each delivery attempt with a new timestamp.
		status, body := post(t, env.url, payload, sign(payload, secret, time.Now().Add(time.Duration(i)*time.Second)))
		if status != http.StatusOK || body["duplicate"] != wantDup {
			t.Fatalf("delivery %d: got %d %v, want 200 duplicate=%v", i, status, body, wantDup)
		}
	}
	if n := env.count(t); n != 1 {
		t.Fatalf("%d events stored, want 1", n)
	}
}

func TestWebhookAcceptsNewerAPIVersionAndRotatedSecret(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	cases := []struct {
		name       string
		apiVersion string
		secret     string
	}{
		{"stripe-go pin", "2023-10-16", secret},
		{"newer API version", "2025-03-31.basil", secret},
		{"previous secret during rotation", "2023-10-16", oldSecret},
	}
	for _, tc := range cases {
		payload := invoiceEvent(newEventID(), "cus_versions", tc.apiVersion)
		status, body := post(t, env.url, payload, sign(payload, tc.secret, time.Now()))
		if status != http.StatusOK || body["duplicate"] != false {
			t.Errorf("%s: got %d %v, want 200", tc.name, status, body)
		}
	}
	if n := env.count(t); n != int64(len(cases)) {
		t.Fatalf("%d events stored, want %d", n, len(cases))
	}
}

func TestWebhookRejectsBadInputAndStoresNothing(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	valid := invoiceEvent(newEventID(), "cus_bad", "2023-10-16")
	noID := []byte(`{"object":"event","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_1","object":"invoice","customer":"cus_bad"}}}`)
	malformed := []byte(`{"id":"evt_1","type":`)
	huge := append([]byte(`{"id":"evt_huge","object":"event","type":"invoice.paid","created":1700000000,"data":{"object":{"pad":"`),
		bytes.Repeat([]byte("x"), 1<<20)...)
	huge = append(huge, `"}}}`...)

	cases := []struct {
		name       string
		body       []byte
		signature  string
		wantStatus int
		wantText   string
	}{
		{"missing signature", valid, "", 400, "missing Stripe-Signature"},
		{"wrong secret", valid, sign(valid, "whsec_attacker", time.Now()), 400, "invalid signature"},
		{"tampered body", append(append([]byte{}, valid...), ' '), sign(valid, secret, time.Now()), 400, "invalid signature"},
		{"garbage header", valid, "not-a-signature", 400, "malformed Stripe-Signature"},
		{"stale timestamp", valid, sign(valid, secret, time.Now().Add(-10*time.Minute)), 400, "stale signature timestamp"},
		{"malformed JSON", malformed, sign(malformed, secret, time.Now()), 400, "malformed JSON"},
		{"missing event id", noID, sign(noID, secret, time.Now()), 400, "no id"},
		{"oversized body", huge, sign(huge, secret, time.Now()), 413, "over 1048576 bytes"},
	}
	for _, tc := range cases {
		status, body := post(t, env.url, tc.body, tc.signature)
		errObj, _ := body["error"].(map[string]any)
		msg, _ := errObj["message"].(string)
		if status != tc.wantStatus || !strings.Contains(msg, tc.wantText) || errObj["code"] == "" {
			t.Errorf("%s: got %d %v, want %d with message containing %q", tc.name, status, body, tc.wantStatus, tc.wantText)
		}
		if strings.Contains(fmt.Sprint(body), secret) {
			t.Errorf("%s: response leaks the webhook secret", tc.name)
		}
	}
	if n := env.count(t); n != 0 {
		t.Fatalf("%d events stored after rejected deliveries, want 0", n)
	}
}

func TestWebhookDatabaseDownAnswers503ThenAcceptsRetry(t *testing.T) {
	t.Parallel()
	env := newTestEnvBehindProxy(t)
	payload := invoiceEvent(newEventID(), "cus_down", "2023-10-16")

	env.proxy.Down()
	status, body := post(t, env.url, payload, sign(payload, secret, time.Now()))
	if status != http.StatusServiceUnavailable {
		t.Fatalf("database down: got %d %v, want 503", status, body)
	}
	env.proxy.Up(t)
	status, body = post(t, env.url, payload, sign(payload, secret, time.Now()))
	if status != http.StatusOK || body["duplicate"] != false {
		t.Fatalf("after recovery: got %d %v, want 200 not duplicate", status, body)
	}
	if n := env.count(t); n != 1 {
		t.Fatalf("%d events stored, want 1", n)
	}
}

func TestUnknownRouteUsesErrorShape(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	resp, err := http.Get(env.url + "/nope")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Error struct{ Code, Message string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 404 || body.Error.Code != domain.ENOTFOUND {
		t.Fatalf("got %d %+v (%v), want 404 not_found", resp.StatusCode, body, err)
	}
}

// BenchmarkWebhook measures signed deliveries through the real Echo server
// into the PostgreSQL event log, 8 concurrent senders per core.
func BenchmarkWebhook(b *testing.B) {
	env := newTestEnv(b)
	b.SetParallelism(8)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			payload := invoiceEvent(newEventID(), fmt.Sprintf("cus_bench_%d", eventSeq.Load()%100), "2023-10-16")
			if status, body := post(b, env.url, payload, sign(payload, secret, time.Now())); status != http.StatusOK {
				b.Fatalf("got %d %v", status, body)
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "deliveries/s")
}

// TestWebhookStoresOddButVerifiedEvents: a verified event is never dropped
// (DESIGN §2), even when it lacks what the ledger uses to file it; it is
// stored under object-unknown-<event id> for the projections to skip.
func TestWebhookStoresOddButVerifiedEvents(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, payload := range []string{
		`{"id":"%s","object":"event","type":"invoice.paid"}`,
		`{"id":"%s","object":"event","type":"future.thing","created":1700000000,"data":{"object":"not an object"}}`,
	} {
		id := newEventID()
		body := []byte(fmt.Sprintf(payload, id))
		if status, resp := post(t, env.url, body, sign(body, secret, time.Now())); status != http.StatusOK || resp["duplicate"] != false {
			t.Fatalf("%s: got %d %v, want 200 stored", body, status, resp)
		}
		recs, err := env.log.ReadStream(context.Background(), "object-unknown-"+id, 0, 10)
		if err != nil || len(recs) != 1 || !bytes.Equal(recs[0].Payload, body) {
			t.Fatalf("%s: stream object-unknown-%s holds %d records (%v), want the payload", body, id, len(recs), err)
		}
	}
}
