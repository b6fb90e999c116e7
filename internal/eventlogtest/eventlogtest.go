// Package eventlogtest is the contract test suite of eventlog.Log, written once
// and run by every backend (eventlog/postgres, eventlog/esdb):
//
//	func TestContract(t *testing.T) {
//		eventlogtest.Run(t, eventlogtest.Capabilities{…}, func(t *testing.T) eventlog.Log { return newEmptyLog(t) })
//	}
//
// It also exports the fixtures (NewStream, NewEvent, Follow) that backends'
// own tests use.
package eventlogtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Capabilities declares what a backend does beyond the contract's minimum,
// so that the suite checks it instead of skipping what a backend leaves out.
type Capabilities struct {
	// DuplicatePosition: Append of a duplicate reports the stream version
	// and position of the stored copy (else it reports Start).
	DuplicatePosition bool
}

// Run runs the contract against the logs newLog returns, a backend with caps.
// Every call to newLog must return an empty log that no other test writes to;
// Run closes it when the subtest ends. Subtests run in parallel.
func Run(t *testing.T, caps Capabilities, newLog func(t *testing.T) eventlog.Log) {
	tests := []struct {
		name string
		run  func(t *testing.T, l eventlog.Log)
	}{
		{"AppendThenReadStream", testAppendThenReadStream},
		{"Duplicate", func(t *testing.T, l eventlog.Log) { testDuplicate(t, l, caps) }},
		{"DuplicateRace", testDuplicateRace},
		{"StreamVersionsAndHashChain", testStreamVersionsAndHashChain},
		{"ConcurrentAppendsOneStream", func(t *testing.T, l eventlog.Log) { testConcurrentAppends(t, l, 1) }},
		{"ConcurrentAppendsManyStreams", func(t *testing.T, l eventlog.Log) { testConcurrentAppends(t, l, 5) }},
		{"ReadAllOrderAndPagination", testReadAllOrderAndPagination},
		{"ReadAllNeverSkips", testReadAllNeverSkips},
		{"HeadAndCountAfter", testHeadAndCountAfter},
		{"StreamHead", testStreamHead},
		{"SubscribeCatchUpThenLive", testSubscribeCatchUpThenLive},
		{"SubscribeFromCheckpoint", testSubscribeFromCheckpoint},
		{"SubscribeWhileAppending", testSubscribeWhileAppending},
		{"SubscribeHandlerError", testSubscribeHandlerError},
		{"SubscribeCancelled", testSubscribeCancelled},
		{"Provenance", testProvenance},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := newLog(t)
			t.Cleanup(l.Close)
			tt.run(t, l)
		})
	}
}

// Outage checks that every call of a log whose storage is down, as
// stopped returns it, fails with an error wrapping eventlog.ErrUnavailable
// (the webhook's 503, Stripe's retry). Subscribe is left out: it retries an
// unreachable server until its context ends, by design.
func Outage(t *testing.T, stopped func(t *testing.T) eventlog.Log) {
	l := stopped(t)
	t.Cleanup(l.Close)
	for _, op := range []struct {
		name string
		call func(context.Context) error
	}{
		{"Append", func(ctx context.Context) error { _, err := l.Append(ctx, NewEvent(NewStream("down"))); return err }},
		{"ReadStream", func(ctx context.Context) error { _, err := l.ReadStream(ctx, NewStream("down"), 0, 10); return err }},
		{"StreamHead", func(ctx context.Context) error { _, _, err := l.StreamHead(ctx, NewStream("down")); return err }},
		{"ReadAll", func(ctx context.Context) error { _, err := l.ReadAll(ctx, eventlog.Start, 10); return err }},
		{"Head", func(ctx context.Context) error { _, err := l.Head(ctx); return err }},
		{"CountAfter", func(ctx context.Context) error { _, err := l.CountAfter(ctx, eventlog.Start); return err }},
	} {
		t.Run(op.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			if err := op.call(ctx); !errors.Is(err, eventlog.ErrUnavailable) {
				t.Errorf("%s with the storage down = %v, want an error wrapping eventlog.ErrUnavailable", op.name, err)
			}
		})
	}
}

