package api_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/logtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// TestRejectedWebhookLogsOneWarning: each refused delivery is logged as one
// WARN line with its reason, the event id the body names (when it has one)
// and the peer's address, and the log never holds a secret or a signature.
func TestRejectedWebhookLogsOneWarning(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	var logs logtest.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	srv, err := api.New(api.Config{Log: postgres.New(pool, logger), ReadModel: projections.NewQueries(pool), EnqueueThin: enqueueThin(pool), WebhookSecrets: []string{secret, oldSecret}, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)

	id := newEventID()
	valid := invoiceEvent(id, "cus_logged", "2023-10-16")
	malformed := []byte(`{"id":"evt_1","type":`)
	huge := append([]byte(`{"id":"evt_huge","pad":"`), bytes.Repeat([]byte("x"), 1<<20)...)
	longID := "evt_" + strings.Repeat("é", 5000) // a sender's id, as long as it likes
	longIDBody := []byte(`{"id":"` + longID + `","object":"event"}`)
	for _, tc := range []struct {
		name, signature, wantReason, wantID string
		body                                []byte
	}{
		{"wrong secret", sign(valid, "whsec_attacker", time.Now()), "invalid signature", id, valid},
		{"stale", sign(valid, secret, time.Now().Add(-10*time.Minute)), "stale signature timestamp", id, valid},
		{"missing signature", "", "missing Stripe-Signature", id, valid},
		{"malformed JSON", sign(malformed, secret, time.Now()), "malformed JSON", "", malformed},
		{"too large", sign(huge, secret, time.Now()), "over 1048576 bytes", "", huge},
		{"long claimed id", sign(longIDBody, "whsec_attacker", time.Now()), "invalid signature", longID, longIDBody},
	} {
		status, _ := post(t, ts.URL, tc.body, tc.signature)
		if status < 400 {
			t.Fatalf("%s: answered %d", tc.name, status)
		}
		out := logs.Take()
		var lines []map[string]any
		for sc := bufio.NewScanner(strings.NewReader(out)); sc.Scan(); {
			var line map[string]any
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				t.Fatalf("%s: log line is not JSON: %s", tc.name, sc.Text())
			}
			lines = append(lines, line)
		}
		if len(lines) != 1 {
			t.Errorf("%s: %d log lines, want 1:\n%s", tc.name, len(lines), out)
			continue
		}
		l := lines[0]
		reason, _ := l["reason"].(string)
		if l["level"] != "WARN" || l["msg"] != "webhook rejected" || !strings.Contains(reason, tc.wantReason) || !strings.HasPrefix(l["remote_addr"].(string), "127.0.0.1:") {
			t.Errorf("%s: log line %v, want a WARN webhook rejected with reason %q and the remote address", tc.name, l, tc.wantReason)
		}
		got, _ := l["event_id"].(string)
		if len(tc.wantID) > 64 {
			// Clipped at a character boundary, marked, with the full length.
			head, _, cut := strings.Cut(got, "…(")
			if !cut || len(head) > 64 || len(head) < 60 || !strings.HasPrefix(tc.wantID, head) || !strings.HasSuffix(got, "…("+strconv.Itoa(len(tc.wantID))+" bytes)") {
				t.Errorf("%s: event_id %q (%d bytes), want the claimed id clipped to 64 bytes", tc.name, got, len(got))
			}
		} else if got != tc.wantID {
			t.Errorf("%s: event_id %q, want %q", tc.name, got, tc.wantID)
		}
		for _, secretText := range []string{secret, oldSecret, "whsec_", "v1=", tc.signature} {
			if secretText != "" && strings.Contains(out, secretText) {
				t.Errorf("%s: the log holds %q:\n%s", tc.name, secretText, out)
			}
		}
	}
}

// TestRejectedWebhookClipsForwardedFor: a sender's X-Forwarded-For is logged
// clipped, like the event id it claims.
func TestRejectedWebhookClipsForwardedFor(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	var logs logtest.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	srv, err := api.New(api.Config{Log: postgres.New(pool, logger), ReadModel: projections.NewQueries(pool), EnqueueThin: enqueueThin(pool), WebhookSecrets: []string{secret}, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)

	body := invoiceEvent(newEventID(), "cus_fwd", "2023-10-16")
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/stripe/webhook", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	fwd := strings.TrimSuffix(strings.Repeat("203.0.113.7, ", 1000), ", ")
	req.Header.Set("X-Forwarded-For", fwd)
	req.Header.Set("Stripe-Signature", sign(body, "whsec_attacker", time.Now()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("answered %d, want 400", resp.StatusCode)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(logs.Take())), &line); err != nil {
		t.Fatal(err)
	}
	got, _ := line["forwarded_for"].(string)
	if want := fwd[:64] + "…(" + strconv.Itoa(len(fwd)) + " bytes)"; got != want {
		t.Errorf("forwarded_for = %q, want %q", got, want)
	}
}
