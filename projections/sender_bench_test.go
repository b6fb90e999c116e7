package projections

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// BenchmarkNotificationsDerivedAndDelivered appends b.N customers'
// lifecycles, times the live runner folding them (deriving notifications
// as it goes), then the sender pushing every notification to a local
// receiver that verifies its signature.
func BenchmarkNotificationsDerivedAndDelivered(b *testing.B) {
	pool := newPool(b, pgtest.NewDatabase(b))
	log := postgres.New(pool, testLogger(b)) // default batches: newLog's small ones would bound the runner
	p := Billing(testPlans(b))
	appendAll(b, log, lifecycles(9, max(b.N, 50)))
	rr := &recordingReceiver{}
	srv := httptest.NewServer(rr)
	defer srv.Close()
	b.ResetTimer()
	start := time.Now()
	startRunner(b, newRunner(b, pool, log, p))
	waitCaughtUp(b, pool, log, p)
	derived := time.Since(start)
	var total int
	if err := pool.QueryRow(b.Context(), `SELECT count(*) FROM notifications`).Scan(&total); err != nil {
		b.Fatal(err)
	}
	s, err := NewSender(pool, SenderConfig{URLs: []string{srv.URL}, Secret: testNotifySecret})
	if err != nil {
		b.Fatal(err)
	}
	start = time.Now()
	stop := runSender(s)
	defer stop()
	for len(rr.received()) < total {
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("%d of %d delivered in 5 minutes", len(rr.received()), total)
		}
		time.Sleep(time.Millisecond)
	}
	delivered := time.Since(start)
	b.ReportMetric(float64(total), "notifications")
	b.ReportMetric(float64(total)/derived.Seconds(), "derived/s")
	b.ReportMetric(float64(total)/delivered.Seconds(), "delivered/s")
}
