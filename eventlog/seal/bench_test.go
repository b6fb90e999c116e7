package seal_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/eventlog/seal"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// BenchmarkSeal100kStreams seals a log of 100,000 streams (three records
// each) while appends go on, and reports how long the first seal (every
// stream's head) and a seal after 1,000 more appends take, and the append
// latency during the first seal against appends alone. Run it once:
//
//	go test -run '^$' -bench Seal100k -benchtime 1x ./eventlog/seal
func BenchmarkSeal100kStreams(b *testing.B) {
	const streams, perStream = 100_000, 3
	ctx := context.Background()
	pool, _ := pgtest.NewPool(b)
	// Seeded in SQL (a valid chain per stream) rather than appended one by
	// one: 300,000 appends would take minutes on a shared machine.
	_, err := pool.Exec(ctx, fmt.Sprintf(`
WITH RECURSIVE chain(stream, v, payload, prev, hash) AS (
    SELECT 'customer-cus_bench' || s, 0, convert_to('{"id":"evt_bench_' || s || '_0","object":"event"}', 'UTF8'),
           '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea,
           sha256('\x0000000000000000000000000000000000000000000000000000000000000000'::bytea ||
                  sha256(convert_to('{"id":"evt_bench_' || s || '_0","object":"event"}', 'UTF8')))
      FROM generate_series(1, %d) s
    UNION ALL
    SELECT stream, v + 1, convert_to('{"id":"evt_bench_' || substr(stream, 19) || '_' || (v + 1) || '","object":"event"}', 'UTF8'),
           hash, sha256(hash || sha256(convert_to('{"id":"evt_bench_' || substr(stream, 19) || '_' || (v + 1) || '","object":"event"}', 'UTF8')))
      FROM chain WHERE v + 1 < %d
)
INSERT INTO events (global_position, event_id, stream, stream_version, type, api_version, created, payload, signature,
                    payload_sha256, prev_hash, hash)
SELECT nextval('events_global_position_seq'), 'evt_bench_' || substr(stream, 19) || '_' || v, stream, v, 'invoice.paid',
       '2023-10-16', now(), payload, '', sha256(payload), prev, hash
  FROM chain ORDER BY v, stream;
ANALYZE events`, streams, perStream))
	if err != nil {
		b.Fatal(err)
	}
	l := postgres.New(pool, nil)
	defer l.Close()
	sealer := seal.NewSealer(pool, l)

	appendFor := func(stop <-chan struct{}) []time.Duration {
		var lat []time.Duration
		for i := 0; ; i++ {
			select {
			case <-stop:
				return lat
			default:
			}
			start := time.Now()
			if _, err := l.Append(ctx, eventlogtest.NewEvent(fmt.Sprintf("customer-cus_bench%d", 1+i*7919%streams))); err != nil {
				b.Error(err)
				return lat
			}
			lat = append(lat, time.Since(start))
		}
	}
	report := func(name string, lat []time.Duration) {
		if len(lat) == 0 {
			return
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, name+"_append_p99_ms")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, name+"_append_max_ms")
		b.ReportMetric(float64(len(lat)), name+"_appends")
	}
	for b.Loop() {
		// Appends alone, for reference.
		stop := make(chan struct{})
		var alone []time.Duration
		var wg sync.WaitGroup
		wg.Go(func() { alone = appendFor(stop) })
		time.Sleep(3 * time.Second)
		close(stop)
		wg.Wait()
		report("alone", alone)

		stop = make(chan struct{})
		var during []time.Duration
		wg.Go(func() { during = appendFor(stop) })
		start := time.Now()
		first, ok, err := sealer.Seal(ctx, true)
		took := time.Since(start)
		close(stop)
		wg.Wait()
		if err != nil || !ok || len(first.Heads) < streams {
			b.Fatalf("first seal: %d heads, ok=%v, %v", len(first.Heads), ok, err)
		}
		b.ReportMetric(took.Seconds(), "first_seal_s")
		b.ReportMetric(float64(len(first.Heads)), "first_seal_heads")
		report("during_seal", during)

		for i := range 1000 {
			if _, err := l.Append(ctx, eventlogtest.NewEvent(fmt.Sprintf("customer-cus_bench%d", 1+i*104729%streams))); err != nil {
				b.Fatal(err)
			}
		}
		start = time.Now()
		next, ok, err := sealer.Seal(ctx, true)
		if err != nil || !ok {
			b.Fatalf("second seal: ok=%v, %v", ok, err)
		}
		b.ReportMetric(float64(time.Since(start).Microseconds())/1000, "next_seal_ms")
		b.ReportMetric(float64(len(next.Heads)), "next_seal_heads")
	}
}
