package api_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// TestWebhookBodyLimitOnESDB: on the EventStoreDB backend the webhook takes
// bodies up to what the server stores (esdb.Log.MaxPayload, below the 1 MiB
// of DESIGN §5: KurrentDB refuses appends over 1 MiB including metadata)
// and refuses larger ones with 413 before storing anything, instead of a
// 500 from the server's refusal.
func TestWebhookBodyLimitOnESDB(t *testing.T) {
	t.Parallel()
	node := esdbtest.New(t)
	pool, _ := pgtest.NewPool(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	log, err := esdb.Open(t.Context(), node.URL(), pool, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(log.Close)
	srv, err := api.New(api.Config{Log: log, ReadModel: projections.NewQueries(pool), EnqueueThin: enqueueThin(pool), WebhookSecrets: []string{secret}, APIToken: apiToken, Plans: testPlans, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)

	for _, tc := range []struct {
		size       int
		wantStatus int
	}{
		{log.MaxPayload(), http.StatusOK},
		{log.MaxPayload() + 1, http.StatusRequestEntityTooLarge},
		{api.MaxWebhookBody, http.StatusRequestEntityTooLarge},
	} {
		body := invoiceEventOfSize(t, newEventID(), "cus_size", tc.size)
		if status, resp := post(t, ts.URL, body, sign(body, secret, time.Now())); status != tc.wantStatus {
			t.Errorf("%d-byte body: %d %v, want %d", tc.size, status, resp, tc.wantStatus)
		}
	}
	if all, err := log.ReadAll(t.Context(), eventlog.Start, 10); err != nil || len(all) != 1 || len(all[0].Payload) != log.MaxPayload() {
		t.Errorf("the log holds %d records, %v; want only the one that fits", len(all), err)
	}
}

// invoiceEventOfSize is invoiceEvent grown to exactly size bytes with a padding field.
func invoiceEventOfSize(t *testing.T, id, customer string, size int) []byte {
	t.Helper()
	base := invoiceEvent(id, customer, "2023-10-16")
	head := bytes.TrimSuffix(base, []byte("\n}"))
	pad := size - len(head) - len(",\n  \"padding\": \"\"\n}")
	if pad < 0 {
		t.Fatalf("an event of %d bytes is too small", size)
	}
	out := fmt.Appendf(nil, "%s,\n  \"padding\": \"%s\"\n}", head, bytes.Repeat([]byte("x"), pad))
	if len(out) != size {
		t.Fatalf("built %d bytes, want %d", len(out), size)
	}
	return out
}
