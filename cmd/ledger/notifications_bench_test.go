package main

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// BenchmarkNotificationDelay posts b.N invoice.paid webhooks (one per
// customer) at 500/s to a served ledger pushing to a local receiver, and
// reports the delay from each webhook's 200 to the receiver getting its
// notification.
func BenchmarkNotificationDelay(b *testing.B) {
	var mu sync.Mutex
	arrived := map[string]time.Time{}
	receiver := newNotifyReceiver(func(n notify.Notification) {
		mu.Lock()
		arrived[n.EventIDs[0]] = time.Now()
		mu.Unlock()
	})
	defer receiver.Close()
	base, _ := serveService(b, env("DATABASE_URL", pgtest.NewDatabase(b), "STRIPE_WEBHOOK_SECRET", e2eSecret,
		"LEDGER_API_TOKEN", e2eToken, "LEDGER_NOTIFY_URL", receiver.URL, "LEDGER_NOTIFY_SECRET", "whsec_notify"))
	time.Sleep(4 * time.Second) // the sender takes its lock
	stored := make(map[string]time.Time, b.N)
	var storedMu sync.Mutex
	var wg sync.WaitGroup
	tick := time.NewTicker(2 * time.Millisecond) // 500/s
	defer tick.Stop()
	b.ResetTimer()
	for i := range b.N {
		<-tick.C
		id := fmt.Sprintf("evt_delay_%d_%d", time.Now().UnixNano(), i)
		payload := fmt.Appendf(nil, `{"id":%q,"object":"event","api_version":"2023-10-16","created":%d,"type":"invoice.paid",
"data":{"object":{"id":"in_%d","object":"invoice","customer":"cus_delay_%d","status":"paid","amount_due":100,"amount_paid":100,"currency":"usd"}}}`,
			id, time.Now().Unix(), i, i)
		wg.Go(func() {
			status, body, err := sendWebhook(base, payload)
			if err != nil || status != http.StatusOK {
				b.Errorf("webhook: %d %s %v", status, body, err)
				return
			}
			storedMu.Lock()
			stored[id] = time.Now()
			storedMu.Unlock()
		})
	}
	wg.Wait()
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(arrived)
		mu.Unlock()
		if n >= b.N || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	var delays []time.Duration
	mu.Lock()
	for id, at := range stored {
		if got, ok := arrived[id]; ok {
			delays = append(delays, max(got.Sub(at), 0))
		}
	}
	mu.Unlock()
	if len(delays) < b.N {
		b.Fatalf("%d of %d notifications arrived", len(delays), b.N)
	}
	slices.Sort(delays)
	b.ReportMetric(float64(delays[len(delays)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(delays[len(delays)*99/100].Microseconds())/1000, "p99_ms")
}
