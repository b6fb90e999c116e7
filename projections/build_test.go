package projections

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// TestVersionChange changes the projection's logic (a new plan mapping,
// version 2): Diff reports exactly the rows it changes, then a runner of
// version 2 builds it beside version 1 while events keep arriving and
// readers keep reading, and swaps it in.
func TestVersionChange(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	ctx := context.Background()
	v1 := Billing(testPlans(t))
	plans := append(slices.Clone(v1.Plans), domain.PlanPrice{PriceID: "price_basic_monthly", Plan: "starter"}) // known by its lookup key "basic" in v1
	v2 := Projection{Name: v1.Name, Version: v1.Version + 1, Plans: plans}
	ds := lifecycles(20, 40)
	split := len(ds) * 2 / 3
	appendAll(t, log, ds[:split])
	stop := startRunner(t, newRunner(t, pool, log, v1))
	waitCaughtUp(t, pool, log, v1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	same, err := Diff(ctx, pool, log, v1, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !same.Empty() {
		t.Errorf("Diff of the unchanged projection reports changes: %+v", same.Customers)
	}
	checkPlanDiff(t, pool, log, v2)

	// Readers never fail and never see a mix of both versions.
	var wg sync.WaitGroup
	readCtx, stopReading := context.WithCancel(ctx)
	var sawBasic, sawStarter atomic.Bool
	wg.Go(func() {
		for readCtx.Err() == nil {
			var basic, starter int
			err := pool.QueryRow(readCtx, `SELECT count(*) FILTER (WHERE plan = 'basic'), count(*) FILTER (WHERE plan = 'starter')
  FROM readmodel.subscriptions`).Scan(&basic, &starter)
			switch {
			case readCtx.Err() != nil:
			case err != nil:
				t.Errorf("read during the rebuild: %v", err)
				return
			case basic > 0 && starter > 0:
				t.Errorf("a reader saw %d basic and %d starter subscriptions: a half-swapped model", basic, starter)
				return
			}
			if basic > 0 {
				sawBasic.Store(true)
			}
			if starter > 0 {
				sawStarter.Store(true)
			}
		}
	})
	wg.Go(func() {
		for _, d := range ds[split:] {
			if _, err := log.Append(ctx, event(t, d)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	r := newRunner(t, pool, log, v2)
	r.batchSize = 50 // many build batches, and events left for the swap to catch up
	startRunner(t, r)
	time.Sleep(300 * time.Millisecond)
	for deadline := time.Now().Add(waitTimeout); !sawStarter.Load() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	stopReading()
	wg.Wait()
	cp := waitCaughtUp(t, pool, log, v2)
	if !sawBasic.Load() || !sawStarter.Load() {
		t.Errorf("readers saw basic=%v starter=%v, want both versions in turn", sawBasic.Load(), sawStarter.Load())
	}
	waitOnlySchema(t, pool, v2, cp.Schema)
	checkFromScratch(t, pool, log, v2)
}

// TestVersion7WithoutTimelineIsRebuilt: a live billing model of version 7
// as the binaries of 4a21f76..9409154 built it, whose customers table has no
// entitlement_timeline (0286a8b added the column without a BillingVersion
// bump), is rebuilt by this binary's runner: followed, every batch would
// write the column into a table without it, and fail.
func TestVersion7WithoutTimelineIsRebuilt(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	ctx := context.Background()
	ds := lifecycles(7, 10)
	split := len(ds) / 2
	appendAll(t, log, ds[:split])
	v7 := Billing(testPlans(t))
	v7.Version = 7
	stop := startRunner(t, newRunner(t, pool, log, v7))
	cp := waitCaughtUp(t, pool, log, v7)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ALTER TABLE "+ident(cp.Schema)+".customers DROP COLUMN entitlement_timeline CASCADE;\n"+viewsSQL(cp.Schema)); err != nil {
		t.Fatal(err)
	}
	appendAll(t, log, ds[split:])
	p := Billing(testPlans(t))
	startRunner(t, newRunner(t, pool, log, p))
	if got := waitCaughtUp(t, pool, log, p); got.Schema == cp.Schema {
		t.Errorf("version %d follows the version 7 schema %s instead of rebuilding", p.Version, cp.Schema)
	}
}

// checkPlanDiff checks that Diff of p, which maps price_basic_monthly to
// "starter", reports exactly the subscriptions of that price and the
// customers on the basic plan, with their plan changed.
func checkPlanDiff(t *testing.T, pool *pgxpool.Pool, log eventlog.Log, p Projection) {
	t.Helper()
	ctx := context.Background()
	var progress []Progress
	diff, err := Diff(ctx, pool, log, p, Options{Progress: func(pr Progress) { progress = append(progress, pr) }})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT 'subscriptions', subscription_id, customer_id FROM readmodel.subscriptions WHERE price_id = 'price_basic_monthly'
UNION ALL SELECT 'customers', customer_id, customer_id FROM readmodel.customers
 WHERE plan = 'basic' OR entitlement_timeline::text LIKE '%"plan": "basic"%'`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[[3]string]bool{}
	var table, key, customer string
	if _, err := pgx.ForEachRow(rows, []any{&table, &key, &customer}, func() error {
		want[[3]string{customer, table, key}] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatal("no basic subscription in the lifecycles: the test proves nothing")
	}
	got := map[[3]string]bool{}
	for _, c := range diff.Customers {
		for _, row := range c.Rows {
			got[[3]string{c.CustomerID, row.Table, row.Key}] = true
			plan := []report.ColumnDiff{{Column: "plan", Live: "basic", Candidate: "starter"}}
			// A customer's timeline names the plans it had.
			columns := slices.DeleteFunc(slices.Clone(row.Columns), func(c report.ColumnDiff) bool { return c.Column == "entitlement_timeline" })
			if row.Table == "customers" && len(columns) < len(row.Columns) && len(columns) == 0 {
				columns = plan
			}
			if row.Change != report.RowChanged || !slices.Equal(columns, plan) {
				t.Errorf("%s %s: %s %+v, want plan basic -> starter", row.Table, row.Key, row.Change, row.Columns)
			}
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("Diff reports rows %v, want %v", got, want)
	}
	if len(progress) == 0 || progress[len(progress)-1].Done == 0 {
		t.Errorf("Diff reported progress %+v", progress)
	}
	if got := buildSchemas(t, pool, p); len(got) != 1 {
		t.Errorf("schemas after Diff: %v, want only the live one", got)
	}
}

func TestRebuildWhileRunning(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	ctx := context.Background()
	p := Billing(testPlans(t))
	ds := lifecycles(21, 30)
	appendAll(t, log, ds[:len(ds)/2])
	startRunner(t, newRunner(t, pool, log, p))
	before := waitCaughtUp(t, pool, log, p)

	held, err := tryLock(ctx, pool, buildLockClass, p.Name, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Rebuild(ctx, pool, log, p, Options{}); !errors.Is(err, report.ErrBuildInProgress) {
		t.Errorf("Rebuild while another build holds the lock: %v, want ErrBuildInProgress", err)
	}
	held.Release()

	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, d := range ds[len(ds)/2:] {
			if _, err := log.Append(ctx, event(t, d)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var last Progress
	if _, err := Rebuild(ctx, pool, log, p, Options{Logger: testLogger(t), Wait: true, Progress: func(pr Progress) { last = pr }}); err != nil {
		t.Fatal(err)
	}
	<-done
	after := waitCaughtUp(t, pool, log, p)
	if after.Schema == before.Schema {
		t.Errorf("Rebuild left the live schema %s in place", before.Schema)
	}
	if last.Done == 0 || last.Rate() <= 0 {
		t.Errorf("last progress %+v", last)
	}
	checkFromScratch(t, pool, log, p)
}

// TestCatchUpCountsWhatItFolds: a build's catch-up from a position (the
// swap's, after the fill) reports as its total the events after that
// position, which it folds, not the whole log's, which it counted.
func TestCatchUpCountsWhatItFolds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, log := newLog(t)
	ds := lifecycles(23, 10)
	appendAll(t, log, ds)
	recs, err := log.ReadAll(ctx, eventlog.Start, len(ds))
	if err != nil || len(recs) != len(ds) {
		t.Fatalf("read %d of %d records: %v", len(recs), len(ds), err)
	}
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	var last Progress
	p := Billing(testPlans(t))
	b := &builder{pool: pool, log: log, p: p.building().reading(log), logger: testLogger(t), metrics: m, batchSize: 50,
		progress: func(pr Progress) { last = pr }}
	schema, err := b.createSchema(ctx)
	if err != nil {
		t.Fatal(err)
	}
	from := recs[len(recs)/3].Position
	if _, err := b.catchUp(ctx, b.p, schema, from, nil); err != nil {
		t.Fatal(err)
	}
	if want := int64(len(recs) - len(recs)/3 - 1); last.Done != want || last.Total != want {
		t.Errorf("a catch-up of %d events reported %d of %d done", want, last.Done, last.Total)
	}
}

// checkFromScratch compares the live read model with p folded afresh from
// the whole log.
func checkFromScratch(t *testing.T, pool *pgxpool.Pool, log eventlog.Log, p Projection) {
	t.Helper()
	recs, err := log.ReadAll(context.Background(), eventlog.Start, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	ref := scratch(t, pool, p)
	foldAll(t, pool, p, ref, recs)
	if d := diffDumps(dump(t, pool, ref), dump(t, pool, "readmodel")); d != "" {
		t.Fatalf("live read model differs from a build from scratch: %s", d)
	}
	var payloads []domaintest.Delivery
	for _, r := range recs {
		payloads = append(payloads, domaintest.Delivery{EventID: r.ID, Payload: r.Payload})
	}
	checkAgainstReplay(t, pool, "readmodel", payloads, p.Plans)
}

// waitOnlySchema waits until the old schema dropped after a swap is gone.
func waitOnlySchema(t *testing.T, pool *pgxpool.Pool, p Projection, live string) {
	t.Helper()
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(20 * time.Millisecond) {
		got := buildSchemas(t, pool, p)
		if slices.Equal(got, []string{live}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("schemas after the swap: %v, want only the live %s", got, live)
		}
	}
}

// buildSchemas lists the schemas of p's builds.
func buildSchemas(t *testing.T, pool *pgxpool.Pool, p Projection) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT nspname FROM pg_namespace WHERE nspname ~ $1 ORDER BY 1`, p.schemaPattern())
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestBuildInterrupted stops a runner in the middle of building version 2:
// version 1 stays live and untouched, and the next runner drops the
// half-built schema and builds afresh.
func TestBuildInterrupted(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	v1 := Billing(testPlans(t))
	v2 := Projection{Name: v1.Name, Version: v1.Version + 1, Plans: v1.Plans}
	appendAll(t, log, lifecycles(22, 20))
	stop := startRunner(t, newRunner(t, pool, log, v1))
	live := waitCaughtUp(t, pool, log, v1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	before := dump(t, pool, "readmodel")

	stalled := make(chan struct{})
	r := newRunner(t, pool, &stallingLog{Log: log, after: 3, stalled: stalled}, v2)
	r.batchSize, r.fillChunk = 20, 20
	stop = startRunner(t, r)
	select {
	case <-stalled:
	case <-time.After(waitTimeout):
		t.Fatal("the build did not start")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if cp, _, _ := loadCheckpoint(context.Background(), pool, v1.Name, ""); cp != live {
		t.Errorf("checkpoint after an interrupted build: %+v, want %+v", cp, live)
	}
	if d := diffDumps(before, dump(t, pool, "readmodel")); d != "" {
		t.Errorf("an interrupted build changed what readers see: %s", d)
	}
	if got := buildSchemas(t, pool, v2); len(got) != 2 {
		t.Errorf("schemas after an interrupted build: %v, want the live one and the half-built one", got)
	}

	startRunner(t, newRunner(t, pool, log, v2))
	cp := waitCaughtUp(t, pool, log, v2)
	waitOnlySchema(t, pool, v2, cp.Schema)
	checkFromScratch(t, pool, log, v2)
}

// stallingLog answers `after` ReadAll calls, then closes stalled and blocks
// the next one until its context is cancelled.
type stallingLog struct {
	eventlog.Log
	after   int
	stalled chan struct{}
	calls   atomic.Int32
}

func (l *stallingLog) ReadAll(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	if int(l.calls.Add(1)) == l.after+1 {
		close(l.stalled)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return l.Log.ReadAll(ctx, from, limit)
}

// TestRebuildNeverDowngrades: an older binary's rebuild must not swap its
// version in over a newer live one (a rolling deploy's stragglers).
func TestRebuildNeverDowngrades(t *testing.T) {
	t.Parallel()
	pool, log := newLog(t)
	v1 := Billing(testPlans(t))
	v2 := Projection{Name: v1.Name, Version: v1.Version + 1, Plans: v1.Plans}
	ctx := context.Background()
	if _, err := Rebuild(ctx, pool, log, v2, Options{Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	_, err := Rebuild(ctx, pool, log, v1, Options{Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "newer than this binary's") {
		t.Fatalf("rebuild of version %d over a live version %d: err = %v, want a refusal", v1.Version, v2.Version, err)
	}
	cp, _, err := loadCheckpoint(ctx, pool, v1.Name, "")
	if err != nil || cp.Version != v2.Version {
		t.Fatalf("live version after the refused rebuild = %d (%v), want %d", cp.Version, err, v2.Version)
	}
}

// TestReadModelCatalog builds a schema with createSchemaSQL and compares
// what PostgreSQL's catalog says of it (columns with their types,
// nullability and defaults, constraints, indexes) with
// testdata/readmodel_catalog.txt. The snapshot was taken of the schema that
// the hand-written readmodel.sql created before the tables were declared in
// Go, so the generated DDL is that schema; a column added to a declaration
// shows here as one line, to be added to the snapshot with the
// BillingVersion bump that rebuilds the read model (readmodel.go).
func TestReadModelCatalog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, pgtest.NewDatabase(t))
	const schema = "rm_catalog_v0_00000000"
	if _, err := pool.Exec(ctx, createSchemaSQL(schema)); err != nil {
		t.Fatal(err)
	}
	got := readCatalog(t, pool, schema)
	want, err := os.ReadFile("testdata/readmodel_catalog.txt")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		gotLines, wantLines := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		t.Errorf("the read model's catalog differs from testdata/readmodel_catalog.txt:\nonly in the schema built:\n%s\nonly in the snapshot:\n%s",
			strings.Join(linesNotIn(gotLines, wantLines), "\n"), strings.Join(linesNotIn(wantLines, gotLines), "\n"))
	}
}

// linesNotIn are the lines of a that b lacks.
func linesNotIn(a, b []string) []string {
	var out []string
	for _, l := range a {
		if !slices.Contains(b, l) {
			out = append(out, l)
		}
	}
	return out
}

// readCatalog describes schema's tables, one line per column (in table order), constraint
// and index, with the schema's name left out.
func readCatalog(t *testing.T, pool *pgxpool.Pool, schema string) string {
	t.Helper()
	var b strings.Builder
	for _, q := range []string{
		`SELECT format('column %s %s %s %s default %s', table_name, column_name, data_type,
        CASE is_nullable WHEN 'NO' THEN 'not null' ELSE 'null' END, coalesce(column_default, 'none'))
   FROM information_schema.columns WHERE table_schema = $1 ORDER BY table_name, ordinal_position`,
		`SELECT format('constraint %s %s %s', c.relname, con.conname, pg_get_constraintdef(con.oid))
   FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = $1 ORDER BY c.relname, con.conname`,
		`SELECT format('index %s %s', indexname, replace(indexdef, $1 || '.', ''))
   FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname`,
	} {
		rows, err := pool.Query(context.Background(), q, schema)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(&b, line)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// TestTableDeclarations checks each table's declaration against its row
// type: one field per column, and a column NULL allowed exactly where its
// field can hold no value (a pointer or a map), so that a scan never meets
// a NULL it cannot store and a write never sends one the table refuses.
func TestTableDeclarations(t *testing.T) {
	t.Parallel()
	checkDeclaration(t, customersTable)
	checkDeclaration(t, subscriptionsTable)
	checkDeclaration(t, invoicesTable)
	checkDeclaration(t, chargesTable)
	checkDeclaration(t, disputesTable)
	checkDeclaration(t, apiVersionsTable)
	checkDeclaration(t, linksTable)
	checkDeclaration(t, streamLinksTable)
	checkDeclaration(t, pendingDisputesTable)
	checkDeclaration(t, pendingInvoicePaymentsTable)
	if n := len(schemaTables()); n != 10 {
		t.Errorf("schemaTables() has %d tables, the test checks 10", n)
	}
}

func checkDeclaration[T any](t *testing.T, tb table[T]) {
	t.Helper()
	var row T
	fields := tb.fields(&row)
	if len(fields) != len(tb.columns) {
		t.Fatalf("%s: %d columns, %d fields", tb.name, len(tb.columns), len(fields))
	}
	for i, c := range tb.columns {
		kind := reflect.TypeOf(fields[i]).Elem().Kind()
		nullable := kind == reflect.Pointer || kind == reflect.Map
		if notNull := strings.Contains(c.def, "NOT NULL"); notNull == nullable {
			t.Errorf("%s.%s is %q, its field a %s", tb.name, c.name, c.def, reflect.TypeOf(fields[i]).Elem())
		}
	}
}
