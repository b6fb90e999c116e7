package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestContract(t *testing.T) {
	eventlogtest.Run(t, eventlogtest.Capabilities{DuplicatePosition: true}, func(t *testing.T) eventlog.Log {
		pool, _ := pgtest.NewPool(t)
		// A small batch makes Subscribe's catch-up span several batches.
		return postgres.New(pool, testLogger(t), postgres.WithBatchSize(16))
	})
}

// TestOutage runs the contract's outage case on a server that refuses connections.
func TestOutage(t *testing.T) {
	t.Parallel()
	eventlogtest.Outage(t, func(t *testing.T) eventlog.Log {
		refused, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/ledger?sslmode=disable&connect_timeout=2")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(refused.Close)
		return postgres.New(refused, testLogger(t))
	})
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	refused, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/ledger?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(refused.Close)
	closed, _ := pgtest.NewPool(t)
	closed.Close()
	live, _ := pgtest.NewPool(t)
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()

	backends := []struct {
		name string
		pool *pgxpool.Pool
		ctx  context.Context
	}{
		{"connection refused", refused, t.Context()},
		{"closed pool", closed, t.Context()},
		{"deadline exceeded", live, expired},
	}
	ops := []struct {
		name string
		call func(context.Context, eventlog.Log) error
	}{
		{"Append", func(ctx context.Context, l eventlog.Log) error {
			_, err := l.Append(ctx, eventlogtest.NewEvent(eventlogtest.NewStream("down")))
			return err
		}},
		{"ReadStream", func(ctx context.Context, l eventlog.Log) error {
			_, err := l.ReadStream(ctx, "customer-cus_down", 0, 10)
			return err
		}},
		{"ReadAll", func(ctx context.Context, l eventlog.Log) error {
			_, err := l.ReadAll(ctx, eventlog.Start, 10)
			return err
		}},
		{"Head", func(ctx context.Context, l eventlog.Log) error {
			_, err := l.Head(ctx)
			return err
		}},
		{"CountAfter", func(ctx context.Context, l eventlog.Log) error {
			_, err := l.CountAfter(ctx, eventlog.Start)
			return err
		}},
	}
	for _, b := range backends {
		l := postgres.New(b.pool, testLogger(t))
		for _, op := range ops {
			t.Run(b.name+"/"+op.name, func(t *testing.T) {
				if err := op.call(b.ctx, l); !errors.Is(err, eventlog.ErrUnavailable) {
					t.Errorf("%s = %v, want an error wrapping eventlog.ErrUnavailable", op.name, err)
				}
			})
		}
	}

	t.Run("a bad request is not unavailability", func(t *testing.T) {
		_, err := postgres.New(live, nil).ReadStream(t.Context(), "customer-cus_x", 0, -1)
		if err == nil || errors.Is(err, eventlog.ErrUnavailable) {
			t.Errorf("ReadStream with a negative limit = %v, want an error that is not ErrUnavailable", err)
		}
	})
	t.Run("Subscribe on a closed pool gives up", func(t *testing.T) {
		err := postgres.New(closed, nil).Subscribe(t.Context(), eventlog.Start, acceptAll)
		if !errors.Is(err, eventlog.ErrUnavailable) {
			t.Errorf("Subscribe = %v, want an error wrapping eventlog.ErrUnavailable", err)
		}
	})
	t.Run("Subscribe keeps retrying an unreachable server", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		if err := postgres.New(refused, nil).Subscribe(ctx, eventlog.Start, acceptAll); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Subscribe = %v, want it to retry until its context ends", err)
		}
	})
}

