package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// groupFixture is a Log with a single committer that is kept busy with one
// append waiting for a stream lock, so that the appends made meanwhile queue
// up and are stored together, as one batch, once release lets it go on.
type groupFixture struct {
	log     *postgres.Log
	pool    *pgxpool.Pool // of the log, application_name ledger-group
	admin   *pgxpool.Pool
	release func()
}

func newGroupFixture(t *testing.T) *groupFixture {
	t.Helper()
	admin, url := pgtest.NewPool(t)
	pool := newPool(t, url, "ledger-group", nil)
	f := &groupFixture{admin: admin, pool: pool, log: postgres.New(pool, testLogger(t), postgres.WithGroupCommit(1, 0))}
	t.Cleanup(f.log.Close)
	held := holdStream(t, admin)
	blocked := make(chan error, 1)
	go func() {
		_, err := f.log.Append(context.Background(), eventlogtest.NewEvent(held.stream))
		blocked <- err
	}()
	f.waitForLockWaiters(t, 1)
	f.release = func() {
		held.commit(t)
		if err := <-blocked; err != nil {
			t.Errorf("the blocking append: %v", err)
		}
	}
	return f
}

// heldStream is an open transaction holding the append lock of stream.
type heldStream struct {
	stream string
	tx     pgx.Tx
}

func holdStream(t *testing.T, pool *pgxpool.Pool) heldStream {
	t.Helper()
	return holdThisStream(t, pool, eventlogtest.NewStream("held"))
}

// holdThisStream is holdStream of a stream of the caller's.
func holdThisStream(t *testing.T, pool *pgxpool.Pool, stream string) heldStream {
	t.Helper()
	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	h := heldStream{stream: stream, tx: tx}
	appendInTx(t, tx, eventlogtest.NewEvent(h.stream))
	return h
}