func testAppendThenReadStream(t *testing.T, l eventlog.Log) {
	connect := NewEvent("acct_1Nv0FGQ9RKHgCVdK/" + NewStream("connect"))
	for _, e := range []eventlog.Event{NewEvent(NewStream("platform")), connect} {
		t.Run(e.Stream, func(t *testing.T) {
			before := time.Now()
			res, err := l.Append(t.Context(), e)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if res.Duplicate || res.StreamVersion != 0 || !eventlog.Start.Less(res.Position) {
				t.Errorf("Append = %+v, want a new record at version 0 after Start", res)
			}
			recs := readStream(t, l, e.Stream)
			if len(recs) != 1 {
				t.Fatalf("ReadStream returned %d records, want 1", len(recs))
			}
			r := recs[0]
			checkEvent(t, r.Event, e)
			checkChain(t, recs)
			if r.Position != res.Position {
				t.Errorf("stored position %s, Append reported %s", r.Position, res.Position)
			}
			// Generous bounds: the storage server's clock is not the test's.
			if r.ReceivedAt.Before(before.Add(-time.Minute)) || r.ReceivedAt.After(time.Now().Add(time.Minute)) {
				t.Errorf("ReceivedAt %v, want about %v", r.ReceivedAt, before)
			}
		})
	}
}

// Every source is stored and read back; an event without one is a webhook
// delivery; an unsigned event is stored as such.
func testProvenance(t *testing.T, l eventlog.Log) {
	stream := NewStream("provenance")
	for _, src := range []eventlog.Source{"", eventlog.SourceWebhook, eventlog.SourceBackfill, eventlog.SourceReconcile, eventlog.SourceThin} {
		e := NewEvent(stream)
		e.Source = src
		if src == eventlog.SourceBackfill || src == eventlog.SourceReconcile {
			e.Signature = ""
		}
		mustAppend(t, l, e)
		recs := readStream(t, l, stream)
		checkEvent(t, recs[len(recs)-1].Event, e)
	}
	recs, err := l.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil || len(recs) != 5 || recs[2].Source != eventlog.SourceBackfill {
		t.Fatalf("ReadAll: %d records, %v; want 5, the third from backfill", len(recs), err)
	}
}

func testDuplicate(t *testing.T, l eventlog.Log, caps Capabilities) {
	stream, other := NewStream("dup"), NewStream("dup-other")
	e := NewEvent(stream)
	first := mustAppend(t, l, e)

	again := e
	again.Payload = append(bytes.Clone(e.Payload), ' ') // a re-delivery must not rewrite the record
	elsewhere := e
	elsewhere.Stream = other
	for name, dup := range map[string]eventlog.Event{"same": e, "changed payload": again, "other stream": elsewhere} {
		res, err := l.Append(t.Context(), dup)
		if err != nil {
			t.Fatalf("Append %s duplicate: %v", name, err)
		}
		if !res.Duplicate {
			t.Errorf("Append %s duplicate: Duplicate = false", name)
		}
		want := eventlog.AppendResult{Duplicate: true}
		if caps.DuplicatePosition {
			want.StreamVersion, want.Position = first.StreamVersion, first.Position
		}
		if res != want {
			t.Errorf("Append %s duplicate = %+v, want %+v (the stored copy is %+v)", name, res, want, first)
		}
	}
	recs := readStream(t, l, stream)
	if len(recs) != 1 {
		t.Fatalf("stream holds %d records, want 1", len(recs))
	}
	checkEvent(t, recs[0].Event, e)
	if got := readStream(t, l, other); len(got) != 0 {
		t.Errorf("the duplicate aimed at another stream was stored there: %d records", len(got))
	}
	if n, err := l.CountAfter(t.Context(), eventlog.Start); err != nil || n != 1 {
		t.Errorf("CountAfter(Start) = %d, %v; want 1", n, err)
	}
}

func testDuplicateRace(t *testing.T, l eventlog.Log) {
	e := NewEvent(NewStream("dup-race"))
	const n = 8
	results := make([]eventlog.AppendResult, n)
	run(t, n, func(i int) error {
		var err error
		results[i], err = l.Append(t.Context(), e)
		return err
	})
	fresh := 0
	for _, r := range results {
		if !r.Duplicate {
			fresh++
		}
	}
	if fresh != 1 {
		t.Errorf("%d of %d concurrent appends of one event stored it, want exactly 1", fresh, n)
	}
	if recs := readStream(t, l, e.Stream); len(recs) != 1 {
		t.Errorf("stream holds %d records, want 1", len(recs))
	}
}

