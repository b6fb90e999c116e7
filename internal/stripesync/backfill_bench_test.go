package stripesync_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi/stripefake"
	"github.com/stripe-ledger/stripe-ledger/internal/stripesync"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const key = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"

// BenchmarkBackfill backfills 10,000 events (1,000 customers, ~1 KB each)
// from the in-process fake into an empty PostgreSQL log, reporting events/s.
// Stripe's own rate limit (about 100 read requests/s, of 100 events each) is
// the ceiling in production, not this figure.
func BenchmarkBackfill(b *testing.B) {
	const events = 10_000
	api := stripefake.New(b, key)
	now := time.Now().Unix()
	for i := range events {
		api.AddEvent(fmt.Appendf(nil, `{"id":"evt_bench%06d","object":"event","api_version":"2023-10-16","created":%d,`+
			`"type":"invoice.paid","data":{"object":{"id":"in_bench%06d","object":"invoice","customer":"cus_bench%04d",`+
			`"status":"paid","amount_due":1999,"amount_paid":1999,"currency":"usd","period_start":%d,"period_end":%d,`+
			`"lines":{"object":"list","data":[{"type":"subscription","subscription":"sub_bench%04d","period":{"start":%d,"end":%d}}]},`+
			`"description":"%0600d"}}}`, i, now-int64(events-i), i, i%1000, now-86400, now, i%1000, now, now+2592000, i))
	}
	client, err := stripeapi.New(stripeapi.Config{Key: key, Base: api.URL})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		cfg, err := pgxpool.ParseConfig(pgtest.NewDatabase(b))
		if err != nil {
			b.Fatal(err)
		}
		cfg.MaxConns = 16 // as the ledger command opens it
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		l := postgres.New(pool, nil)
		s := &stripesync.Syncer{API: client, Log: l, DB: pool}
		b.StartTimer()
		start := time.Now()
		sum, err := s.Backfill(context.Background(), stripesync.BackfillOptions{Since: 24 * time.Hour})
		elapsed := time.Since(start)
		b.StopTimer()
		if err != nil || sum.Appended != events {
			b.Fatalf("backfill: %+v, %v", sum, err)
		}
		b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
		l.Close()
		pool.Close()
		b.StartTimer()
	}
}