func (h heldStream) commit(t *testing.T) {
	t.Helper()
	if err := h.tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// waitForLockWaiters waits until n of the log's connections wait for a stream lock. pg_locks and
// pg_stat_activity span the cluster: the tests of this package run in parallel, each in its own
// database with the same application name, so only this database's sessions count.
func (f *groupFixture) waitForLockWaiters(t *testing.T, n int) {
	t.Helper()
	f.waitForWaiters(t, "advisory", n)
}

// waitForWaiters waits until n of the log's connections wait for a lock of locktype (pg_locks):
// advisory for a stream lock, transactionid for another transaction's row.
func (f *groupFixture) waitForWaiters(t *testing.T, locktype string, n int) {
	t.Helper()
	waitUntil(t, "appends wait for a "+locktype+" lock", func() bool {
		var waiting int
		err := f.admin.QueryRow(t.Context(), `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE l.locktype = $1 AND NOT l.granted AND a.application_name = 'ledger-group' AND a.datname = current_database()`,
			locktype).Scan(&waiting)
		return err == nil && waiting == n
	})
}

type answer struct {
	res eventlog.AppendResult
	err error
}

// appendQueued appends events concurrently while the committer is busy and
// returns, once release has let it go on, each event's answer.
func (f *groupFixture) appendQueued(t *testing.T, events []eventlog.Event, whileQueued func()) []answer {
	t.Helper()
	answers := make([]answer, len(events))
	var wg sync.WaitGroup
	for i, e := range events {
		wg.Go(func() {
			res, err := f.log.Append(t.Context(), e)
			answers[i] = answer{res, err}
		})
	}
	// Appends queue behind the busy committer within microseconds; the
	// assertions on shared transaction ids catch one that did not.
	time.Sleep(200 * time.Millisecond)
	f.release()
	if whileQueued != nil {
		whileQueued()
	}
	wg.Wait()
	return answers
}

// TestGroupCommitMixedBatch: one batch that mixes a redelivery of a stored
// event, the same new event twice, several new events of one stream that
// already has records and new events of many streams stores exactly the new
// ones, in one transaction, with dense versions and intact hash chains, and
// answers each delivery as what it was.
func TestGroupCommitMixedBatch(t *testing.T) {
	t.Parallel()
	f := newGroupFixture(t)
	ctx := t.Context()
	busy := eventlogtest.NewStream("busy")
	stored := eventlogtest.NewEvent(busy)
	other := postgres.New(f.admin, nil)
	defer other.Close()
	if _, err := other.Append(ctx, stored); err != nil {
		t.Fatal(err)
	}
	twice := eventlogtest.NewEvent(eventlogtest.NewStream("twice"))
	events := []eventlog.Event{stored, twice, twice}
	for range 4 {
		events = append(events, eventlogtest.NewEvent(busy))
	}
	for range 5 {
		events = append(events, eventlogtest.NewEvent(eventlogtest.NewStream("many")))
	}
	events[8].Source = eventlog.SourceBackfill // provenance goes through the batch too

	answers := f.appendQueued(t, events, nil)

	var newTx uint64
	dups := map[string]int{}
	for i, a := range answers {
		if a.err != nil {
			t.Fatalf("append %d (%s): %v", i, events[i].ID, a.err)
		}
		if a.res.Duplicate {
			dups[events[i].ID]++
			continue
		}
		if newTx == 0 {
			newTx = a.res.Position.Commit
		}
		if a.res.Position.Commit != newTx {
			t.Errorf("append %d committed in transaction %d, want every new event in the batch's %d", i, a.res.Position.Commit, newTx)
		}
	}
	if dups[stored.ID] != 1 || dups[twice.ID] != 1 || len(dups) != 2 {
		t.Errorf("duplicates answered %v, want the stored event and the second copy of %s", dups, twice.ID)
	}
	if answers[1].res.Position != answers[2].res.Position || answers[1].res.StreamVersion != answers[2].res.StreamVersion {
		t.Errorf("the two copies of %s answered %+v and %+v, want the same stored record", twice.ID, answers[1].res, answers[2].res)
	}

	recs, err := f.log.ReadStream(ctx, busy, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	wantBusy := []string{stored.ID}
	for _, e := range events[3:7] {
		wantBusy = append(wantBusy, e.ID)
	}
	if got := eventlogtest.IDs(recs); !sameSet(got, wantBusy) {
		t.Errorf("stream %s holds %v, want %v", busy, got, wantBusy)
	}
	checkChain(t, recs)
	for _, e := range append([]eventlog.Event{twice}, events[7:]...) {
		recs, err := f.log.ReadStream(ctx, e.Stream, 0, 10)
		if err != nil || len(recs) != 1 || recs[0].ID != e.ID || recs[0].StreamVersion != 0 || !bytes.Equal(recs[0].Payload, e.Payload) ||
			recs[0].Source != e.Source.OrWebhook() {
			t.Errorf("stream %s holds %v (%v), want %s alone at version 0, from %s", e.Stream, eventlogtest.IDs(recs), err, e.ID, e.Source.OrWebhook())
		}
	}
	var total int
	if err := f.admin.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	// stored, the held stream's two (the open transaction's and the blocking append), and the 10 new ones.
	if total != 13 {
		t.Errorf("the log holds %d records, want 13", total)
	}
}

// TestGroupCommitConcurrentDuplicate: an id that another transaction stores,
// under another stream's lock, after the batch looked it up fails the batch's
// insert on the event_id index; the batch's events are then stored one at a
// time, so that the copy is answered as a duplicate of the stored record and
// the others are stored, with dense versions.
func TestGroupCommitConcurrentDuplicate(t *testing.T) {
	t.Parallel()
	f := newGroupFixture(t)
	ctx := t.Context()
	racing := eventlogtest.NewEvent(eventlogtest.NewStream("race"))
	tx, err := f.admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	stored := appendInTx(t, tx, racing)
	copied := racing
	copied.Stream = eventlogtest.NewStream("race") // the same id under another stream: no stream lock in common
	events := []eventlog.Event{copied, eventlogtest.NewEvent(copied.Stream), eventlogtest.NewEvent(eventlogtest.NewStream("race"))}

	answers := f.appendQueued(t, events, func() {
		f.waitForWaiters(t, "transactionid", 1) // the batch's insert, on racing's index entry
		// The waiter is the batch's statement, not a lone append of the copy:
		// what this test is about is the batch's failure and its replay.
		var query string
		if err := f.admin.QueryRow(ctx, `SELECT a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE l.locktype = 'transactionid' AND NOT l.granted AND a.application_name = 'ledger-group'
			  AND a.datname = current_database()`).Scan(&query); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(query, "ledger_append_batch(") {
			t.Errorf("the append waiting on the copy's index entry runs %q; want the batch's ledger_append_batch", query)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	})

	if a := answers[0]; a.err != nil || !a.res.Duplicate || a.res.Position != stored {
		t.Errorf("append of the copy = %+v, %v; want a duplicate of %s", a.res, a.err, stored)
	}
	for i, e := range events[1:] {
		a := answers[i+1]
		if a.err != nil || a.res.Duplicate {
			t.Errorf("append of %s = %+v, %v; want it stored", e.ID, a.res, a.err)
			continue
		}
		recs, err := f.log.ReadStream(ctx, e.Stream, 0, 10)
		if err != nil || len(recs) != 1 || recs[0].ID != e.ID {
			t.Errorf("stream %s holds %v, %v; want %s alone", e.Stream, eventlogtest.IDs(recs), err, e.ID)
		}
		checkChain(t, recs)
	}
}

// TestGroupCommitConnectionLost: when the connection of a batch is lost
// before it commits, every append in it fails with ErrUnavailable (the
// webhook's 503, so that Stripe retries) and none of them is stored.
func TestGroupCommitConnectionLost(t *testing.T) {
	t.Parallel()
	f := newGroupFixture(t)
	ctx := t.Context()
	// The batch waits for this stream's lock, so that it is in flight when its connection goes.
	held := holdStream(t, f.admin)
	events := []eventlog.Event{eventlogtest.NewEvent(held.stream)}
	for range 5 {
		events = append(events, eventlogtest.NewEvent(eventlogtest.NewStream("lost")))
	}

	answers := f.appendQueued(t, events, func() {
		f.waitForLockWaiters(t, 1)
		terminate(t, f.admin, "ledger-group")
	})

	ids := make([]string, len(events))
	for i, a := range answers {
		ids[i] = events[i].ID
		if !errors.Is(a.err, eventlog.ErrUnavailable) {
			t.Errorf("append %d = %+v, %v; want an error wrapping ErrUnavailable", i, a.res, a.err)
		}
	}
	held.commit(t)
	var stored int
	if err := f.admin.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_id = ANY($1)`, ids).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 0 {
		t.Errorf("%d events of the failed batch are stored, want none", stored)
	}
	// The deliveries Stripe retries are stored afresh (through another pool:
	// this one may still hand out a connection the server ended).
	retry := postgres.New(f.admin, nil)
	defer retry.Close()
	for _, e := range events {
		if res, err := retry.Append(ctx, e); err != nil || res.Duplicate {
			t.Errorf("retry of %s = %+v, %v; want a fresh append", e.ID, res, err)
		}
	}
}

// TestGroupCommitRefusedEvent: an event the database refuses (here a NUL in
// a text column) fails alone; the others of its batch are stored.
func TestGroupCommitRefusedEvent(t *testing.T) {
	t.Parallel()
	f := newGroupFixture(t)
	bad := eventlogtest.NewEvent(eventlogtest.NewStream("refused"))
	bad.Type = "invoice.\x00paid"
	events := []eventlog.Event{bad}
	for range 4 {
		events = append(events, eventlogtest.NewEvent(eventlogtest.NewStream("fine")))
	}

	answers := f.appendQueued(t, events, nil)

	if answers[0].err == nil || errors.Is(answers[0].err, eventlog.ErrUnavailable) {
		t.Errorf("append of the refused event = %+v, %v; want an error that is not ErrUnavailable", answers[0].res, answers[0].err)
	}
	for i, a := range answers[1:] {
		e := events[i+1]
		if a.err != nil || a.res.Duplicate {
			t.Errorf("append of %s = %+v, %v; want it stored", e.ID, a.res, a.err)
			continue
		}
		if recs, err := f.log.ReadStream(t.Context(), e.Stream, 0, 10); err != nil || len(recs) != 1 {
			t.Errorf("stream %s holds %v, %v; want %s", e.Stream, eventlogtest.IDs(recs), err, e.ID)
		}
	}
}

// checkChain checks that recs are versions 0,1,2… of one hash chain.
func checkChain(t *testing.T, recs []eventlog.Record) {
	t.Helper()
	prev := eventlog.GenesisHash
	for i, r := range recs {
		if r.StreamVersion != int64(i) || !bytes.Equal(r.PrevHash, prev) || !bytes.Equal(r.Hash, eventlog.ChainHash(prev, r.PayloadSHA256)) {
			t.Errorf("record %d (%s): version %d, chain broken or versions not dense", i, r.ID, r.StreamVersion)
		}
		prev = r.Hash
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestAppendBatchProbesTheIndex: ledger_append_batch finds stored ids and
// stream heads through the indexes even on a connection whose plans were
// cached while events was empty (force_generic_plan keeps them for the
// connection's life); revision 2's lock query then read the whole table for
// every batch, so a batch cost what the log's size did.
func TestAppendBatchProbesTheIndex(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := t.Context()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	stream := eventlogtest.NewStream("probe")
	var stored eventlog.Event
	for round := range 3 {
		events := []eventlog.Event{eventlogtest.NewEvent(stream), eventlogtest.NewEvent(stream), eventlogtest.NewEvent(eventlogtest.NewStream("probe"))}
		if round > 0 {
			events = append(events, stored) // a redelivery: the duplicate's path too
		}
		stored = events[0]
		var seqScans, dups int64
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE duplicate) FROM ledger_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
				batchArgs(events)...).Scan(&dups); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'events'`).Scan(&seqScans)
		})
		if err != nil {
			t.Fatal(err)
		}
		if seqScans != 0 || dups != int64(min(round, 1)) {
			t.Errorf("batch %d: %d sequential scans of events and %d duplicates, want none and %d", round, seqScans, dups, min(round, 1))
		}
	}
}