func testStreamVersionsAndHashChain(t *testing.T, l eventlog.Log) {
	stream := NewStream("chain")
	const n = 6
	var want []eventlog.Event
	for v := range int64(n) {
		e := NewEvent(stream)
		if res := mustAppend(t, l, e); res.StreamVersion != v {
			t.Errorf("append #%d got version %d", v, res.StreamVersion)
		}
		want = append(want, e)
		mustAppend(t, l, NewEvent(NewStream("interleaved"))) // other streams do not disturb the versions
	}
	recs := readStream(t, l, stream)
	if len(recs) != n {
		t.Fatalf("ReadStream returned %d records, want %d", len(recs), n)
	}
	checkChain(t, recs)
	for i := range recs {
		checkEvent(t, recs[i].Event, want[i])
	}

	for _, tc := range []struct {
		from         int64
		limit        int
		wantVersions []int64
	}{
		{from: 2, limit: 3, wantVersions: []int64{2, 3, 4}},
		{from: 4, limit: 10, wantVersions: []int64{4, 5}},
		{from: 0, limit: 1, wantVersions: []int64{0}},
		{from: n, limit: 10, wantVersions: nil},
	} {
		got, err := l.ReadStream(t.Context(), stream, tc.from, tc.limit)
		if err != nil {
			t.Fatalf("ReadStream(from %d, limit %d): %v", tc.from, tc.limit, err)
		}
		var versions []int64
		for i, r := range got {
			versions = append(versions, r.StreamVersion)
			if !bytes.Equal(r.Hash, recs[r.StreamVersion].Hash) {
				t.Errorf("ReadStream(from %d) record %d differs from the full read", tc.from, i)
			}
		}
		if fmt.Sprint(versions) != fmt.Sprint(tc.wantVersions) {
			t.Errorf("ReadStream(from %d, limit %d) versions %v, want %v", tc.from, tc.limit, versions, tc.wantVersions)
		}
	}
	if got := readStream(t, l, NewStream("never-written")); len(got) != 0 {
		t.Errorf("an unknown stream has %d records", len(got))
	}
}

func testConcurrentAppends(t *testing.T, l eventlog.Log, streamCount int) {
	streams := make([]string, streamCount)
	for i := range streams {
		streams[i] = NewStream(fmt.Sprintf("concurrent%d", i))
	}
	const writers, perWriter = 8, 12
	appended := make([][]eventlog.Event, writers)
	run(t, writers, func(w int) error {
		for i := range perWriter {
			e := NewEvent(streams[(w+i)%streamCount])
			if _, err := l.Append(t.Context(), e); err != nil {
				return err
			}
			appended[w] = append(appended[w], e)
		}
		return nil
	})
	want := map[string]eventlog.Event{}
	for _, es := range appended {
		for _, e := range es {
			want[e.ID] = e
		}
	}
	stored := 0
	for _, s := range streams {
		recs := readStream(t, l, s)
		checkChain(t, recs)
		for _, r := range recs {
			e, ok := want[r.ID]
			if !ok || e.Stream != s {
				t.Errorf("stream %s holds unexpected record %s", s, r.ID)
				continue
			}
			checkEvent(t, r.Event, e)
		}
		stored += len(recs)
	}
	if stored != writers*perWriter {
		t.Errorf("%d records stored, want %d", stored, writers*perWriter)
	}
}

