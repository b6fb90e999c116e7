package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/internal/tcpproxy"
)

// poison is an event that a projection cannot apply as it stands, for
// customers of its own (cus_poison_…), and whether it must be dead-lettered
// (or is cleaned and applied).
type poison struct {
	name       string
	event      eventlog.Event
	deadLetter bool
}

// subscriptionEvent renders a customer.subscription.updated event of API
// 2023-10-16 whose data.object fields are given as raw JSON.
func subscriptionEvent(id, customer, subID, status, priceID string, periodStart, periodEnd int64) eventlog.Event {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	payload := fmt.Sprintf(`{"id":%s,"object":"event","api_version":"2023-10-16","created":1709251200,`+
		`"type":"customer.subscription.updated","data":{"object":{"id":%s,"object":"subscription","customer":%s,`+
		`"status":%s,"current_period_start":%d,"current_period_end":%d,`+
		`"items":{"data":[{"quantity":1,"price":{"id":%s,"product":"prod_poison"}}]}}}}`,
		q(id), q(subID), q(customer), q(status), periodStart, periodEnd, q(priceID))
	return rawEvent(id, "customer-"+customer, "customer.subscription.updated", payload)
}

func rawEvent(id, stream, typ, payload string) eventlog.Event {
	return eventlog.Event{ID: id, Stream: stream, Type: typ, APIVersion: "2023-10-16",
		Created: time.Unix(1709251200, 0).UTC(), Payload: []byte(payload), Signature: "t=0,v1=test"}
}

// poisons are the cases of issue #10: values PostgreSQL cannot hold, in
// fields the read model projects. They are appended to the log directly,
// as events stored before the webhook checked envelopes were.
func poisons() []poison {
	long := "sub_" + strings.Repeat("x", 10_000)
	const start, end = 1709251200, 1711929600
	return []poison{
		{"NUL in status and price id", subscriptionEvent("evt_poison_nul_sub", "cus_poison_nul_sub", "sub_poison_nul", "active\u0000", "price_\u0000pro", start, end), false},
		{"NUL in customer name", rawEvent("evt_poison_nul_name", "customer-cus_poison_nul_name", "customer.updated",
			`{"id":"evt_poison_nul_name","object":"event","api_version":"2023-10-16","created":1709251200,"type":"customer.updated",`+
				`"data":{"object":{"id":"cus_poison_nul_name","object":"customer","name":"Ann\u0000Lee","email":"a@example.com"}}}`), false},
		{"10,000-character subscription id", subscriptionEvent("evt_poison_long_sub", "cus_poison_long_sub", long, "active", "price_pro", start, end), true},
		{"10,000-character invoice subscription", rawEvent("evt_poison_long_inv", "customer-cus_poison_long_inv", "invoice.paid",
			`{"id":"evt_poison_long_inv","object":"event","api_version":"2023-10-16","created":1709251200,"type":"invoice.paid",`+
				`"data":{"object":{"id":"in_poison","object":"invoice","customer":"cus_poison_long_inv","status":"paid",`+
				`"subscription":"`+long+`","period_start":1709251200,"period_end":1709251200}}}`), true},
		{"period end 1e13", subscriptionEvent("evt_poison_far", "cus_poison_far", "sub_poison_far", "active", "price_pro", start, 10_000_000_000_000), true},
		{"period start -1e12", subscriptionEvent("evt_poison_past", "cus_poison_past", "sub_poison_past", "active", "price_pro", -1_000_000_000_000, end), true},
		{"refused by a constraint", subscriptionEvent("evt_poison_check", "cus_poison_check", "sub_poison_check", "poisoned", "price_pro", start, end), true},
		{"data.object not an object", rawEvent("evt_poison_shape", "object-unknown-evt_poison_shape", "customer.subscription.updated",
			`{"id":"evt_poison_shape","object":"event","api_version":"2023-10-16","created":1709251200,`+
				`"type":"customer.subscription.updated","data":{"object":"nope"}}`), true},
		// Two customers claiming one subscription in one batch: one upsert
		// would write its row twice (SQLSTATE 21000) unless bisected.
		{"shared subscription, first", subscriptionEvent("evt_poison_shared_1", "cus_poison_shared_1", "sub_poison_shared", "active", "price_pro", start, end), false},
		{"shared subscription, second", subscriptionEvent("evt_poison_shared_2", "cus_poison_shared_2", "sub_poison_shared", "active", "price_pro", start, end), false},
	}
}

