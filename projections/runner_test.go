package projections

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

func TestRunnerFollowsTheLog(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	ds := lifecycles(10, 8)
	appendAll(t, log, ds[:len(ds)/2])
	reg := prometheus.NewRegistry()
	r, err := NewRunner(pool, log, p, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	stop := startRunner(t, r)
	waitCaughtUp(t, pool, log, p)
	appendAll(t, log, ds[len(ds)/2:]) // live, after the catch-up
	cp := waitCaughtUp(t, pool, log, p)
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v after cancellation, want nil", err)
	}

	checkAgainstReplay(t, pool, "readmodel", ds, p.Plans)
	ref := scratch(t, pool, p)
	foldAll(t, pool, p, ref, records(t, ds))
	if d := diffDumps(dump(t, pool, ref), dump(t, pool, "readmodel")); d != "" {
		t.Fatalf("read model differs from an in-order fold: %s", d)
	}
	var unhandled int
	for _, d := range ds {
		if d.Type == "payment_intent.succeeded" {
			unhandled++
		}
	}
	if got := counter(t, r, outcomeUnhandledType); int(got) != unhandled || unhandled == 0 {
		t.Errorf("unhandled_type counter = %v, want %d", got, unhandled)
	}
	statuses, err := ReadStatus(context.Background(), pool, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(statuses) != 1 || statuses[0].Lag != 0 || statuses[0].Position != cp.Position || statuses[0].Head != cp.Position ||
		statuses[0].Version != BillingVersion || statuses[0].Schema != cp.Schema {
		t.Errorf("ReadStatus = %+v, want billing caught up at %s", statuses, cp.Position)
	}
}

func TestCheckpointCompareAndSet(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	appendAll(t, log, lifecycles(11, 2))
	ctx := context.Background()
	r := newRunner(t, pool, log, p)
	b := &builder{pool: pool, log: log, p: p.reading(log), logger: testLogger(t), metrics: r.metrics, batchSize: 10}
	if _, err := b.build(ctx, false); err != nil {
		t.Fatal(err)
	}
	recs, err := log.ReadAll(ctx, eventlog.Start, 10)
	if err != nil {
		t.Fatal(err)
	}
	start, _, err := loadCheckpoint(ctx, pool, p.Name, "")
	if err != nil {
		t.Fatal(err)
	}

	// Two runners hold the same checkpoint: the first to commit wins.
	first, second := start, start
	firstStates, secondStates := newHeldStates(maxHeldStates), newHeldStates(maxHeldStates)
	if err := r.apply(&first, firstStates)(ctx, recs[:5]); err != nil {
		t.Fatal(err)
	}
	if err := r.apply(&second, secondStates)(ctx, recs[:5]); !errors.Is(err, errCheckpointMoved) {
		t.Fatalf("second runner's batch: %v, want errCheckpointMoved", err)
	}
	// A stale position is refused and writes nothing.
	before := dump(t, pool, "readmodel")
	if err := r.apply(&second, secondStates)(ctx, recs[5:]); !errors.Is(err, errCheckpointMoved) {
		t.Fatalf("stale runner's batch: %v, want errCheckpointMoved", err)
	}
	if d := diffDumps(before, dump(t, pool, "readmodel")); d != "" {
		t.Fatalf("a refused batch changed the read model: %s", d)
	}
	if err := r.apply(&first, firstStates)(ctx, recs[5:]); err != nil {
		t.Fatal(err)
	}
	cp, _, _ := loadCheckpoint(ctx, pool, p.Name, "")
	if cp.Position != recs[len(recs)-1].Position {
		t.Errorf("checkpoint at %s, want %s", cp.Position, recs[len(recs)-1].Position)
	}

	// Concurrent batches from the same position: exactly one commits.
	cp1, cp2 := cp, cp
	more, err := log.ReadAll(ctx, cp.Position, 10)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { errs <- r.apply(&cp1, newHeldStates(maxHeldStates))(ctx, more) }()
	go func() { errs <- r.apply(&cp2, newHeldStates(maxHeldStates))(ctx, more) }()
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) || !errors.Is(errors.Join(e1, e2), errCheckpointMoved) {
		t.Errorf("concurrent batches returned %v and %v, want one nil and one errCheckpointMoved", e1, e2)
	}
}