func testReadAllOrderAndPagination(t *testing.T, l eventlog.Log) {
	streams := []string{NewStream("all-a"), NewStream("all-b"), NewStream("all-c")}
	var appended []eventlog.AppendResult
	var ids []string
	for i := range 10 {
		e := NewEvent(streams[i%len(streams)])
		appended = append(appended, mustAppend(t, l, e))
		ids = append(ids, e.ID)
	}
	all, err := l.ReadAll(t.Context(), eventlog.Start, 100)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if len(all) != len(ids) {
		t.Fatalf("ReadAll returned %d records, want %d", len(all), len(ids))
	}
	checkGlobalOrder(t, all)
	for i, r := range all {
		if r.ID != ids[i] || r.Position != appended[i].Position {
			t.Errorf("ReadAll[%d] = %s at %s, appended %s at %s", i, r.ID, r.Position, ids[i], appended[i].Position)
		}
	}

	for _, limit := range []int{1, 3, 10} {
		var paged []eventlog.Record
		from := eventlog.Start
		for range len(all) + 1 {
			page, err := l.ReadAll(t.Context(), from, limit)
			if err != nil {
				t.Fatalf("ReadAll(%s, %d): %v", from, limit, err)
			}
			if len(page) > limit {
				t.Fatalf("ReadAll(%s, %d) returned %d records", from, limit, len(page))
			}
			if len(page) == 0 {
				break
			}
			paged = append(paged, page...)
			from = page[len(page)-1].Position
		}
		if len(paged) != len(all) {
			t.Fatalf("paging by %d read %d records, want %d", limit, len(paged), len(all))
		}
		for i := range paged {
			if paged[i].ID != all[i].ID {
				t.Errorf("paging by %d: record %d is %s, want %s", limit, i, paged[i].ID, all[i].ID)
			}
		}
	}
	if rest, err := l.ReadAll(t.Context(), all[3].Position, 100); err != nil || len(rest) != len(all)-4 || rest[0].ID != all[4].ID {
		t.Errorf("ReadAll after the 4th record = %d records (%v), want the %d after it", len(rest), err, len(all)-4)
	}
}

// testReadAllNeverSkips polls ReadAll while appends run, the way a projection
// reads: a record committed behind the reader's position would never be seen.
func testReadAllNeverSkips(t *testing.T, l eventlog.Log) {
	const writers, perWriter = 6, 20
	total := writers * perWriter
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	type reading struct {
		recs []eventlog.Record
		err  error
	}
	read := make(chan reading, 1)
	go func() {
		var r reading
		from := eventlog.Start
		for len(r.recs) < total && ctx.Err() == nil {
			page, err := l.ReadAll(ctx, from, 7)
			if err != nil {
				r.err = err
				break
			}
			if len(page) > 0 {
				r.recs = append(r.recs, page...)
				from = page[len(page)-1].Position
			}
		}
		read <- r
	}()
	run(t, writers, func(w int) error {
		stream := NewStream(fmt.Sprintf("skip%d", w)) // no stream contention: appends commit as concurrently as the backend allows
		for range perWriter {
			if _, err := l.Append(t.Context(), NewEvent(stream)); err != nil {
				return err
			}
		}
		return nil
	})
	r := <-read
	if r.err != nil {
		t.Fatalf("ReadAll while appending: %v", r.err)
	}
	all, err := l.ReadAll(t.Context(), eventlog.Start, total+1)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if len(all) != total {
		t.Fatalf("log holds %d records, want %d", len(all), total)
	}
	checkGlobalOrder(t, r.recs)
	checkSameRecords(t, r.recs, all)
}

func testHeadAndCountAfter(t *testing.T, l eventlog.Log) {
	head, err := l.Head(t.Context())
	if err != nil || head != eventlog.Start {
		t.Errorf("Head of an empty log = %s, %v; want Start", head, err)
	}
	if n, err := l.CountAfter(t.Context(), eventlog.Start); err != nil || n != 0 {
		t.Errorf("CountAfter(Start) of an empty log = %d, %v; want 0", n, err)
	}
	const n = 5
	var positions []eventlog.Position
	for range n {
		positions = append(positions, mustAppend(t, l, NewEvent(NewStream("head"))).Position)
	}
	head, err = l.Head(t.Context())
	if err != nil || head != positions[n-1] {
		t.Errorf("Head = %s, %v; want the last append's %s", head, err, positions[n-1])
	}
	for i, p := range append([]eventlog.Position{eventlog.Start}, positions...) {
		got, err := l.CountAfter(t.Context(), p)
		if want := int64(n - i); err != nil || got != want {
			t.Errorf("CountAfter(%s) = %d, %v; want %d", p, got, err, want)
		}
	}
}

// StreamHead is the last record of its stream, whatever others append;
// a stream without records has none.
func testStreamHead(t *testing.T, l eventlog.Log) {
	stream, other := NewStream("head"), NewStream("head-other")
	if _, ok, err := l.StreamHead(t.Context(), stream); ok || err != nil {
		t.Fatalf("StreamHead of an empty stream: ok %v, %v; want none", ok, err)
	}
	for i := range 5 {
		mustAppend(t, l, NewEvent(stream))
		mustAppend(t, l, NewEvent(other))
		recs := readStream(t, l, stream)
		head, ok, err := l.StreamHead(t.Context(), stream)
		if err != nil || !ok {
			t.Fatalf("StreamHead after %d appends: ok %v, %v", i+1, ok, err)
		}
		last := recs[len(recs)-1]
		checkEvent(t, head.Event, last.Event)
		if head.StreamVersion != int64(i) || !bytes.Equal(head.Hash, last.Hash) || head.Position != last.Position {
			t.Errorf("StreamHead after %d appends = version %d, position %s; want version %d, position %s",
				i+1, head.StreamVersion, head.Position, i, last.Position)
		}
	}
}

