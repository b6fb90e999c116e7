package esdb_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/logtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestSubscriptionDroppedMidStream drops the server side of the subscription
// while the adapter still holds undelivered events, during catch-up and live:
// it resubscribes from its checkpoint and delivers every record exactly once.
func TestSubscriptionDroppedMidStream(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL(), esdb.WithBatchSize(4))
	stream := eventlogtest.NewStream("drop")
	appendN(t, l, stream, 40)

	var (
		mu        sync.Mutex
		delivered []eventlog.Record
	)
	firstBatch, release := make(chan struct{}), make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- l.Subscribe(ctx, eventlog.Start, func(_ context.Context, batch []eventlog.Record) error {
			mu.Lock()
			first := len(delivered) == 0
			delivered = append(delivered, batch...)
			mu.Unlock()
			if first { // hold the first batch while the server drops the subscription
				close(firstBatch)
				<-release
			}
			return nil
		})
	}()
	<-firstBatch
	if n := srv.DropSubscriptions(); n != 1 {
		t.Fatalf("dropped %d subscriptions, want 1", n)
	}
	close(release)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(delivered) }
	waitUntil(t, "catch-up after the drop", func() bool { return count() == 40 && srv.Subscriptions() == 1 })

	appendN(t, l, stream, 5)
	waitUntil(t, "live delivery", func() bool { return count() == 45 })
	srv.DropSubscriptions() // dropped while live, with nothing in flight
	appendN(t, l, stream, 5)
	waitUntil(t, "live delivery after the second drop", func() bool { return count() == 50 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v, want context.Canceled", err)
	}
	all, err := l.ReadAll(t.Context(), eventlog.Start, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := eventlogtest.IDs(delivered), eventlogtest.IDs(all); !slices.Equal(got, want) {
		t.Errorf("delivered %d records %v,\nthe log holds %d: %v", len(got), got, len(want), want)
	}
}

// TestServerDown: with the node down every call fails with
// eventlog.ErrUnavailable (the webhook's 503); when it is back the same Log
// works again, and a subscription that lived through the outage resumes
// without loss or duplicates.
func TestServerDown(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	logs := &logtest.Buffer{}
	pool, _ := pgtest.NewPool(t)
	l, err := esdb.Open(t.Context(), srv.URL()+"&maxDiscoverAttempts=2&discoveryInterval=10", pool, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	t.Cleanup(l.Close)
	stream := eventlogtest.NewStream("down")
	appendN(t, l, stream, 3)
	f := eventlogtest.Follow(t, l, eventlog.Start)
	f.WaitFor(t, 3)

	srv.Stop()
	// Calls fail on the connection first; the failures make the client
	// rediscover the node, give up and close itself, and the Log replaces it.
	waitUntil(t, "the Log to replace a client that closed itself", func() bool {
		if _, err := l.Append(t.Context(), eventlogtest.NewEvent(stream)); !errors.Is(err, eventlog.ErrUnavailable) {
			t.Fatalf("Append with the server down: %v, want ErrUnavailable", err)
		}
		return strings.Contains(logs.String(), "replaced it")
	})
	if _, err := l.ReadAll(t.Context(), eventlog.Start, 10); !errors.Is(err, eventlog.ErrUnavailable) {
		t.Errorf("ReadAll with the server down: %v, want ErrUnavailable", err)
	}
	if _, err := l.ReadStream(t.Context(), stream, 0, 10); !errors.Is(err, eventlog.ErrUnavailable) {
		t.Errorf("ReadStream with the server down: %v, want ErrUnavailable", err)
	}

	srv.Start(t)
	waitUntil(t, "an append after the restart", func() bool {
		_, err = l.Append(t.Context(), eventlogtest.NewEvent(stream))
		return err == nil
	})
	appendN(t, l, stream, 2)
	recs, err := l.ReadStream(t.Context(), stream, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	// The failed appends claimed their ids as pending but stored nothing.
	if len(recs) != 6 {
		t.Errorf("stream holds %d records, want 6", len(recs))
	}
	got := f.WaitFor(t, 6)
	if !slices.Equal(eventlogtest.IDs(got), eventlogtest.IDs(recs)) {
		t.Errorf("subscription delivered %v, want %v", eventlogtest.IDs(got), eventlogtest.IDs(recs))
	}
	f.Stop(t)
}

// TestOutageUnderLoad takes the node down under concurrent appends and
// brings it back. EventStore-Client-Go v4.2.0 can leave a call blocked for
// good when its rediscovery fails under it; every Append must still return
// by its deadline (with ErrUnavailable while the node is down), the Log must
// recover, and the stream must hold each stored event once, chained. The
// phases follow what the writers observe, not the clock: the node goes down
// once appends succeed, comes back once appends have failed, and the writers
// stop once appends succeed again.
func TestOutageUnderLoad(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL()+"&maxDiscoverAttempts=3&discoveryInterval=50")
	stream := eventlogtest.NewStream("outage")
	// lateness bounds how long after its deadline an Append may return on a
	// starved machine; a call left blocked in the client would take
	// stuckCallTimeout, far more.
	const writers, timeout, lateness = 20, 2 * time.Second, 5 * time.Second
	var (
		mu               sync.Mutex
		stored           = map[string]bool{}
		storedN, failedN int
	)
	counts := func() (int, int) { mu.Lock(); defer mu.Unlock(); return storedN, failedN }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), timeout)
				e := eventlogtest.NewEvent(stream)
				start := time.Now()
				_, err := l.Append(ctx, e)
				cancel()
				if took := time.Since(start); took > timeout+lateness {
					t.Errorf("Append took %v with a %v deadline", took, timeout)
				}
				mu.Lock()
				switch {
				case err == nil:
					stored[e.ID] = true
					storedN++
				case errors.Is(err, eventlog.ErrUnavailable):
					failedN++
				default:
					t.Errorf("Append during the outage: %v, want ErrUnavailable", err)
				}
				mu.Unlock()
			}
		})
	}
	waitUntil(t, "appends before the outage", func() bool { n, _ := counts(); return n >= writers })
	srv.Stop()
	before, _ := counts()
	waitUntil(t, "appends failing during the outage", func() bool { _, n := counts(); return n >= 2*writers })
	srv.Start(t)
	waitUntil(t, "appends after the outage", func() bool { n, _ := counts(); return n >= before+2*writers })
	close(stop)
	wg.Wait()

	recs, err := l.ReadStream(t.Context(), stream, 0, 100_000)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, r := range recs {
		if seen[r.ID] {
			t.Errorf("event %s stored twice", r.ID)
		}
		seen[r.ID] = true
		if r.StreamVersion != int64(i) || (i > 0 && !bytes.Equal(r.PrevHash, recs[i-1].Hash)) {
			t.Errorf("record %d: version %d, chain broken: %v", i, r.StreamVersion, i > 0 && !bytes.Equal(r.PrevHash, recs[i-1].Hash))
		}
	}
	for id := range stored {
		if !seen[id] {
			t.Errorf("acknowledged event %s is not in the stream", id)
		}
	}
}