// addPoisonCheck makes schema refuse the "poisoned" status, the way
// PostgreSQL refuses a value it cannot hold, for evt_poison_check.
func addPoisonCheck(t *testing.T, q pgxQuerier, schema string) {
	t.Helper()
	if _, err := q.Exec(context.Background(), "ALTER TABLE "+ident(schema)+
		".subscriptions ADD CONSTRAINT no_poison CHECK (status <> 'poisoned')"); err != nil {
		t.Fatal(err)
	}
}

// withoutPoison drops the rows of poison customers from a dump.
func withoutPoison(d map[string][]string) map[string][]string {
	out := map[string][]string{}
	for name, rows := range d {
		out[name] = slices.DeleteFunc(slices.Clone(rows), func(r string) bool { return strings.Contains(r, "poison") })
	}
	return out
}

// TestPoisonIsDeadLetteredAlone: a shuffled corpus with the poison events
// of issue #10 mixed in, through the real runner (small batches, so poison
// shares batches with good events): the runner catches up, only the poison
// events are dead letters, every other customer's read model is exactly the
// clean corpus's, and the NUL cases are cleaned and applied. Retry applies a
// dead letter once its cause is gone; a rebuild is not stopped by poison.
func TestPoisonIsDeadLetteredAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	startRunner(t, newRunner(t, pool, log, p))
	cp := waitCaughtUp(t, pool, log, p)
	addPoisonCheck(t, pool, cp.Schema)

	rng := rand.New(rand.NewPCG(10, 10))
	ds := lifecycles(10, 12)
	order := domaintest.Redeliver(rng, ds)
	events := make([]eventlog.Event, 0, len(order)+10)
	for _, d := range order {
		events = append(events, event(t, d))
	}
	var wantDead []string
	for _, ps := range poisons() {
		i := rng.IntN(len(events) + 1)
		events = slices.Insert(events, i, ps.event)
		if ps.deadLetter {
			wantDead = append(wantDead, ps.event.ID)
		}
	}
	for _, e := range events {
		if _, err := log.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	waitCaughtUp(t, pool, log, p)

	ref := scratch(t, pool, p)
	foldAll(t, pool, p, ref, records(t, ds))
	want := dump(t, pool, ref)
	if d := diffDumps(want, withoutPoison(dump(t, pool, cp.Schema))); d != "" {
		t.Fatalf("read model of the other customers differs from the clean corpus's: %s", d)
	}
	checkDeadLetters(t, pool, wantDead)
	if got := testutil.ToFloat64(newDeadLetterGauge(pool)); got != float64(len(wantDead)) {
		t.Errorf("ledger_projection_dead_letters = %v, want %d", got, len(wantDead))
	}
	var name, status, priceID string
	if err := pool.QueryRow(ctx, `SELECT c.name, s.status, s.price_id FROM readmodel.customers c, readmodel.subscriptions s
 WHERE c.customer_id = 'cus_poison_nul_name' AND s.subscription_id = 'sub_poison_nul'`).Scan(&name, &status, &priceID); err != nil {
		t.Fatal(err)
	}
	if name != "AnnLee" || status != "active" || priceID != "price_pro" {
		t.Errorf("cleaned values: name %q, status %q, price %q; want AnnLee, active, price_pro", name, status, priceID)
	}

	// The constraint goes (a fix): retrying its dead letter applies it.
	if _, err := pool.Exec(ctx, "ALTER TABLE "+ident(cp.Schema)+".subscriptions DROP CONSTRAINT no_poison"); err != nil {
		t.Fatal(err)
	}
	res, err := Retry(ctx, pool, log, p, testLogger(t), "evt_poison_check")
	if err != nil || !slices.Equal(res.Applied, []string{"evt_poison_check"}) || len(res.DeadLettered) != 0 {
		t.Fatalf("Retry(evt_poison_check) = %+v, %v; want it applied", res, err)
	}
	if err := pool.QueryRow(ctx, `SELECT status FROM readmodel.subscriptions WHERE subscription_id = 'sub_poison_check'`).Scan(&status); err != nil || status != "poisoned" {
		t.Fatalf("retried subscription: status %q, %v", status, err)
	}
	wantDead = slices.DeleteFunc(wantDead, func(id string) bool { return id == "evt_poison_check" })
	checkDeadLetters(t, pool, wantDead)
	if res, err := Retry(ctx, pool, log, p, testLogger(t)); err != nil || len(res.Applied) != 0 || len(res.DeadLettered) != len(wantDead) {
		t.Fatalf("Retry(all) = %+v, %v; want all %d dead-lettered again", res, err, len(wantDead))
	}
	checkDeadLetters(t, pool, wantDead)
	if _, err := Retry(ctx, pool, log, p, testLogger(t), "evt_not_dead"); !errors.Is(err, report.ErrNoDeadLetter) {
		t.Fatalf("Retry(evt_not_dead) = %v, want ErrNoDeadLetter", err)
	}

	// A rebuild reads the poison again (in batches of thousands) and completes.
	if _, err := Rebuild(ctx, pool, log, p, Options{Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	rebuilt := waitCaughtUp(t, pool, log, p)
	if rebuilt.Schema == cp.Schema {
		t.Fatal("rebuild did not swap in a new schema")
	}
	if d := diffDumps(want, withoutPoison(dump(t, pool, rebuilt.Schema))); d != "" {
		t.Fatalf("rebuilt read model of the other customers differs: %s", d)
	}
	checkDeadLetters(t, pool, wantDead)
}

// checkDeadLetters requires the live dead letters to be exactly want.
func checkDeadLetters(t *testing.T, pool *pgxpool.Pool, want []string) {
	t.Helper()
	letters, err := ReadDeadLetters(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range letters {
		got = append(got, l.EventID)
		if l.Error == "" || l.Stream == "" {
			t.Errorf("dead letter %+v lacks its reason or stream", l)
		}
	}
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Fatalf("dead letters %v, want %v", got, want)
	}
}

// TestErrorClassification: real PostgreSQL and network errors, each either
// a data error (dead letter) or not (retry).
func TestErrorClassification(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	raise := func(code string) string {
		return fmt.Sprintf("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '%s'; END $$", code)
	}
	for _, tc := range []struct {
		name, sql string
		data      bool
	}{
		{"NUL in text (22021)", "SELECT convert_from('\\x00'::bytea, 'UTF8')", true},
		{"timestamp out of range (22008)", "SELECT to_timestamp(1e13)", true},
		{"numeric out of range (22003)", "SELECT 9223372036854775807::bigint + 1", true},
		{"check violation (23514)", raise("23514"), true},
		{"cardinality violation (21000)", raise("21000"), true},
		{"index row too large (54000)", raise("54000"), true},
		{"serialization failure (40001)", raise("40001"), false},
		{"deadlock (40P01)", raise("40P01"), false},
		{"admin shutdown (57P01)", raise("57P01"), false},
		{"connection failure (08006)", raise("08006"), false},
		{"undefined table (42P01)", "SELECT * FROM no_such_table", false},
	} {
		_, err := pool.Exec(ctx, tc.sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Fatalf("%s: got %v, want a PostgreSQL error", tc.name, err)
		}
		if got := isDataError(fmt.Errorf("write read model: %w", err)); got != tc.data {
			t.Errorf("%s (%s): isDataError = %v, want %v", tc.name, pgErr.Code, got, tc.data)
		}
	}
	// A database that cannot be reached.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = pgx.Connect(ctx, "postgres://postgres@"+addr+"/x?connect_timeout=2")
	if err == nil || isDataError(err) {
		t.Errorf("unreachable database: %v, isDataError = %v; want a retried error", err, isDataError(err))
	}
	if isDataError(context.DeadlineExceeded) {
		t.Error("a deadline is not a data error")
	}
}

// TestRunnerResumesSoonAfterAnOutage: the runner reaches the database
// through a proxy that goes down for longer than the runner's old back-off
// cap would tolerate; within 5 s of the database coming back, the runner
// has applied what was appended meanwhile.
func TestRunnerResumesSoonAfterAnOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	direct, url := pgtest.NewPool(t)
	proxy, viaProxy := tcpproxy.Pool(t, url, 16)
	p := Billing(testPlans(t))
	runnerLog := postgres.New(viaProxy, testLogger(t), postgres.WithPollInterval(200*time.Millisecond))
	r := newRunner(t, viaProxy, runnerLog, p)
	// Run with the production back-off, not startRunner's shortened one.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })

	directLog := postgres.New(direct, testLogger(t))
	ds := lifecycles(4, 2)
	appendAll(t, directLog, ds[:len(ds)/2])
	waitCaughtUp(t, direct, directLog, p)

	proxy.Down()
	appendAll(t, directLog, ds[len(ds)/2:])
	// Long enough that a back-off doubling from 1 s to 30 s is in a 16 s
	// wait when the database returns, whenever the runner noticed the outage.
	time.Sleep(25 * time.Second)
	proxy.Up(t)
	back := time.Now()
	head, err := directLog.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for {
		cp, _, err := loadCheckpoint(ctx, direct, p.Name, "")
		if err != nil {
			t.Fatal(err)
		}
		if cp.Position == head {
			break
		}
		if time.Since(back) > 5*time.Second {
			t.Fatalf("runner had not caught up 5 s after the database came back (checkpoint %s, head %s)", cp.Position, head)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("caught up %v after the database came back", time.Since(back).Round(time.Millisecond))
}

// TestBisectedBatchCountsItsNotifications: a batch that a poison event
// makes fold again in halves counts the notifications every half added to
// the outbox (a build logs and reports the sum), not the first half's
// alone.
func TestBisectedBatchCountsItsNotifications(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, pgtest.NewDatabase(t))
	p := Billing(testPlans(t))
	schema := scratch(t, pool, p)
	addPoisonCheck(t, pool, schema)
	recs := records(t, lifecycles(11, 8))
	refused := poisons()[6] // refused by PostgreSQL's check, not by decoding: the batch is bisected
	if refused.name != "refused by a constraint" {
		t.Fatalf("poisons()[6] is %q", refused.name)
	}
	recs = slices.Insert(recs, len(recs)/4, eventlog.Record{Event: refused.event})
	for i := range recs {
		pos := uint64(i + 1)
		recs[i].Position = eventlog.Position{Commit: pos, Prepare: pos}
	}
	p = p.reading(streamsOf(recs))

	b, err := foldBatch(ctx, pool, testLogger(t), p, schema, p.decode(recs), nil)
	if err != nil {
		t.Fatal(err)
	}
	var stored int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM notifications`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if len(b.deadLetters) != 1 || b.deadLetters[0].eventID != refused.event.ID {
		t.Fatalf("dead letters %+v; want %s alone", b.deadLetters, refused.event.ID)
	}
	if stored == 0 || b.notified != stored {
		t.Fatalf("the bisected batch counts %d notifications; the outbox holds %d", b.notified, stored)
	}
}