func testSubscribeCatchUpThenLive(t *testing.T, l eventlog.Log) {
	stream := NewStream("sub")
	var ids []string
	appendN := func(n int) {
		for range n {
			e := NewEvent(stream)
			mustAppend(t, l, e)
			ids = append(ids, e.ID)
		}
	}
	appendN(40) // more than one batch of a small batch size
	f := Follow(t, l, eventlog.Start)
	f.WaitFor(t, 40)
	appendN(3)
	f.WaitFor(t, 43)
	checkIDs(t, f.Stop(t), ids)
}

func testSubscribeFromCheckpoint(t *testing.T, l eventlog.Log) {
	stream := NewStream("checkpoint")
	for range 5 {
		mustAppend(t, l, NewEvent(stream))
	}
	all, err := l.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil || len(all) != 5 {
		t.Fatalf("ReadAll = %d records, %v; want 5", len(all), err)
	}
	var want []string
	for _, r := range all[3:] {
		want = append(want, r.ID)
	}
	f := Follow(t, l, all[2].Position) // the projection checkpointed the third record
	f.WaitFor(t, 2)
	for range 2 {
		e := NewEvent(stream)
		mustAppend(t, l, e)
		want = append(want, e.ID)
	}
	f.WaitFor(t, 4)
	checkIDs(t, f.Stop(t), want)
}

func testSubscribeWhileAppending(t *testing.T, l eventlog.Log) {
	const writers, perWriter = 8, 25
	total := writers * perWriter
	mustAppend(t, l, NewEvent(NewStream("before"))) // something to catch up on
	f := Follow(t, l, eventlog.Start)
	streams := []string{NewStream("live-a"), NewStream("live-b"), NewStream("live-c"), NewStream("live-d"), NewStream("live-e")}
	run(t, writers, func(w int) error {
		for i := range perWriter {
			if _, err := l.Append(t.Context(), NewEvent(streams[(w*perWriter+i)%len(streams)])); err != nil {
				return err
			}
		}
		return nil
	})
	f.WaitFor(t, total+1)
	got := f.Stop(t)
	all, err := l.ReadAll(t.Context(), eventlog.Start, total+2)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	checkSameRecords(t, got, all)
	next := map[string]int64{}
	for _, r := range got {
		if r.StreamVersion != next[r.Stream] {
			t.Errorf("stream %s: delivered version %d, want %d", r.Stream, r.StreamVersion, next[r.Stream])
		}
		next[r.Stream] = r.StreamVersion + 1
	}
}

func testSubscribeHandlerError(t *testing.T, l eventlog.Log) {
	for range 3 {
		mustAppend(t, l, NewEvent(NewStream("handler-error")))
	}
	errProjection := errors.New("projection failed")
	calls := 0
	err := subscribeWithTimeout(t, t.Context(), l, func(context.Context, []eventlog.Record) error {
		calls++
		return errProjection
	})
	if !errors.Is(err, errProjection) {
		t.Errorf("Subscribe returned %v, want the handler's error", err)
	}
	if calls != 1 {
		t.Errorf("handler called %d times after failing, want 1", calls)
	}
}

func testSubscribeCancelled(t *testing.T, l eventlog.Log) {
	mustAppend(t, l, NewEvent(NewStream("cancelled")))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := subscribeWithTimeout(t, ctx, l, func(context.Context, []eventlog.Record) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe with a cancelled context returned %v, want context.Canceled", err)
	}
	// Cancelling while it waits for new records (Follower.Stop checks the error).
	f := Follow(t, l, eventlog.Start)
	f.WaitFor(t, 1)
	if got := f.Stop(t); len(got) != 1 {
		t.Errorf("Subscribe delivered %d records, want 1", len(got))
	}
}

