package esdb_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestAbandonedAppendLandsLate: an append that its caller gave up on (here
// its context ended; as well its client retired, or its guard connection
// dropped) lands after the retry of the same event has looked for it and
// not found it. KurrentDB writes a second copy of an event id appended
// after a later revision, so the retry must append after the revision the
// abandoned attempt expected: the server then recognises the retry, and the
// stream holds the event once.
func TestAbandonedAppendLandsLate(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	pool, _ := pgtest.NewPool(t)
	l := openGuarded(t, srv, pool)
	stream := eventlogtest.NewStream("late")
	appendN(t, l, stream, 3)
	e := eventlogtest.NewEvent(stream)

	hold := srv.HoldAppend(l.StreamPrefix() + stream)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	_, err := l.Append(ctx, e)
	cancel()
	if err == nil {
		t.Fatal("the held append succeeded")
	}
	<-hold.Arrived()
	// The abandoned append lands right after the retry's first look at the stream.
	srv.AfterNextRead(l.StreamPrefix()+stream, hold.Release)
	res, err := l.Append(t.Context(), e)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	recs, err := l.ReadStream(t.Context(), stream, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	copies := 0
	for _, r := range recs {
		if r.ID == e.ID {
			copies++
			if r.StreamVersion != res.StreamVersion || r.Position != res.Position {
				t.Errorf("retry reported version %d at %s, the event is stored at %d, %s", res.StreamVersion, res.Position, r.StreamVersion, r.Position)
			}
		}
	}
	if copies != 1 || len(recs) != 4 {
		t.Errorf("the stream holds %d records, %d of them the event; want 4 with one copy", len(recs), copies)
	}
	// Once resolved, every later delivery is a duplicate.
	if again, err := l.Append(t.Context(), e); err != nil || !again.Duplicate {
		t.Errorf("re-delivery = %+v, %v; want a duplicate", again, err)
	}
}

// TestRecoveryReadsTheTailOnly: resolving a pending claim reads the stream
// where the earlier attempt could have written, not the whole stream.
func TestRecoveryReadsTheTailOnly(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	pool, _ := pgtest.NewPool(t)
	l := openGuarded(t, srv, pool, esdb.WithBatchSize(50))
	stream := eventlogtest.NewStream("long")
	const n = 300
	appendN(t, l, stream, n)

	// A writer that claimed the id and died before appending.
	e := eventlogtest.NewEvent(stream)
	if _, err := pool.Exec(t.Context(), `INSERT INTO esdb_event_ids (event_id, stream, event_uuid) VALUES ($1, $2, $3)`,
		e.ID, e.Stream, esdb.EventID(e.ID)); err != nil {
		t.Fatal(err)
	}
	before := srv.EventsSent(l.StreamPrefix() + stream)
	if res, err := l.Append(t.Context(), e); err != nil || res.Duplicate || res.StreamVersion != n {
		t.Fatalf("Append after the crashed claim = %+v, %v; want a new record at %d", res, err, n)
	}
	if read := srv.EventsSent(l.StreamPrefix()+stream) - before; read > 3 {
		t.Errorf("the recovering append read %d events of the %d-event stream, want at most 3", read, n)
	}
}

// TestAbortedIsUnavailable: a node answers Aborted when a write timed out
// before it was replicated (or a follower's forward to the leader timed
// out). The webhook must answer 503 so that Stripe retries, and the retry
// stores the event once.
func TestAbortedIsUnavailable(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	e := eventlogtest.NewEvent(eventlogtest.NewStream("aborted"))
	srv.FailAppends(codes.Aborted)
	if _, err := l.Append(t.Context(), e); !errors.Is(err, eventlog.ErrUnavailable) {
		t.Fatalf("Append answered Aborted: %v, want ErrUnavailable", err)
	}
	if res, err := l.Append(t.Context(), e); err != nil || res.Duplicate {
		t.Fatalf("retry = %+v, %v; want the event stored", res, err)
	}
	if recs, err := l.ReadStream(t.Context(), e.Stream, 0, 10); err != nil || len(recs) != 1 {
		t.Errorf("stream = %d records, %v; want 1", len(recs), err)
	}
}

// TestRequiresLeader: every call the Log makes carries requires-leader, so
// a follower refuses it (the client then reconnects to the leader) instead
// of answering from a copy that may lag: a stale tail would make appends
// fail their expected revision, a stale read would miss acknowledged events.
func TestRequiresLeader(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	stream := eventlogtest.NewStream("leader")
	appendN(t, l, stream, 2)
	if _, err := l.ReadStream(t.Context(), stream, 0, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadAll(t.Context(), eventlog.Start, 10); err != nil {
		t.Fatal(err)
	}
	f := eventlogtest.Follow(t, l, eventlog.Start)
	f.WaitFor(t, 2)
	f.Stop(t)
	if n := srv.LeaderlessCalls(); n != 0 {
		t.Errorf("%d calls reached the node without requires-leader", n)
	}
}
