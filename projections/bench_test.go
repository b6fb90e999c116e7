package projections

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	runtimemetrics "runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/gctune"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// BenchmarkRebuild measures a full blue/green rebuild of the billing
// projection over LEDGER_BENCH_EVENTS stored events (default 100,000) of
// domaintest's lifecycles, and reports events/s and the peak Go heap. For
// the figure:
//
//	LEDGER_BENCH_EVENTS=1000000 go test -run '^$' -bench Rebuild -benchtime 1x -timeout 30m ./projections
func BenchmarkRebuild(b *testing.B) {
	n := benchEvents(b)
	pool := newPool(b, pgtest.NewDatabase(b))
	storeEvents(b, pool, n)
	log := postgres.New(pool, testLogger(b))
	p := Billing(testPlans(b))
	ctx := context.Background()

	defer gctune.Headroom(BuildGCHeadroom)()
	statements := watchStatements(b, pool)
	peak := watchHeap(b)
	goBefore, pgBefore, gcBefore := processCPU(b), backendsCPU(b, pool), gcCPU()
	stopProfile := profileCPU(b)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := Rebuild(ctx, pool, log, p, Options{Logger: testLogger(b)}); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	stopProfile()
	statements()
	events := float64(n * b.N)
	b.ReportMetric(events/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MB")
	// CPU spent per event by this process and by the database's backends:
	// on a shared machine, 2 cores / this is the throughput an idle one
	// gives; the backends' share apart, to read a profile of this process.
	goCPU, pgCPU := processCPU(b)-goBefore, backendsCPU(b, pool)-pgBefore
	b.ReportMetric(float64((goCPU+pgCPU).Microseconds())/events, "cpu-µs/event")
	b.ReportMetric(float64(pgCPU.Microseconds())/events, "pg-cpu-µs/event")
	b.ReportMetric(float64((gcCPU()-gcBefore).Microseconds())/events, "gc-cpu-µs/event")
}

// gcCPU is the CPU time the garbage collector has used so far, as the
// runtime estimates it.
func gcCPU() time.Duration {
	s := []runtimemetrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	runtimemetrics.Read(s)
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}

// BenchmarkCatchUp measures a Runner's first start on a log of
// LEDGER_BENCH_EVENTS stored events (default 100,000): it makes an empty
// version live and follows the log from position 0 until its checkpoint
// reaches the head. Reports events/s, the CPU per event of this process
// and of the database's backends (those still connected at the end: the
// runner's), and the peak Go heap of the catch-up.
func BenchmarkCatchUp(b *testing.B) {
	n := benchEvents(b)
	for range b.N {
		b.StopTimer()
		pool := newPool(b, pgtest.NewDatabase(b))
		storeEvents(b, pool, n)
		log := postgres.New(pool, testLogger(b))
		r, err := NewRunner(pool, log, Billing(testPlans(b)), testLogger(b), nil)
		if err != nil {
			b.Fatal(err)
		}
		head, err := log.Head(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		peak := watchHeap(b)
		statements := watchStatements(b, pool)
		goBefore, pgBefore := processCPU(b), backendsCPU(b, pool)
		stopProfile := profileCPU(b)
		b.StartTimer()
		start := time.Now()
		go func() { done <- r.Run(ctx) }()
		for {
			if cp, ok, err := loadCheckpoint(ctx, pool, "billing", ""); err == nil && ok && cp.Position == head {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		stopProfile()
		// Before cancel: the runner's backends are still there to be read.
		goCPU, pgCPU := processCPU(b)-goBefore, backendsCPU(b, pool)-pgBefore
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		statements()
		b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(goCPU.Microseconds())/float64(n), "go-cpu-µs/event")
		b.ReportMetric(float64(pgCPU.Microseconds())/float64(n), "pg-cpu-µs/event")
		b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MB")
	}
}

// benchEvents is the benchmarks' log size: LEDGER_BENCH_EVENTS, default 100,000.
func benchEvents(b *testing.B) int {
	s := os.Getenv("LEDGER_BENCH_EVENTS")
	if s == "" {
		return 100_000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("LEDGER_BENCH_EVENTS=%q: want a positive number", s)
	}
	return n
}

// processCPU is the CPU time this process has used so far.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var self syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		b.Fatal(err)
	}
	return time.Duration(self.Utime.Nano() + self.Stime.Nano())
}

// backendsCPU is the CPU time used so far by the server processes of pool's
// database that are still connected (Linux: /proc/<pid>/stat of each).
func backendsCPU(b *testing.B, pool *pgxpool.Pool) time.Duration {
	b.Helper()
	var total time.Duration
	rows, err := pool.Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // not on this machine, or gone
		}
		// utime and stime are fields 14 and 15, counted after the ")" that ends the command name.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		utime, _ := strconv.ParseInt(fields[11], 10, 64)
		stime, _ := strconv.ParseInt(fields[12], 10, 64)
		total += time.Duration(utime+stime) * time.Second / clockTicks
	}
	return total
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every Linux platform Go runs on.
const clockTicks = 100

