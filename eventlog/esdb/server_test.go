package esdb_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestStreamDeleted: a ledger stream tombstoned in EventStoreDB is refused,
// with ErrStreamDeleted, for appends and reads; the tombstone's record in
// $all is skipped, so reads of $all and subscriptions go on with every
// other stream.
func TestStreamDeleted(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	deleted, other := eventlogtest.NewStream("deleted"), eventlogtest.NewStream("kept")
	appendN(t, l, deleted, 2)
	srv.Tombstone(l.StreamPrefix() + deleted)
	appendN(t, l, other, 1)

	if _, err := l.Append(t.Context(), eventlogtest.NewEvent(deleted)); !errors.Is(err, esdb.ErrStreamDeleted) {
		t.Errorf("Append to the deleted stream: %v, want ErrStreamDeleted", err)
	}
	if _, err := l.ReadStream(t.Context(), deleted, 0, 10); !errors.Is(err, esdb.ErrStreamDeleted) {
		t.Errorf("ReadStream of the deleted stream: %v, want ErrStreamDeleted", err)
	}
	all, err := l.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil || len(all) != 3 {
		t.Fatalf("ReadAll = %d records, %v; want the 3 stored before and after the deletion", len(all), err)
	}
	f := eventlogtest.Follow(t, l, eventlog.Start)
	f.WaitFor(t, 3)
	appendN(t, l, other, 1)
	if got := f.WaitFor(t, 4); got[3].Stream != other {
		t.Errorf("subscription delivered %s last, want a record of %s", got[3].Stream, other)
	}
	f.Stop(t)
}

// TestForeignStreamsSkipped: another application's events in streams that
// start with the ledger's prefix, and in ledger-* streams (the prefix this
// backend used to default to), are skipped by ReadAll and subscriptions,
// never fatal.
func TestForeignStreamsSkipped(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	stream := eventlogtest.NewStream("mine")
	appendN(t, l, stream, 1)
	srv.AppendForeignTo(t, l.StreamPrefix()+"orders-7", 3)
	srv.AppendForeignTo(t, "ledger-orders-7", 3)
	appendN(t, l, stream, 1)

	all, err := l.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil || len(all) != 2 || all[0].Stream != stream || all[1].Stream != stream {
		t.Fatalf("ReadAll = %d records, %v; want the 2 ledger records", len(all), err)
	}
	f := eventlogtest.Follow(t, l, eventlog.Start)
	f.WaitFor(t, 2)
	appendN(t, l, stream, 1)
	if got := f.WaitFor(t, 3); !slices.Equal(eventlogtest.IDs(got[:2]), eventlogtest.IDs(all)) {
		t.Errorf("subscription delivered %v, want %v first", eventlogtest.IDs(got), eventlogtest.IDs(all))
	}
	f.Stop(t)
}

// TestStreamPrefixPerLedger: two ledgers on one database, each with its own
// guard database and the default configuration, get prefixes of their own
// and never see each other's events; a configured prefix that differs from
// the one a guard recorded is refused.
func TestStreamPrefixPerLedger(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	a, b := openLog(t, srv.URL()), openLog(t, srv.URL())
	if a.StreamPrefix() == b.StreamPrefix() || strings.HasPrefix(a.StreamPrefix(), b.StreamPrefix()) ||
		strings.HasPrefix(b.StreamPrefix(), a.StreamPrefix()) {
		t.Fatalf("prefixes %q and %q collide", a.StreamPrefix(), b.StreamPrefix())
	}
	stream := eventlogtest.NewStream("shared")
	appendN(t, a, stream, 2)
	appendN(t, b, stream, 1)
	for _, tc := range []struct {
		l    *esdb.Log
		want int
	}{{a, 2}, {b, 1}} {
		all, err := tc.l.ReadAll(t.Context(), eventlog.Start, 10)
		if err != nil || len(all) != tc.want {
			t.Errorf("ReadAll under %q = %d records, %v; want %d", tc.l.StreamPrefix(), len(all), err, tc.want)
		}
	}

	pool, _ := pgtest.NewPool(t)
	first, err := esdb.Open(t.Context(), srv.URL(), pool, nil, esdb.WithStreamPrefix("acme-ledger-"))
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	if l, err := esdb.Open(t.Context(), srv.URL(), pool, nil, esdb.WithStreamPrefix("other-")); err == nil || !strings.Contains(err.Error(), "acme-ledger-") {
		if l != nil {
			l.Close()
		}
		t.Errorf("Open with another prefix than the guard's: %v, want a refusal naming the recorded one", err)
	}
}

// TestPayloadAtTheLimit: a payload of MaxPayload bytes is stored (the
// double refuses appends over 1 MiB as the server does), and an event over
// the server's limit is refused with eventlog.ErrTooLarge, storing nothing.
func TestPayloadAtTheLimit(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	stream := eventlogtest.NewStream("size")
	fit := eventlogtest.NewEvent(stream)
	fit.Payload = padded(fit.Payload, l.MaxPayload())
	fit.Signature += ",v1=" + strings.Repeat("a", 2000) // a long header, rotation with many secrets
	if _, err := l.Append(t.Context(), fit); err != nil {
		t.Fatalf("Append of a %d-byte payload: %v", len(fit.Payload), err)
	}
	recs, err := l.ReadStream(t.Context(), stream, 0, 10)
	if err != nil || len(recs) != 1 || !bytes.Equal(recs[0].Payload, fit.Payload) {
		t.Fatalf("ReadStream = %d records, %v; want the payload back byte for byte", len(recs), err)
	}
	over := eventlogtest.NewEvent(stream)
	over.Payload = padded(over.Payload, esdb.MaxAppendSize)
	if _, err := l.Append(t.Context(), over); !errors.Is(err, eventlog.ErrTooLarge) {
		t.Errorf("Append of a %d-byte payload: %v, want ErrTooLarge", len(over.Payload), err)
	}
	if n := srv.StreamLength(l.StreamPrefix() + stream); n != 1 {
		t.Errorf("stream holds %d events, want 1", n)
	}
}

// padded returns payload, a JSON object, grown to exactly n bytes with a
// padding field.
func padded(payload []byte, n int) []byte {
	head := bytes.TrimRight(payload, "}\n")
	pad := n - len(head) - len(`,"padding":""}`)
	return slices.Concat(head, []byte(`,"padding":"`), bytes.Repeat([]byte("x"), pad), []byte(`"}`))
}