// TestTerminatedConnection covers a server-side disconnect (57P01
// admin_shutdown, as in a restart or failover) on a pooled connection.
func TestTerminatedConnection(t *testing.T) {
	t.Parallel()
	admin, url := pgtest.NewPool(t)
	pool := newPool(t, url, "ledger-terminated", func(cfg *pgxpool.Config) {
		cfg.MaxConns = 1
		// Without the acquire-time ping, the dead connection is used, as it is
		// when the server goes away less than a second after its last use.
		cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	l := postgres.New(pool, testLogger(t))
	if _, err := l.Head(t.Context()); err != nil {
		t.Fatal(err)
	}
	terminate(t, admin, "ledger-terminated")

	e := eventlogtest.NewEvent(eventlogtest.NewStream("terminated"))
	if _, err := l.Append(t.Context(), e); !errors.Is(err, eventlog.ErrUnavailable) {
		t.Fatalf("Append on a terminated connection = %v, want an error wrapping eventlog.ErrUnavailable", err)
	}
	res, err := l.Append(t.Context(), e)
	if err != nil || res.Duplicate {
		t.Errorf("Append after the pool replaced the connection = %+v, %v; want a fresh append", res, err)
	}
}

// TestSubscribeLiveAndReconnect checks that notifications wake Subscribe and
// that it resumes on a new connection, without loss or repeat, when the server
// drops its connection.
func TestSubscribeLiveAndReconnect(t *testing.T) {
	t.Parallel()
	pool, url := pgtest.NewPool(t)
	writer := postgres.New(pool, testLogger(t))
	// A poll interval far beyond the test's waits: live records can only
	// arrive through notifications (or the catch-up read after reconnecting).
	reader := postgres.New(newPool(t, url, "ledger-subscriber", nil), testLogger(t), postgres.WithPollInterval(time.Hour))
	stream := eventlogtest.NewStream("reconnect")
	appendN := func(n int) {
		for range n {
			if _, err := writer.Append(t.Context(), eventlogtest.NewEvent(stream)); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN(3)
	f := eventlogtest.Follow(t, reader, eventlog.Start)
	f.WaitFor(t, 3) // caught up
	appendN(3)
	f.WaitFor(t, 6) // woken by notifications
	terminate(t, pool, "ledger-subscriber")
	appendN(3)
	f.WaitFor(t, 9) // reconnected
	got := f.Stop(t)
	all, err := writer.ReadAll(t.Context(), eventlog.Start, 20)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(eventlogtest.IDs(got), eventlogtest.IDs(all)) {
		t.Errorf("delivered %v, the log holds %v", eventlogtest.IDs(got), eventlogtest.IDs(all))
	}
}

// TestHorizonHidesLaterCommits shows the gap safety of DESIGN §2 at work:
// while one append's transaction is open, an append to another stream does
// not wait for it and commits first, with a later position; readers return
// neither until the first commits, then both, in order, nothing skipped.
// Without the horizon, readers would return the second and later meet the
// first behind it.
func TestHorizonHidesLaterCommits(t *testing.T) {
	t.Parallel()
	pool, url := pgtest.NewPool(t)
	l := postgres.New(pool, testLogger(t))
	// A short settle timeout: ReadAll, Head and CountAfter would wait for it
	// to pass while the first append is open.
	reader := postgres.New(pool, testLogger(t), postgres.WithSettleTimeout(20*time.Millisecond))
	f := eventlogtest.Follow(t, postgres.New(newPool(t, url, "ledger-horizon", nil), testLogger(t),
		postgres.WithPollInterval(time.Hour)), eventlog.Start)
	first := eventlogtest.NewEvent(eventlogtest.NewStream("gap-first"))
	second := eventlogtest.NewEvent(eventlogtest.NewStream("gap-second"))

	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // a no-op once committed
	firstPos := appendInTx(t, tx, first)

	secondRes, err := l.Append(t.Context(), second)
	if err != nil {
		t.Fatal(err)
	}
	if !firstPos.Less(secondRes.Position) {
		t.Fatalf("second append at %s, want a position after the open first's %s", secondRes.Position, firstPos)
	}
	if recs, err := reader.ReadAll(t.Context(), eventlog.Start, 10); err != nil || len(recs) != 0 {
		t.Errorf("ReadAll during the open append = %v, %v; want none", eventlogtest.IDs(recs), err)
	}
	if head, err := reader.Head(t.Context()); err != nil || head != eventlog.Start {
		t.Errorf("Head during the open append = %s, %v; want Start", head, err)
	}
	if n, err := reader.CountAfter(t.Context(), eventlog.Start); err != nil || n != 0 {
		t.Errorf("CountAfter during the open append = %d, %v; want 0", n, err)
	}
	// A stream's records are readable as soon as they commit.
	if recs, err := reader.ReadStream(t.Context(), second.Stream, 0, 10); err != nil || len(recs) != 1 {
		t.Errorf("ReadStream of the committed stream = %v, %v; want its record", eventlogtest.IDs(recs), err)
	}
	time.Sleep(50 * time.Millisecond) // the second's notification has reached the subscriber
	if recs := f.WaitFor(t, 0); len(recs) != 0 {
		t.Errorf("Subscribe delivered %v during the open append, want nothing", eventlogtest.IDs(recs))
	}

	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []string{first.ID, second.ID}
	recs, err := l.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(eventlogtest.IDs(recs), want) {
		t.Errorf("ReadAll = %v, want %v", eventlogtest.IDs(recs), want)
	}
	if head, err := l.Head(t.Context()); err != nil || head != secondRes.Position {
		t.Errorf("Head = %s, %v; want the second's %s", head, err, secondRes.Position)
	}
	f.WaitFor(t, 2)
	if got := eventlogtest.IDs(f.Stop(t)); !slices.Equal(got, want) {
		t.Errorf("Subscribe delivered %v, want %v", got, want)
	}
}

// TestSameStreamAppendWaits: appends to one stream are serialised, so the
// next version and hash are computed after the previous append committed,
// and the later version comes later in the global order.
func TestSameStreamAppendWaits(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	l := postgres.New(pool, testLogger(t))
	stream := eventlogtest.NewStream("same-stream")
	first, second := eventlogtest.NewEvent(stream), eventlogtest.NewEvent(stream)

	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // a no-op once committed
	firstPos := appendInTx(t, tx, first)

	type appended struct {
		res eventlog.AppendResult
		err error
	}
	done := make(chan appended, 1)
	go func() {
		res, err := l.Append(t.Context(), second)
		done <- appended{res, err}
	}()
	waitUntil(t, "the second append waits for the stream lock", func() bool {
		var waiting int
		err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&waiting)
		return err == nil && waiting == 1
	})
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := <-done
	if got.err != nil {
		t.Fatal(got.err)
	}
	if got.res.Duplicate || got.res.StreamVersion != 1 || !firstPos.Less(got.res.Position) {
		t.Errorf("second append = %+v, want version 1 after %s", got.res, firstPos)
	}
	recs, err := l.ReadStream(t.Context(), stream, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || !bytes.Equal(recs[1].PrevHash, recs[0].Hash) {
		t.Errorf("stream holds %v, want the two records chained", eventlogtest.IDs(recs))
	}
}

// TestHeldBackWithoutAppends: a transaction that appends nothing also holds
// the horizon back, and ends without a notification. ReadAll waits for it
// (read your writes), and Subscribe polls until it ends instead of waiting
// for a notification that never comes.
func TestHeldBackWithoutAppends(t *testing.T) {
	t.Parallel()
	pool, url := pgtest.NewPool(t)
	l := postgres.New(pool, testLogger(t))
	f := eventlogtest.Follow(t, postgres.New(newPool(t, url, "ledger-held-back", nil), testLogger(t),
		postgres.WithPollInterval(time.Hour)), eventlog.Start)

	other, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(context.Background()) //nolint:errcheck // a no-op once committed
	// Taking a transaction id, as any write does.
	if _, err := other.Exec(t.Context(), `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	e := eventlogtest.NewEvent(eventlogtest.NewStream("held-back"))
	if _, err := l.Append(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		committed <- other.Commit(context.Background())
	}()
	if recs, err := l.ReadAll(t.Context(), eventlog.Start, 10); err != nil || !slices.Equal(eventlogtest.IDs(recs), []string{e.ID}) {
		t.Errorf("ReadAll after the append = %v, %v; want %s", eventlogtest.IDs(recs), err, e.ID)
	}
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	f.WaitFor(t, 1)
	f.Stop(t)
}

// TestOtherDatabasesDoNotHoldBack: only transactions of the log's own
// database can append to it, so those of other databases (other
// applications, CREATE DATABASE) do not delay its readers.
func TestOtherDatabasesDoNotHoldBack(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	elsewhere, _ := pgtest.NewPool(t)
	l := postgres.New(pool, testLogger(t), postgres.WithSettleTimeout(0))
	other, err := elsewhere.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(context.Background()) //nolint:errcheck // read-only in effect
	if _, err := other.Exec(t.Context(), `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	e := eventlogtest.NewEvent(eventlogtest.NewStream("elsewhere"))
	if _, err := l.Append(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	if recs, err := l.ReadAll(t.Context(), eventlog.Start, 10); err != nil || !slices.Equal(eventlogtest.IDs(recs), []string{e.ID}) {
		t.Errorf("ReadAll with a transaction open in another database = %v, %v; want %s", eventlogtest.IDs(recs), err, e.ID)
	}
}

// appendInTx appends e inside tx, leaving tx open, and returns its position.
func appendInTx(t *testing.T, tx pgx.Tx, e eventlog.Event) eventlog.Position {
	t.Helper()
	var pos eventlog.Position
	err := tx.QueryRow(t.Context(), `SELECT tx, global_position FROM ledger_append($1, $2, $3, $4, $5, $6, $7, $8)`,
		e.ID, e.Stream, e.Type, e.APIVersion, e.Created, e.Account, e.Payload, e.Signature,
	).Scan(&pos.Commit, &pos.Prepare)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// TestAppendGuards checks the conditions gap safety and dedup rest on, in
// ledger_append and ledger_append_batch alike.
func TestAppendGuards(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	appends := map[string]func(pgx.Tx) error{
		"ledger_append": func(tx pgx.Tx) error {
			e := eventlogtest.NewEvent(eventlogtest.NewStream("guard"))
			_, err := tx.Exec(t.Context(), `SELECT * FROM ledger_append($1, $2, $3, $4, $5, $6, $7, $8)`,
				e.ID, e.Stream, e.Type, e.APIVersion, e.Created, e.Account, e.Payload, e.Signature)
			return err
		},
		"ledger_append_batch": func(tx pgx.Tx) error {
			e := eventlogtest.NewEvent(eventlogtest.NewStream("guard"))
			_, err := tx.Exec(t.Context(), `SELECT * FROM ledger_append_batch(ARRAY[$1], ARRAY[$2], ARRAY[$3], ARRAY[$4],
       ARRAY[$5::timestamptz], ARRAY[$6], ARRAY[$7::bytea], ARRAY[$8], ARRAY['webhook'])`,
				e.ID, e.Stream, e.Type, e.APIVersion, e.Created, e.Account, e.Payload, e.Signature)
			return err
		},
	}
	for fn, ledgerAppend := range appends {
		for _, tc := range []struct {
			name   string
			iso    pgx.TxIsoLevel
			before func(pgx.Tx) error // in the same transaction
		}{
			{"refuses repeatable read", pgx.RepeatableRead, nil},
			{"refuses serializable", pgx.Serializable, nil},
			{"refuses a transaction that wrote", pgx.ReadCommitted, func(tx pgx.Tx) error {
				_, err := tx.Exec(t.Context(), `CREATE TEMP TABLE scratch (x int)`)
				return err
			}},
			{"refuses a second append", pgx.ReadCommitted, ledgerAppend},
		} {
			t.Run(fn+" "+tc.name, func(t *testing.T) {
				tx, err := pool.BeginTx(t.Context(), pgx.TxOptions{IsoLevel: tc.iso})
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(context.Background()) //nolint:errcheck // the transaction failed
				if tc.before != nil {
					if err := tc.before(tx); err != nil {
						t.Fatal(err)
					}
				}
				err = ledgerAppend(tx)
				if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "25000" || !strings.HasPrefix(pgErr.Message, fn+" ") {
					t.Errorf("%s = %v, want invalid_transaction_state (25000) naming %s", fn, err, fn)
				}
			})
		}
	}
}

// TestReadAllFromForeignPosition: ReadAll and CountAfter follow
// eventlog.Position order from positions this backend never handed out.
func TestReadAllFromForeignPosition(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	l := postgres.New(pool, testLogger(t))
	var positions []eventlog.Position
	for range 3 {
		res, err := l.Append(t.Context(), eventlogtest.NewEvent(eventlogtest.NewStream("foreign")))
		if err != nil {
			t.Fatal(err)
		}
		positions = append(positions, res.Position)
	}
	mid := positions[1]
	for _, tc := range []struct {
		from eventlog.Position
		want int
	}{
		{eventlog.Position{Commit: mid.Commit, Prepare: 0}, 2},
		{eventlog.Position{Commit: mid.Commit, Prepare: mid.Prepare - 1}, 2},
		{mid, 1},
		{eventlog.Position{Commit: mid.Commit, Prepare: mid.Prepare + 1}, 1},
		{eventlog.Position{Commit: mid.Commit, Prepare: math.MaxUint64}, 1},
		{eventlog.Position{Commit: mid.Commit + 1, Prepare: 0}, 1},
		{eventlog.Position{Commit: math.MaxUint64, Prepare: math.MaxUint64}, 0},
	} {
		recs, err := l.ReadAll(t.Context(), tc.from, 10)
		if err != nil || len(recs) != tc.want {
			t.Errorf("ReadAll(%s) = %d records, %v; want %d", tc.from, len(recs), err, tc.want)
		}
		if n, err := l.CountAfter(t.Context(), tc.from); err != nil || n != int64(tc.want) {
			t.Errorf("CountAfter(%s) = %d, %v; want %d", tc.from, n, err, tc.want)
		}
	}
}

// TestReadAllFold: ReadAllFold's records are ReadAll's without what only an
// audit needs, their payloads apart from one another (the fold read cuts
// them from shared blocks: appending to one leaves the next as it was).
func TestReadAllFold(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	l := postgres.New(pool, testLogger(t))
	streams := []string{eventlogtest.NewStream("fold"), "acct_1/" + eventlogtest.NewStream("fold")}
	for i := range 40 {
		e := eventlogtest.NewEvent(streams[i%2])
		if i%2 == 1 {
			e.Account = "acct_1"
		}
		if i%3 == 0 {
			e.Type = "invoice.paid"
		}
		if _, err := l.Append(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	all, err := l.ReadAll(t.Context(), eventlog.Start, 100)
	if err != nil {
		t.Fatal(err)
	}
	fold, err := l.ReadAllFold(t.Context(), eventlog.Start, 100)
	if err != nil || len(fold) != len(all) || len(all) != 40 {
		t.Fatalf("ReadAllFold: %d records, %v; ReadAll %d", len(fold), err, len(all))
	}
	for i, r := range all {
		want := eventlog.Record{Event: r.Event, StreamVersion: r.StreamVersion, Position: r.Position}
		want.Signature, want.Source = "", ""
		if got := fold[i]; !reflect.DeepEqual(got, want) {
			t.Fatalf("record %d: ReadAllFold\n%+v\nReadAll without the audit's fields\n%+v", i, got, want)
		}
	}
	_ = append(fold[0].Payload, "overwritten"...)
	if !bytes.Equal(fold[1].Payload, all[1].Payload) {
		t.Fatalf("appending to a payload changed the next: %q", fold[1].Payload)
	}

	// SubscribeFold delivers what ReadAllFold reads.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var got []eventlog.Record
	err = l.SubscribeFold(ctx, eventlog.Start, func(_ context.Context, recs []eventlog.Record) error {
		if got = append(got, recs...); len(got) >= len(all) {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || len(got) != len(all) {
		t.Fatalf("SubscribeFold: %d records, %v; want %d, then context.Canceled", len(got), err, len(all))
	}
	for i := range got {
		if !reflect.DeepEqual(got[i], fold[i]) {
			t.Fatalf("record %d: SubscribeFold\n%+v\nReadAllFold\n%+v", i, got[i], fold[i])
		}
	}
}

// BenchmarkAppend measures concurrent appends of ~2 KiB events spread over 64
// streams, as the webhook handler makes them.
func BenchmarkAppend(b *testing.B) {
	pool := newPool(b, pgtest.NewDatabase(b), "ledger-bench", func(cfg *pgxpool.Config) { cfg.MaxConns = 16 })
	l := postgres.New(pool, nil)
	streams := make([]string, 64)
	for i := range streams {
		streams[i] = eventlogtest.NewStream("bench")
	}
	pad := bytes.Repeat([]byte("x"), 1800)
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := eventlogtest.NewEvent(streams[n.Add(1)%int64(len(streams))])
			e.Payload = fmt.Appendf(bytes.TrimSuffix(e.Payload, []byte("}\n")), ",\n  \"padding\": %q\n}\n", pad)
			if _, err := l.Append(context.Background(), e); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

func acceptAll(context.Context, []eventlog.Record) error { return nil }

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), nil))
}

// newPool opens a pool on url whose connections carry applicationName, so
// that terminate can find them.
func newPool(tb testing.TB, url, applicationName string, configure func(*pgxpool.Config)) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = applicationName
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// terminate ends every backend of the current database whose application
// name is applicationName, as a server shutdown or failover would, and waits
// until they are gone.
func terminate(t *testing.T, admin *pgxpool.Pool, applicationName string) {
	t.Helper()
	var terminated int
	err := admin.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))
		FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`, applicationName).Scan(&terminated)
	if err != nil || terminated == 0 {
		t.Fatalf("terminate %s: %d backends, %v", applicationName, terminated, err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// TestCompleteReads: with WithCompleteReads, a read that a writing
// transaction holds back fails with ErrUnavailable instead of answering
// short (which an auditor would take for the end of the log); once the
// transaction ends, the same read answers in full.
func TestCompleteReads(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	l := postgres.New(pool, testLogger(t))
	strict := postgres.New(pool, testLogger(t), postgres.WithCompleteReads(50*time.Millisecond))
	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // a no-op once committed
	appendInTx(t, tx, eventlogtest.NewEvent(eventlogtest.NewStream("held")))
	if _, err := l.Append(t.Context(), eventlogtest.NewEvent(eventlogtest.NewStream("behind"))); err != nil {
		t.Fatal(err)
	}
	if _, err := strict.ReadAll(t.Context(), eventlog.Start, 10); !errors.Is(err, eventlog.ErrUnavailable) {
		t.Fatalf("ReadAll held back: err = %v, want ErrUnavailable", err)
	}
	if _, err := strict.Head(t.Context()); !errors.Is(err, eventlog.ErrUnavailable) {
		t.Fatalf("Head held back: err = %v, want ErrUnavailable", err)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	recs, err := strict.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil || len(recs) != 2 {
		t.Fatalf("ReadAll after the commit = %d records, %v; want 2", len(recs), err)
	}
}
