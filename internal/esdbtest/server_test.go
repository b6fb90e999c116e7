package esdbtest_test

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
)

// These tests hold the double to the behaviour the real client sees from a
// node, through the real client.

func TestExpectedRevision(t *testing.T) {
	t.Parallel()
	client := connect(t, esdbtest.New(t))
	for _, step := range []struct {
		stream   string
		expected esdb.ExpectedRevision
		wantErr  bool
		wantRev  uint64
	}{
		{"s", esdb.StreamExists{}, true, 0},
		{"s", esdb.NoStream{}, false, 0},
		{"s", esdb.NoStream{}, true, 0},
		{"s", esdb.Revision(1), true, 0},
		{"s", esdb.Revision(0), false, 1},
		{"s", esdb.Revision(0), true, 0},
		{"s", esdb.StreamExists{}, false, 2},
		{"s", esdb.Any{}, false, 3},
		{"t", esdb.Any{}, false, 0},
	} {
		wr, err := client.AppendToStream(t.Context(), step.stream, esdb.AppendToStreamOptions{ExpectedRevision: step.expected}, event(uuid.New()))
		var esErr *esdb.Error
		switch {
		case step.wantErr && !(errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeWrongExpectedVersion):
			t.Errorf("append to %s expecting %#v: %v, want wrong expected version", step.stream, step.expected, err)
		case !step.wantErr && err != nil:
			t.Errorf("append to %s expecting %#v: %v", step.stream, step.expected, err)
		case !step.wantErr && wr.NextExpectedVersion != step.wantRev:
			t.Errorf("append to %s expecting %#v: revision %d, want %d", step.stream, step.expected, wr.NextExpectedVersion, step.wantRev)
		}
	}
}

func TestIdempotentAppend(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	client := connect(t, srv)
	id := uuid.New()
	first, err := client.AppendToStream(t.Context(), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, event(id))
	if err != nil {
		t.Fatal(err)
	}
	for _, expected := range []esdb.ExpectedRevision{esdb.NoStream{}, esdb.Any{}} {
		again, err := client.AppendToStream(t.Context(), "s", esdb.AppendToStreamOptions{ExpectedRevision: expected}, event(id))
		if err != nil || again.CommitPosition != first.CommitPosition || again.NextExpectedVersion != 0 {
			t.Errorf("re-append expecting %#v = %+v, %v; want the first write %+v", expected, again, err, first)
		}
	}
	if n := srv.StreamLength("s"); n != 1 {
		t.Errorf("stream holds %d events after idempotent re-appends, want 1", n)
	}
}