var errCrash = errors.New("simulated crash")

// TestAppendCrashWindow covers both sides of the EventStoreDB append: a
// writer that claimed the id and died before appending, and one that
// appended and died before the guard recorded it. The retry (a new process:
// a new Log on the same server and guard) neither loses nor duplicates the
// event, also when several retries race.
func TestAppendCrashWindow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		crash       func(t *testing.T, srv *esdbtest.Server, pool *pgxpool.Pool, e eventlog.Event)
		wantDup     bool // the retry finds the crashed writer's event
		wantVersion int64
	}{
		{
			name: "appended, not recorded",
			crash: func(t *testing.T, srv *esdbtest.Server, pool *pgxpool.Pool, e eventlog.Event) {
				l := openGuarded(t, srv, pool)
				l.SetAfterAppend(func() error { return errCrash })
				if _, err := l.Append(t.Context(), e); !errors.Is(err, errCrash) {
					t.Fatalf("crashing Append: %v, want the crash", err)
				}
			},
			wantDup: true,
		},
		{
			name: "claimed, not appended",
			crash: func(t *testing.T, _ *esdbtest.Server, pool *pgxpool.Pool, e eventlog.Event) {
				if _, err := pool.Exec(t.Context(), `INSERT INTO esdb_event_ids (event_id, stream, event_uuid) VALUES ($1, $2, $3)`,
					e.ID, e.Stream, esdb.EventID(e.ID)); err != nil {
					t.Fatal(err)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := esdbtest.New(t)
			pool, _ := pgtest.NewPool(t)
			e := eventlogtest.NewEvent(eventlogtest.NewStream("crash"))
			tc.crash(t, srv, pool, e)

			l := openGuarded(t, srv, pool)
			const retries = 6
			results := make([]eventlog.AppendResult, retries)
			errs := make([]error, retries)
			var wg sync.WaitGroup
			for i := range retries {
				wg.Go(func() { results[i], errs[i] = l.Append(t.Context(), e) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			fresh := 0
			for _, r := range results {
				if !r.Duplicate {
					fresh++
				}
			}
			if want := map[bool]int{true: 0, false: 1}[tc.wantDup]; fresh != want {
				t.Errorf("%d retries stored the event as new, want %d", fresh, want)
			}
			recs, err := l.ReadStream(t.Context(), e.Stream, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1 || recs[0].ID != e.ID || string(recs[0].Payload) != string(e.Payload) {
				t.Fatalf("stream holds %d records, want exactly the event once", len(recs))
			}
			for i, r := range results {
				if r.StreamVersion != 0 || r.Position != recs[0].Position {
					t.Errorf("retry %d = %+v, the stored record is at %s", i, r, recs[0].Position)
				}
			}
			var state string
			var attempts int
			if err := pool.QueryRow(t.Context(), `SELECT state, attempts FROM esdb_event_ids WHERE event_id = $1`, e.ID).Scan(&state, &attempts); err != nil {
				t.Fatal(err)
			}
			// The crash's claim and the one retry that resolved the pending row;
			// the other retries found it committed.
			if state != "committed" || attempts != 2 {
				t.Errorf("guard row is %s after %d attempts, want committed after 2", state, attempts)
			}
		})
	}
}

// TestCheckpointsSkipForeignEvents: events of other streams in $all are
// neither read nor counted, and the filtered subscription's checkpoints carry
// the caller past them, so a consumer resuming from its last checkpoint
// starts after the foreign events.
func TestCheckpointsSkipForeignEvents(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	stream := eventlogtest.NewStream("foreign")
	appendN(t, l, stream, 1)
	srv.AppendForeign(t, 9700) // three checkpoint intervals of 100 search windows of 32: three checkpoints
	appendN(t, l, stream, 1)

	all, err := l.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil || len(all) != 2 {
		t.Fatalf("ReadAll = %d records, %v; want the 2 ledger records", len(all), err)
	}
	if n, err := l.CountAfter(t.Context(), all[0].Position); err != nil || n != 1 {
		t.Errorf("CountAfter(first) = %d, %v; want 1", n, err)
	}
	srv.AppendForeign(t, 5)
	if head, err := l.Head(t.Context()); err != nil || head != all[1].Position {
		t.Errorf("Head = %s, %v; want the last ledger record %s", head, err, all[1].Position)
	}

	r := recordCheckpoints(t, l, eventlog.Start)
	waitUntil(t, "both records and three checkpoints", func() bool {
		delivered, checkpoints := r.counts()
		return delivered == 2 && checkpoints == 3
	})
	r.stop()
	checkpoints := r.checkpoints
	for i, cp := range checkpoints {
		if !all[0].Position.Less(cp) || !cp.Less(all[1].Position) || (i > 0 && !checkpoints[i-1].Less(cp)) {
			t.Errorf("checkpoint %d at %s: want increasing, between the ledger records %s and %s",
				i, cp, all[0].Position, all[1].Position)
		}
	}
	f := eventlogtest.Follow(t, l, checkpoints[len(checkpoints)-1])
	if got := eventlogtest.IDs(f.WaitFor(t, 1)); !slices.Equal(got, []string{all[1].ID}) {
		t.Errorf("resuming from the last checkpoint delivered %v, want %v", got, []string{all[1].ID})
	}
	f.Stop(t)
}

// openGuarded opens a Log on srv with pool as its guard database.
func openGuarded(t *testing.T, srv *esdbtest.Server, pool *pgxpool.Pool, opts ...esdb.Option) *esdb.Log {
	t.Helper()
	l, err := esdb.Open(t.Context(), srv.URL(), pool, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func appendN(t *testing.T, l eventlog.Log, stream string, n int) {
	t.Helper()
	for range n {
		if _, err := l.Append(t.Context(), eventlogtest.NewEvent(stream)); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
}

// waitTimeout bounds every wait of these tests. It is generous: CI runs
// every package at once with -race on two cores, and a wait only ends early
// when its condition holds.
const waitTimeout = time.Minute

// waitUntil polls cond until it holds, failing the test after waitTimeout.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