// storeEvents writes n lifecycle events straight into the events table with
// COPY, hash chains included, as ledger_append would have.
func storeEvents(b *testing.B, pool *pgxpool.Pool, n int) {
	b.Helper()
	rng := rand.New(rand.NewPCG(6, 6))
	var ds []domaintest.Delivery
	for len(ds) < n {
		ds = append(ds, domaintest.Lifecycles(rng, 1000)...)
	}
	ds = ds[:n]
	type stream struct {
		version int64
		hash    []byte
	}
	streams := map[string]*stream{}
	var payloadBytes int
	rows := make([][]any, len(ds))
	for i, d := range ds {
		e := event(b, d)
		s := streams[e.Stream]
		if s == nil {
			s = &stream{version: -1, hash: eventlog.GenesisHash}
			streams[e.Stream] = s
		}
		sum := sha256.Sum256(e.Payload)
		hash := eventlog.ChainHash(s.hash, sum[:])
		rows[i] = []any{int64(i + 1), e.ID, e.Stream, s.version + 1, e.Type, e.APIVersion, e.Created, e.Account,
			e.Payload, e.Signature, sum[:], s.hash, hash}
		s.version, s.hash = s.version+1, hash
		payloadBytes += len(e.Payload)
	}
	ctx := context.Background()
	_, err := pool.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"global_position", "event_id", "stream", "stream_version",
		"type", "api_version", "created", "account", "payload", "signature", "payload_sha256", "prev_hash", "hash"},
		pgx.CopyFromRows(rows))
	if err == nil {
		_, err = pool.Exec(ctx, fmt.Sprintf(`SELECT setval('events_global_position_seq', %d); ANALYZE events`, n))
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("stored %d events of %d customers, %.0f bytes of payload on average", n, len(streams), float64(payloadBytes)/float64(n))
}

// profileCPU writes a CPU profile of what follows, up to the call of stop,
// to the file LEDGER_BENCH_CPUPROFILE names, if set: unlike -cpuprofile's,
// it leaves out the benchmark's setup (storeEvents).
func profileCPU(b *testing.B) (stop func()) {
	path := os.Getenv("LEDGER_BENCH_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// watchStatements, when LEDGER_BENCH_STATEMENTS is set, prints at the call
// of report (to standard error: a benchmark's log is cut at a few lines) the
// statements of pool's database that took most of the server's
// time since it was called, from pg_stat_statements (the extension's view,
// created in this throwaway database; nothing is reset).
func watchStatements(b *testing.B, pool *pgxpool.Pool) (report func()) {
	if os.Getenv("LEDGER_BENCH_STATEMENTS") == "" {
		return func() {}
	}
	ctx := context.Background()
	const stats = `SELECT queryid, calls, total_exec_time, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 110)
  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`
	type stat struct {
		calls int64
		ms    float64
		rows  int64
		query string
	}
	read := func() map[int64]stat {
		rows, err := pool.Query(ctx, stats)
		if err != nil {
			b.Fatal(err)
		}
		out := map[int64]stat{}
		var id int64
		var s stat
		_, err = pgx.ForEachRow(rows, []any{&id, &s.calls, &s.ms, &s.rows, &s.query}, func() error {
			out[id] = s
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		return out
	}
	if _, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		b.Fatal(err)
	}
	before := read()
	return func() {
		var diff []stat
		for id, s := range read() {
			s.calls, s.ms, s.rows = s.calls-before[id].calls, s.ms-before[id].ms, s.rows-before[id].rows
			if s.calls > 0 {
				diff = append(diff, s)
			}
		}
		slices.SortFunc(diff, func(x, y stat) int { return cmp.Compare(y.ms, x.ms) })
		for _, s := range diff[:min(len(diff), 15)] {
			fmt.Fprintf(os.Stderr, "%9.0f ms %7d calls %9d rows  %s\n", s.ms, s.calls, s.rows, s.query)
		}
	}
}

// watchHeap samples the Go heap until the benchmark ends; peak returns the
// largest HeapInuse seen.
func watchHeap(b *testing.B) (peak func() uint64) {
	var (
		mu      sync.Mutex
		highest uint64
		done    = make(chan struct{})
		wg      sync.WaitGroup
	)
	runtime.GC()
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			mu.Lock()
			highest = max(highest, m.HeapInuse)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	b.Cleanup(func() {
		close(done)
		wg.Wait()
	})
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return highest
	}
}
