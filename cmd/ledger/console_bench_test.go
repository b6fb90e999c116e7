package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// BenchmarkConsoleCustomerPage renders the console's page of a customer
// with 1,000 events (a subscription's snapshots and invoices) through the
// served ledger, and reports the p50 and p99 of the server's answer, body
// read (target: p99 < 50 ms).
func BenchmarkConsoleCustomerPage(b *testing.B) {
	dbURL := pgtest.NewDatabase(b)
	base, _ := serveService(b, env("DATABASE_URL", dbURL, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken, "LEDGER_SEAL_INTERVAL", "0"))

	const customer, events, t0 = "cus_bench", 1000, 1_750_000_000
	for i := range events {
		object := map[string]any{"id": "sub_bench", "object": "subscription", "customer": customer, "status": "active",
			"current_period_start": t0 + i*60, "current_period_end": t0 + i*60 + 2_592_000, "cancel_at_period_end": false,
			"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_bench", "quantity": i%5 + 1,
				"price": map[string]any{"id": "price_pro", "lookup_key": "pro", "product": "prod_pro"}}}}}
		typ := "customer.subscription.updated"
		if i%4 == 3 {
			typ, object = "invoice.paid", map[string]any{"id": fmt.Sprintf("in_%d", i), "object": "invoice", "customer": customer,
				"subscription": "sub_bench", "status": "paid", "amount_due": 1000, "amount_paid": 1000, "currency": "usd",
				"period_start": t0 + i*60, "period_end": t0 + i*60 + 60}
		}
		payload, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("evt_bench_%04d", i), "object": "event", "api_version": "2023-10-16",
			"created": t0 + i*60, "type": typ, "data": map[string]any{"object": object, "previous_attributes": map[string]any{"quantity": i % 5}}})
		if status, body, err := sendWebhook(base, payload); err != nil || status != http.StatusOK {
			b.Fatalf("webhook: %d %s %v", status, body, err)
		}
	}
	waitCaughtUp(b, base)
	br := newBrowser(b, base)
	if resp := br.login(e2eToken); resp.StatusCode != http.StatusSeeOther {
		b.Fatalf("login: %d", resp.StatusCode)
	}
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		resp, page := br.do(http.MethodGet, "/console/customers/"+customer, nil)
		took = append(took, time.Since(start))
		if resp.StatusCode != http.StatusOK || len(page) < 10_000 {
			b.Fatalf("customer page: %d, %d bytes", resp.StatusCode, len(page))
		}
	}
	slices.Sort(took)
	at := func(q float64) float64 { return float64(took[int(q*float64(len(took)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}