// batchArgs are ledger_append_batch's arguments for events.
func batchArgs(events []eventlog.Event) []any {
	cols := make([][]string, 7)
	var created []time.Time
	var payloads [][]byte
	for _, e := range events {
		for i, v := range []string{e.ID, e.Stream, e.Type, e.APIVersion, e.Account, e.Signature, string(e.Source.OrWebhook())} {
			cols[i] = append(cols[i], v)
		}
		created, payloads = append(created, e.Created), append(payloads, e.Payload)
	}
	return []any{cols[0], cols[1], cols[2], cols[3], created, cols[4], payloads, cols[5], cols[6]}
}

// TestAppendBatchLocksInKeyOrder: ledger_append_batch takes its streams'
// locks in ascending key order, whatever the order of its events, so that
// two batches cannot deadlock: with the higher key held elsewhere, a batch
// whose first event is of that stream waits for it holding the lower key.
func TestAppendBatchLocksInKeyOrder(t *testing.T) {
	t.Parallel()
	admin, _ := pgtest.NewPool(t)
	ctx := t.Context()
	key := func(stream string) int32 {
		var k int32
		if err := admin.QueryRow(ctx, "SELECT hashtext($1)", stream).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	// Two random streams, the held one's key the higher (a held key near
	// the bottom of int32 would leave no lower one to find).
	lower, higher := eventlogtest.NewStream("lower"), eventlogtest.NewStream("held")
	if key(lower) > key(higher) {
		lower, higher = higher, lower
	}
	held := holdThisStream(t, admin, higher)
	heldKey := key(higher)
	conn, err := admin.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, `SELECT * FROM ledger_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			batchArgs([]eventlog.Event{eventlogtest.NewEvent(held.stream), eventlogtest.NewEvent(lower)})...)
		done <- err
	}()
	// pg_locks shows an advisory lock's second int4 key as an oid.
	var waits, holdsLower bool
	waitUntil(t, "the batch waits for the held stream", func() bool {
		err := admin.QueryRow(ctx, `SELECT
			coalesce(bool_or(NOT granted AND objid::bigint = ($2::bigint + 4294967296) % 4294967296), false),
			coalesce(bool_or(granted AND objid::bigint = ($3::bigint + 4294967296) % 4294967296), false)
			FROM pg_locks WHERE locktype = 'advisory' AND classid = 1279612500 AND pid = $1`,
			pid, heldKey, key(lower)).Scan(&waits, &holdsLower)
		return err == nil && waits
	})
	if !holdsLower {
		t.Error("the batch waits for the held stream's lock without holding the lower key's: it locks in event order")
	}
	held.commit(t)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestBatchCarriesItsNotify: a batch whose transaction carries the NOTIFY
// is heard by a listener, named by its last position, without a NOTIFY
// statement of the log's; a lone append is announced by one of its own,
// after its commit.
func TestBatchCarriesItsNotify(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	_, url := pgtest.NewPool(t)
	tracer := &statementTracer{}
	pool := newPool(t, url, "ledger-notify", func(cfg *pgxpool.Config) { cfg.ConnConfig.Tracer = tracer })
	log := postgres.New(pool, testLogger(t))
	t.Cleanup(log.Close)
	listener := listen(t, url)
	heard := func(what string, pos eventlog.Position, statements int) {
		t.Helper()
		waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, err := listener.WaitForNotification(waitCtx)
		if err != nil {
			t.Fatalf("%s at %s: no notification: %v", what, pos, err)
		}
		if n.Payload != pos.String() {
			t.Errorf("%s at %s announced as %q", what, pos, n.Payload)
		}
		if got := tracer.count("pg_notify"); got != statements {
			t.Errorf("after %s: %d NOTIFY statements, want %d", what, got, statements)
		}
	}
	stream := eventlogtest.NewStream("notify")
	results, err := postgres.AppendBatch(ctx, log, []eventlog.Event{eventlogtest.NewEvent(stream), eventlogtest.NewEvent(stream)}, true)
	if err != nil {
		t.Fatal(err)
	}
	heard("the batch", results[1].Position, 0)
	res, err := log.Append(ctx, eventlogtest.NewEvent(stream))
	if err != nil {
		t.Fatal(err)
	}
	heard("the lone append", res.Position, 1)
}

// TestCommitBehindACarriedNotifyIsAnnounced: with several committers a
// transaction can commit after a batch with a later position carried its
// NOTIFY; its subscribers, woken before it committed, need another.
func TestCommitBehindACarriedNotifyIsAnnounced(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, url := pgtest.NewPool(t)
	log := postgres.New(pool, testLogger(t))
	t.Cleanup(log.Close)
	listener := listen(t, url)
	wait := func(what string) {
		t.Helper()
		waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := listener.WaitForNotification(waitCtx); err != nil {
			t.Fatalf("%s: no notification: %v", what, err)
		}
	}
	carried, announced := postgres.ClaimNotify(log)
	if !carried {
		t.Fatal("the first batch does not carry the NOTIFY")
	}
	stream := eventlogtest.NewStream("behind")
	results, err := postgres.AppendBatch(ctx, log, []eventlog.Event{eventlogtest.NewEvent(stream), eventlogtest.NewEvent(stream)}, true)
	if err != nil {
		t.Fatal(err)
	}
	postgres.Announce(log, results[1].Position, true, announced)
	wait("the carried batch")
	// Another committer's transaction, with an earlier id, commits now.
	earlier := eventlog.Position{Commit: results[0].Position.Commit - 1, Prepare: results[0].Position.Prepare - 1}
	postgres.Announce(log, earlier, false, 0)
	wait("the commit behind it")
}

// listen is a connection to url that listens to the log's NOTIFYs, closed
// when the test ends.
func listen(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	listener, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close(context.Background()) })
	if _, err := listener.Exec(t.Context(), "LISTEN ledger_events"); err != nil {
		t.Fatal(err)
	}
	return listener
}

// statementTracer counts the statements a pool runs outside pipelines, by
// their text.
type statementTracer struct {
	mu  sync.Mutex
	sql []string
}

func (s *statementTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sql = append(s.sql, data.SQL)
	return ctx
}

func (s *statementTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// count is how many statements contained substr.
func (s *statementTracer) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, q := range s.sql {
		if strings.Contains(q, substr) {
			n++
		}
	}
	return n
}
