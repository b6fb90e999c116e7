package api_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
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
	for _, tc := range []struct {
		name, signature, wantReason, wantID string
		body                                []byte
	}{
		{"wrong secret", sign(valid, "whsec_attacker", time.Now()), "invalid signature", id, valid},
		{"stale", sign(valid, secret, time.Now().Add(-10*time.Minute)), "stale signature timestamp", id, valid},
		{"missing signature", "", "missing Stripe-Signature", id, valid},
		{"malformed JSON", sign(malformed, secret, time.Now()), "malformed JSON", "", malformed},
		{"too large", sign(huge, secret, time.Now()), "over 1048576 bytes", "", huge},
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
		if got, _ := l["event_id"].(string); got != tc.wantID {
			t.Errorf("%s: event_id %q, want %q", tc.name, got, tc.wantID)
		}
		for _, secretText := range []string{secret, oldSecret, "whsec_", "v1=", tc.signature} {
			if secretText != "" && strings.Contains(out, secretText) {
				t.Errorf("%s: the log holds %q:\n%s", tc.name, secretText, out)
			}
		}
	}
}