// subscribeWithTimeout runs Subscribe and returns its error, failing the test
// if it does not return in time.
func subscribeWithTimeout(t *testing.T, ctx context.Context, l eventlog.Log, h eventlog.Handler) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- l.Subscribe(ctx, eventlog.Start, h) }()
	select {
	case err := <-done:
		return err
	case <-time.After(waitTimeout):
		t.Fatalf("Subscribe did not return within %v", waitTimeout)
		return nil
	}
}

func mustAppend(t *testing.T, l eventlog.Log, e eventlog.Event) eventlog.AppendResult {
	t.Helper()
	res, err := l.Append(t.Context(), e)
	if err != nil {
		t.Fatalf("Append %s: %v", e.ID, err)
	}
	if res.Duplicate {
		t.Fatalf("Append %s: reported a duplicate of a new event", e.ID)
	}
	return res
}

func readStream(t *testing.T, l eventlog.Log, stream string) []eventlog.Record {
	t.Helper()
	recs, err := l.ReadStream(t.Context(), stream, 0, 10_000)
	if err != nil {
		t.Fatalf("ReadStream %s: %v", stream, err)
	}
	return recs
}

// run calls f(0..n-1) in n goroutines at once and fails the test on any error.
func run(t *testing.T, n int, f func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = f(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// checkEvent compares a stored event with the appended one, byte for byte.
func checkEvent(t *testing.T, got, want eventlog.Event) {
	t.Helper()
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"ID", got.ID, want.ID},
		{"Stream", got.Stream, want.Stream},
		{"Type", got.Type, want.Type},
		{"APIVersion", got.APIVersion, want.APIVersion},
		{"Created", got.Created.UTC(), want.Created.UTC()},
		{"Account", got.Account, want.Account},
		{"Payload", string(got.Payload), string(want.Payload)},
		{"Signature", got.Signature, want.Signature},
		{"Source", got.Source, want.Source.OrWebhook()},
	} {
		if f.got != f.want {
			t.Errorf("event %s: stored %s %q, appended %q", want.ID, f.name, f.got, f.want)
		}
	}
}

// checkChain verifies a whole stream: versions 0..n-1, payload digests and the hash chain.
func checkChain(t *testing.T, recs []eventlog.Record) {
	t.Helper()
	prev := eventlog.GenesisHash
	for i, r := range recs {
		if r.StreamVersion != int64(i) {
			t.Fatalf("stream %s: record %d has version %d", r.Stream, i, r.StreamVersion)
		}
		sum := sha256.Sum256(r.Payload)
		switch {
		case !bytes.Equal(r.PayloadSHA256, sum[:]):
			t.Errorf("stream %s v%d: PayloadSHA256 %x, want %x", r.Stream, i, r.PayloadSHA256, sum)
		case !bytes.Equal(r.PrevHash, prev):
			t.Errorf("stream %s v%d: PrevHash %x, want %x", r.Stream, i, r.PrevHash, prev)
		case !bytes.Equal(r.Hash, eventlog.ChainHash(prev, sum[:])):
			t.Errorf("stream %s v%d: Hash %x, want ChainHash(prev, payload sha256)", r.Stream, i, r.Hash)
		}
		prev = r.Hash
	}
}

func checkGlobalOrder(t *testing.T, recs []eventlog.Record) {
	t.Helper()
	for i := 1; i < len(recs); i++ {
		if !recs[i-1].Position.Less(recs[i].Position) {
			t.Errorf("record %d (%s at %s) does not come after record %d (%s at %s)",
				i, recs[i].ID, recs[i].Position, i-1, recs[i-1].ID, recs[i-1].Position)
		}
	}
}

// checkSameRecords checks that a reader met exactly the stored records, in order.
func checkSameRecords(t *testing.T, got, stored []eventlog.Record) {
	t.Helper()
	if len(got) != len(stored) {
		t.Errorf("reader met %d records, the log holds %d", len(got), len(stored))
	}
	for i := range min(len(got), len(stored)) {
		if got[i].ID != stored[i].ID || got[i].Position != stored[i].Position {
			t.Errorf("record %d: reader met %s at %s, the log holds %s at %s",
				i, got[i].ID, got[i].Position, stored[i].ID, stored[i].Position)
			return
		}
	}
}

func checkIDs(t *testing.T, recs []eventlog.Record, want []string) {
	t.Helper()
	if got := IDs(recs); !slices.Equal(got, want) {
		t.Errorf("delivered %v,\nwant %v", got, want)
	}
}
