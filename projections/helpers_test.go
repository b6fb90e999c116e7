package projections

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// waitTimeout bounds every wait for a runner.
const waitTimeout = 30 * time.Second

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func testPlans(t testing.TB) domain.Plans {
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		t.Fatal(err)
	}
	return plans
}

// newLog opens the PostgreSQL event log on a fresh database; small batches
// make a runner's catch-up span many transactions.
func newLog(t testing.TB) (*pgxpool.Pool, *postgres.Log) {
	pool := newPool(t, pgtest.NewDatabase(t))
	return pool, postgres.New(pool, testLogger(t), postgres.WithBatchSize(25), postgres.WithPollInterval(200*time.Millisecond))
}

// newPool opens a pool on url with room for a runner during a build (two
// lock connections, a transaction, a read of the log, a subscription) next
// to the test's own queries.
func newPool(t testing.TB, url string) *pgxpool.Pool { return newPoolSized(t, url, 16) }

// newPoolSized opens a pool of maxConns connections on url.
func newPoolSized(t testing.TB, url string, maxConns int32) *pgxpool.Pool {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// fastPool opens a fresh database whose commits do not wait for the WAL
// flush: for tests that commit thousands of transactions and do not test
// durability.
func fastPool(t testing.TB) *pgxpool.Pool {
	pool := newPool(t, pgtest.NewDatabase(t))
	_, err := pool.Exec(context.Background(),
		`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$`)
	if err != nil {
		t.Fatal(err)
	}
	pool.Reset()
	return pool
}

// lifecycles generates the deliveries of n customers from seed.
func lifecycles(seed uint64, n int) []domaintest.Delivery {
	return domaintest.Lifecycles(rand.New(rand.NewPCG(seed, seed)), n)
}

func event(t testing.TB, d domaintest.Delivery) eventlog.Event {
	env, err := domain.ParseEnvelope(d.Payload)
	if err != nil {
		t.Fatalf("delivery %s: %v", d.EventID, err)
	}
	return eventlog.Event{ID: d.EventID, Stream: env.Stream(), Type: d.Type, APIVersion: env.APIVersion,
		Created: d.Created, Account: env.Account, Payload: d.Payload, Signature: "t=0,v1=test"}
}

func appendAll(t testing.TB, log eventlog.Log, ds []domaintest.Delivery) {
	t.Helper()
	for _, d := range ds {
		if _, err := log.Append(context.Background(), event(t, d)); err != nil {
			t.Fatal(err)
		}
	}
}

// records turns ds into the records a log would hand a projection.
func records(t testing.TB, ds []domaintest.Delivery) []eventlog.Record {
	events := map[string]eventlog.Event{}
	recs := make([]eventlog.Record, len(ds))
	for i, d := range ds {
		e, ok := events[d.EventID]
		if !ok {
			e = event(t, d)
			events[d.EventID] = e
		}
		pos := uint64(i + 1)
		recs[i] = eventlog.Record{Event: e, Position: eventlog.Position{Commit: pos, Prepare: pos}}
	}
	return recs
}

// startRunner runs r until the returned stop is called (or the test ends);
// stop returns Run's error.
func startRunner(t testing.TB, r *Runner) (stop func() error) {
	r.lockRetry, r.retry.Min = 50*time.Millisecond, 50*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(waitTimeout):
				t.Fatalf("Run did not return within %v of its context being cancelled", waitTimeout)
			}
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func newRunner(t testing.TB, pool *pgxpool.Pool, log eventlog.Log, p Projection) *Runner {
	r, err := NewRunner(pool, log, p, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// waitCaughtUp waits until p's live version is p.Version and has applied the
// whole log.
func waitCaughtUp(t testing.TB, pool *pgxpool.Pool, log eventlog.Log, p Projection) checkpoint {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		head, err := log.Head(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cp, ok, err := loadCheckpoint(context.Background(), pool, p.Name, "")
		if err != nil {
			t.Fatal(err)
		}
		if ok && cp.Version == p.Version && cp.Position == head {
			return cp
		}
		if time.Now().After(deadline) {
			t.Fatalf("projection %s v%d not caught up with %s in %v: checkpoint %+v", p.Name, p.Version, head, waitTimeout, cp)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dump renders every table of schema, row by row in key order.
func dump(t testing.TB, q pgxQuerier, schema string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, name := range viewedTables() {
		var rows []string
		err := q.QueryRow(context.Background(), fmt.Sprintf(
			`SELECT coalesce(array_agg(to_jsonb(t)::text ORDER BY to_jsonb(t)::text), '{}') FROM %s.%s t`,
			ident(schema), name)).Scan(&rows)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = rows
	}
	return out
}

// diffDumps reports the first difference between two dumps, "" when equal.
func diffDumps(want, got map[string][]string) string {
	for _, name := range viewedTables() {
		w, g := want[name], got[name]
		for i := range max(len(w), len(g)) {
			if i >= len(w) || i >= len(g) || w[i] != g[i] {
				at := func(rows []string) string {
					if i < len(rows) {
						return rows[i]
					}
					return "(none)"
				}
				return fmt.Sprintf("%s row %d (of %d want, %d got):\n want %s\n  got %s", name, i, len(w), len(g), at(w), at(g))
			}
		}
	}
	return ""
}

// scratch creates an empty schema of p, dropped when the test ends.
func scratch(t testing.TB, pool *pgxpool.Pool, p Projection) string {
	t.Helper()
	b := &builder{pool: pool, p: p, logger: testLogger(t)}
	schema, err := b.createSchema(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.dropSchema(context.Background(), schema); err != nil {
			t.Error(err)
		}
	})
	return schema
}

// recordStreams are the streams of records that were never appended to a
// log, as a log would hold them: the first record of each event id, in
// order, versions 0, 1, 2…; a fold reads a late fact's history from them.
type recordStreams map[string][]eventlog.Record

func streamsOf(batches ...[]eventlog.Record) recordStreams {
	s, seen := recordStreams{}, map[string]bool{}
	for _, recs := range batches {
		for _, r := range recs {
			if !seen[r.ID] {
				seen[r.ID] = true
				r.StreamVersion = int64(len(s[r.Stream]))
				s[r.Stream] = append(s[r.Stream], r)
			}
		}
	}
	return s
}

func (s recordStreams) ReadStream(_ context.Context, stream string, from int64, limit int) ([]eventlog.Record, error) {
	recs := s[stream][min(from, int64(len(s[stream]))):]
	return slices.Clone(recs[:min(limit, len(recs))]), nil
}

// foldAll folds recs into schema in one transaction per batch of the given sizes.
func foldAll(t testing.TB, pool *pgxpool.Pool, p Projection, schema string, batches ...[]eventlog.Record) {
	t.Helper()
	if p.log == nil {
		p = p.reading(streamsOf(batches...))
	}
	for _, recs := range batches {
		err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
			return fold(context.Background(), tx, p, schema, p.decode(recs))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// chunks splits recs into consecutive batches of random sizes up to max.
func chunks(rng *rand.Rand, recs []eventlog.Record, maxSize int) [][]eventlog.Record {
	var out [][]eventlog.Record
	for len(recs) > 0 {
		n := min(1+rng.IntN(maxSize), len(recs))
		out = append(out, recs[:n])
		recs = recs[n:]
	}
	return slices.Clip(out)
}

// tableList lists the read model tables of schema, comma-separated.
func tableList(schema string) string {
	var names []string
	for _, name := range viewedTables() {
		names = append(names, ident(schema)+"."+name)
	}
	return strings.Join(names, ", ")
}