func TestReads(t *testing.T) {
	t.Parallel()
	client := connect(t, esdbtest.New(t))
	var writes []*esdb.WriteResult
	for _, stream := range []string{"a-1", "b-1", "a-1", "a-2"} {
		wr, err := client.AppendToStream(t.Context(), stream, esdb.AppendToStreamOptions{}, event(uuid.New()))
		if err != nil {
			t.Fatal(err)
		}
		writes = append(writes, wr)
	}
	at := func(i int) esdb.Position {
		return esdb.Position{Commit: writes[i].CommitPosition, Prepare: writes[i].PreparePosition}
	}

	all := readAll(t, client, esdb.ReadAllOptions{From: at(1)}, 10)
	if len(all) != 3 || all[0].Position != at(1) {
		t.Errorf("$all forwards from the 2nd event: %d events from %v, want 3 from it", len(all), first(all))
	}
	back := readAll(t, client, esdb.ReadAllOptions{Direction: esdb.Backwards, From: at(2)}, 10)
	if len(back) != 2 || back[0].Position != at(1) {
		t.Errorf("$all backwards from the 3rd event: %d events from %v, want the 2 before it", len(back), first(back))
	}
	last := readStream(t, client, "a-1", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
	if len(last) != 1 || last[0].EventNumber != 1 || last[0].Position != at(2) {
		t.Errorf("last event of a-1 = %+v", first(last))
	}
	if ev := first(last); ev != nil && (ev.CreatedDate.Before(time.Now().Add(-time.Minute)) || ev.EventType != "Tested" || ev.ContentType != "application/octet-stream") {
		t.Errorf("system metadata: created %v, type %q, content type %q", ev.CreatedDate, ev.EventType, ev.ContentType)
	}
	rs, err := client.ReadStream(t.Context(), "missing", esdb.ReadStreamOptions{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var esErr *esdb.Error
	if _, err := rs.Recv(); !errors.As(err, &esErr) || esErr.Code() != esdb.ErrorCodeResourceNotFound {
		t.Errorf("reading a missing stream: %v, want resource not found", err)
	}
}

func TestFilteredSubscription(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	client := connect(t, srv)
	var writes []*esdb.WriteResult
	for i := range 10 {
		stream := "other-1"
		if i%5 == 0 {
			stream = "a-1"
		}
		wr, err := client.AppendToStream(t.Context(), stream, esdb.AppendToStreamOptions{}, event(uuid.New()))
		if err != nil {
			t.Fatal(err)
		}
		writes = append(writes, wr)
	}
	sub, err := client.SubscribeToAll(t.Context(), esdb.SubscribeToAllOptions{
		From:            esdb.Position{Commit: writes[0].CommitPosition, Prepare: writes[0].PreparePosition},
		Filter:          &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"a-"}},
		MaxSearchWindow: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var got []string
	for len(got) < 6 {
		ev := sub.Recv()
		switch {
		case ev.EventAppeared != nil:
			got = append(got, "event@"+posString(ev.EventAppeared.OriginalEvent().Position))
		case ev.CheckPointReached != nil:
			got = append(got, "checkpoint@"+posString(*ev.CheckPointReached))
		case ev.CaughtUp != nil:
			got = append(got, "caught-up")
		case ev.SubscriptionDropped != nil:
			t.Fatalf("dropped: %v", ev.SubscriptionDropped.Error)
		}
	}
	pos := func(i int) string {
		return posString(esdb.Position{Commit: writes[i].CommitPosition, Prepare: writes[i].PreparePosition})
	}
	// After the start position (exclusive): 9 scanned events, a checkpoint every 2, the a- event at index 5.
	want := []string{"checkpoint@" + pos(2), "checkpoint@" + pos(4), "event@" + pos(5), "checkpoint@" + pos(6), "checkpoint@" + pos(8), "caught-up"}
	if !slices.Equal(got, want) {
		t.Errorf("subscription delivered %v,\nwant %v", got, want)
	}
	if n := srv.DropSubscriptions(); n != 1 {
		t.Errorf("DropSubscriptions ended %d, want 1", n)
	}
}

func connect(t *testing.T, srv *esdbtest.Server) *esdb.Client {
	t.Helper()
	cfg, err := esdb.ParseConnectionString(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = esdb.NoopLogging()
	client, err := esdb.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func event(id uuid.UUID) esdb.EventData {
	return esdb.EventData{EventID: id, EventType: "Tested", ContentType: esdb.ContentTypeBinary, Data: []byte("x")}
}

func readAll(t *testing.T, client *esdb.Client, opts esdb.ReadAllOptions, n uint64) []*esdb.RecordedEvent {
	t.Helper()
	rs, err := client.ReadAll(t.Context(), opts, n)
	return drain(t, rs, err)
}

func readStream(t *testing.T, client *esdb.Client, stream string, opts esdb.ReadStreamOptions, n uint64) []*esdb.RecordedEvent {
	t.Helper()
	rs, err := client.ReadStream(t.Context(), stream, opts, n)
	return drain(t, rs, err)
}

func drain(t *testing.T, rs *esdb.ReadStream, err error) []*esdb.RecordedEvent {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []*esdb.RecordedEvent
	for {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev.OriginalEvent())
	}
}

func posString(p esdb.Position) string { return fmt.Sprintf("%d/%d", p.Commit, p.Prepare) }

func first(events []*esdb.RecordedEvent) *esdb.RecordedEvent {
	if len(events) == 0 {
		return nil
	}
	return events[0]
}
