package projections

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// BenchmarkLiveFold measures the live runner's fold of a log as ingest
// delivers it: bench/loadgen's corpus (lifecycles of 100 customers at a
// time, in created order) handed to the runner's handler in batches of
// LEDGER_BENCH_LIVE_BATCH records (default 90: the 75-110 a batch holds
// under bench/ingest.sh at concurrency 8), after a live version was made
// live empty. It reports the CPU per event of this process and of the
// database's backends: the projection's share of an ingested delivery,
// but for the log's read (and its horizon), which the handler is not given.
//
//	go test -run '^$' -bench LiveFold -benchtime 1x ./projections
func BenchmarkLiveFold(b *testing.B) {
	n := 24_000
	size := 90
	if s := os.Getenv("LEDGER_BENCH_LIVE_BATCH"); s != "" {
		var err error
		if size, err = strconv.Atoi(s); err != nil || size <= 0 {
			b.Fatalf("LEDGER_BENCH_LIVE_BATCH=%q: want a positive number", s)
		}
	}
	for range b.N {
		b.StopTimer()
		pool := newPool(b, pgtest.NewDatabase(b))
		log := postgres.New(pool, testLogger(b))
		r, err := NewRunner(pool, log, Billing(testPlans(b)), testLogger(b), nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		if err := r.buildVersion(ctx); err != nil {
			b.Fatal(err)
		}
		cp, ok, err := loadCheckpoint(ctx, pool, r.p.Name, "")
		if err != nil || !ok {
			b.Fatal("no live version", err)
		}
		rng := rand.New(rand.NewPCG(7, 7))
		var ds []domaintest.Delivery
		for len(ds) < n {
			ds = append(ds, domaintest.Lifecycles(rng, 100)...)
		}
		recs := records(b, ds[:n])
		apply := r.apply(&cp, newHeldStates(maxHeldStates))
		statements := watchStatements(b, pool)
		goBefore, pgBefore := processCPU(b), backendsCPU(b, pool)
		stopProfile := profileCPU(b)
		b.StartTimer()
		for i := 0; i < len(recs); i += size {
			if err := apply(ctx, recs[i:min(i+size, len(recs))]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		stopProfile()
		goCPU, pgCPU := processCPU(b)-goBefore, backendsCPU(b, pool)-pgBefore
		statements()
		b.ReportMetric(float64((goCPU+pgCPU).Microseconds())/float64(n), "cpu-µs/event")
		b.ReportMetric(float64(goCPU.Microseconds())/float64(n), "go-cpu-µs/event")
		b.ReportMetric(float64(pgCPU.Microseconds())/float64(n), "pg-cpu-µs/event")
	}
}