// TestRunnerRestartMidStream cancels the runner between two batches, again
// and again, and compares with an uninterrupted runner on another database.
func TestRunnerRestartMidStream(t *testing.T) {
	t.Parallel()
	p := Billing(testPlans(t))
	ds := lifecycles(12, 20)

	pool, log := newLog(t)
	appendAll(t, log, ds)
	head, _ := log.Head(context.Background())
	restarts := 0
	for ; ; restarts++ {
		paused := make(chan struct{})
		r := newRunner(t, pool, &pausingLog{Log: log, after: 3, paused: paused}, p)
		r.catchUp = batchSizes{10, 40} // a catch-up of many batches, interrupted too
		stop := startRunner(t, r)
		select {
		case <-paused:
		case <-time.After(waitTimeout):
			t.Fatal("the runner did not apply 3 batches")
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if cp, _, _ := loadCheckpoint(context.Background(), pool, p.Name, ""); cp.Position == head {
			break
		}
	}
	if restarts < 3 {
		t.Fatalf("the runner was interrupted only %d times mid-stream", restarts)
	}

	refPool, refLog := newLog(t)
	appendAll(t, refLog, ds)
	startRunner(t, newRunner(t, refPool, refLog, p))
	waitCaughtUp(t, refPool, refLog, p)
	if d := diffDumps(dump(t, refPool, "readmodel"), dump(t, pool, "readmodel")); d != "" {
		t.Fatalf("interrupted runs differ from an uninterrupted one after %d restarts: %s", restarts, d)
	}
}

// pausingLog lets its reader take `after` batches (reads of a catch-up,
// then batches of the subscription), then closes paused and holds the next
// one until the reader's context is cancelled; a reader that catches up
// with the head first gets paused closed then.
type pausingLog struct {
	eventlog.Log
	after  int
	paused chan struct{}
	n      int // batches taken; the catch-up's reads and the subscription's run one after the other
	once   sync.Once
}

// pause holds the reader until ctx is done, when it has taken its batches.
func (l *pausingLog) pause(ctx context.Context) error {
	if l.n < l.after {
		l.n++
		return nil
	}
	l.once.Do(func() { close(l.paused) })
	<-ctx.Done()
	return ctx.Err()
}

// caughtUp reports that the reader has met the head at pos, never to pause again.
func (l *pausingLog) caughtUp(ctx context.Context, pos eventlog.Position) {
	if head, _ := l.Head(ctx); pos == head {
		l.once.Do(func() { close(l.paused) })
		l.n = -1 << 30
	}
}

func (l *pausingLog) ReadAll(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	if err := l.pause(ctx); err != nil {
		return nil, err
	}
	return l.Log.ReadAll(ctx, from, limit)
}

func (l *pausingLog) Subscribe(ctx context.Context, from eventlog.Position, h eventlog.Handler) error {
	l.caughtUp(ctx, from) // by the catch-up
	return l.Log.Subscribe(ctx, from, func(ctx context.Context, batch []eventlog.Record) error {
		if err := l.pause(ctx); err != nil {
			return err
		}
		if err := h(ctx, batch); err != nil {
			return err
		}
		l.caughtUp(ctx, batch[len(batch)-1].Position)
		return nil
	})
}

func TestDeadLettersAndUnhandledTypes(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	ds := lifecycles(13, 3)
	malformed := domaintest.Delivery{
		EventID: "evt_malformed", Type: "invoice.paid", Created: ds[0].Created,
		Payload: []byte(`{"id":"evt_malformed","object":"event","type":"invoice.paid","created":1709251200,` +
			`"api_version":"2023-10-16","data":{"object":{"id":"in_x","object":"invoice","customer":"cus_x",` +
			`"status":"paid","amount_due":"a lot"}}}`),
	}
	unknown := domaintest.Delivery{
		EventID: "evt_unknown", Type: "product.created", Created: ds[0].Created,
		Payload: []byte(`{"id":"evt_unknown","object":"event","type":"product.created","created":1709251200,` +
			`"data":{"object":{"id":"prod_x","object":"product"}}}`),
	}
	appendAll(t, log, ds[:5])
	appendAll(t, log, []domaintest.Delivery{malformed, unknown})
	appendAll(t, log, ds[5:])
	reg := prometheus.NewRegistry()
	r, err := NewRunner(pool, log, p, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	startRunner(t, r)
	cp := waitCaughtUp(t, pool, log, p)

	checkAgainstReplay(t, pool, "readmodel", ds, p.Plans) // everything after the bad events applied
	var eventID, eventType, msg, schema string
	err = pool.QueryRow(context.Background(), `SELECT event_id, event_type, error, schema_name FROM projection_dead_letters`).
		Scan(&eventID, &eventType, &msg, &schema)
	if err != nil {
		t.Fatal(err)
	}
	if eventID != "evt_malformed" || eventType != "invoice.paid" || schema != cp.Schema || !strings.Contains(msg, "amount_due") {
		t.Errorf("dead letter = %s %s %q in %s, want evt_malformed invoice.paid about amount_due in %s", eventID, eventType, msg, schema, cp.Schema)
	}
	for outcome, want := range map[string]float64{outcomeDeadLetter: 1, outcomeUnhandledType: 1 + countType(ds, "payment_intent.succeeded")} {
		if got := counter(t, r, outcome); got != want {
			t.Errorf("%s counter = %v, want %v", outcome, got, want)
		}
	}
	statuses, err := ReadStatus(context.Background(), pool, log)
	if err != nil || len(statuses) != 1 || statuses[0].DeadLetters != 1 {
		t.Errorf("ReadStatus = %+v, %v; want 1 dead letter", statuses, err)
	}
}

func countType(ds []domaintest.Delivery, typ string) float64 {
	n := 0.0
	for _, d := range ds {
		if d.Type == typ {
			n++
		}
	}
	return n
}

// TestOneRunnerPerProjection runs two runners on one database: only the
// lock holder applies; when it stops, the other takes over.
func TestOneRunnerPerProjection(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	ds := lifecycles(14, 6)
	third := len(ds) / 3
	appendAll(t, log, ds[:third])

	a, b := newRunner(t, pool, log, p), newRunner(t, pool, log, p)
	stopA := startRunner(t, a)
	waitCaughtUp(t, pool, log, p)
	startRunner(t, b)
	appendAll(t, log, ds[third:2*third])
	waitCaughtUp(t, pool, log, p)
	if got := holders(t, pool, p); got != 1 {
		t.Errorf("%d sessions hold the runner lock, want 1", got)
	}
	if n := counter(t, b, outcomeApplied); n != 0 {
		t.Errorf("the runner without the lock applied %v events", n)
	}
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	appendAll(t, log, ds[2*third:])
	waitCaughtUp(t, pool, log, p)
	if n := counter(t, b, outcomeApplied); n == 0 {
		t.Error("the second runner did not take over")
	}
	checkAgainstReplay(t, pool, "readmodel", ds, p.Plans)
}

func holders(t *testing.T, pool pgxQuerier, p Projection) int {
	var n int
	err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = $1::int::oid AND objid = hashtext($2)::oid AND objsubid = 2`,
		runLockClass, p.Name).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// counter reads the events counter of one outcome.
func counter(t *testing.T, r *Runner, outcome string) float64 {
	t.Helper()
	var m dto.Metric
	if err := r.metrics.events.WithLabelValues(r.p.Name, outcome).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestUntestedAPIVersions: events of an API version the decoder was not
// tested with are decoded by shape, counted by version, logged once and
// listed by ReadStatus.
func TestUntestedAPIVersions(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	const future = "2027-04-01.future"
	ds := lifecycles(12, 2)
	for i := range 2 {
		payload := fmt.Sprintf(`{"id":"evt_future_%d","object":"event","api_version":%q,"created":1800000000,"type":"customer.updated",
			"data":{"object":{"id":"cus_future","object":"customer","email":"f%d@example.com"}}}`, i, future, i)
		ds = append(ds, domaintest.Delivery{EventID: fmt.Sprintf("evt_future_%d", i), Type: "customer.updated", CustomerID: "cus_future",
			Created: time.Unix(1800000000, 0).UTC(), Payload: []byte(payload)})
	}
	appendAll(t, log, ds)
	var logs bytes.Buffer // written by the runner's goroutine, read after it stopped
	r, err := NewRunner(pool, log, p, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	stop := startRunner(t, r)
	waitCaughtUp(t, pool, log, p)
	// A batch is counted once its commit returned to the runner, which can
	// be after the checkpoint is visible here: wait for the count before
	// stopping, or a stop that cancels the commit's wait loses it.
	untestedCount := r.metrics.apiVersions.WithLabelValues(future, "false")
	waitFor(t, fmt.Sprintf("ledger_events_api_version_total{api_version=%q,known=false} = 2", future), func() bool {
		return testutil.ToFloat64(untestedCount) == 2
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), future); n != 1 {
		t.Errorf("the untested version is logged %d times, want once:\n%s", n, logs.String())
	}
	statuses, err := ReadStatus(context.Background(), pool, log)
	if err != nil || len(statuses) != 1 {
		t.Fatalf("ReadStatus = %v, %v", statuses, err)
	}
	var untested []report.APIVersion
	tested := 0
	for _, v := range statuses[0].APIVersions {
		if v.Tested {
			tested++
		} else {
			untested = append(untested, v)
		}
	}
	if want := []report.APIVersion{{Version: future, FirstEventID: "evt_future_0"}}; !slices.Equal(untested, want) || tested == 0 {
		t.Errorf("status lists untested versions %+v and %d tested; want %+v and some tested", untested, tested, want)
	}
	var st struct{ Email string }
	if err := pool.QueryRow(context.Background(), `SELECT email FROM readmodel.customers WHERE customer_id = 'cus_future'`).Scan(&st.Email); err != nil || !strings.HasPrefix(st.Email, "f") {
		t.Errorf("the untested version's customer: %q, %v; want it decoded by shape", st.Email, err)
	}
}
