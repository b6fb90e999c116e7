package migrations_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/migrations"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var update = flag.Bool("update", false, "rewrite testdata/catalog.golden from a freshly migrated database")

const golden = "testdata/catalog.golden"

// TestSchemaCatalog compares what the migrations and functions.sql make of a
// fresh database (tables, columns, constraints, indexes, triggers,
// sequences, every function's definition) with testdata/catalog.golden.
// When functions.sql was introduced, the golden was checked against the
// migrations before it (each function defined by the migration that last
// changed it): the same but for ledger_functions. -update rewrites it, and
// refuses a change of the functions under the same revision.
func TestSchemaCatalog(t *testing.T) {
	t.Parallel()
	got := catalog(t, pgtest.NewDatabase(t))
	want, err := os.ReadFile(golden)
	if err != nil && !*update {
		t.Fatal(err)
	}
	if *update {
		if was, now := functionsLine(string(want)), functionsLine(got); was != "" && was != now && revisionOf(was) == revisionOf(now) {
			t.Fatalf("functions.sql changed but functionsRevision did not (%s, was %s): bump it", now, was)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if got != string(want) {
		t.Errorf("the migrated schema differs from %s (after a deliberate change to the migrations or functions.sql, run go test ./migrations -run TestSchemaCatalog -update and review the diff):\n%s",
			golden, lineDiff(string(want), got))
	}
}

// TestEveryVersionUpgradesToTheSameSchema migrates a database to each
// version with tern alone, as a binary of that version left it, then with
// Migrate: each ends with the schema and functions of a fresh database.
func TestEveryVersionUpgradesToTheSameSchema(t *testing.T) {
	t.Parallel()
	want := catalog(t, pgtest.NewDatabase(t))
	names, err := migrate.FindMigrations(migrations.FS())
	if err != nil {
		t.Fatal(err)
	}
	for v := range len(names) {
		t.Run(fmt.Sprintf("from %d", v), func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewEmptyDatabase(t)
			migrateTo(t, url, int32(v))
			if err := migrations.Migrate(context.Background(), url); err != nil {
				t.Fatal(err)
			}
			if got := catalog(t, url); got != want {
				t.Errorf("upgraded from version %d, the schema differs from a fresh one:\n%s", v, lineDiff(want, got))
			}
		})
	}
}

// TestFunctionsRevision checks when Migrate applies functions.sql: over an
// older revision (or none), not over a newer one, and never over the same
// revision with other text.
func TestFunctionsRevision(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	conn := connect(t, url)
	var revision int
	if err := conn.QueryRow(ctx, "SELECT revision FROM ledger_functions").Scan(&revision); err != nil {
		t.Fatal(err)
	}
	// A newer binary's function, as a rolling deploy's first replica leaves it.
	exec(t, conn, `CREATE OR REPLACE FUNCTION ledger_horizon() RETURNS xid8 LANGUAGE sql AS $$ SELECT '7'::xid8 $$`)
	horizon := func() string {
		var h string
		if err := conn.QueryRow(ctx, "SELECT ledger_horizon()::text").Scan(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}

	exec(t, conn, "UPDATE ledger_functions SET revision = revision + 1")
	if err := migrations.Migrate(ctx, url); err != nil {
		t.Fatalf("migrate over a newer revision: %v", err)
	}
	if h := horizon(); h != "7" {
		t.Fatalf("an older binary's migrate replaced the newer functions (ledger_horizon() = %s)", h)
	}
	if err := migrations.Check(ctx, url); err != nil {
		t.Fatalf("check with a newer revision: %v", err)
	}

	exec(t, conn, "UPDATE ledger_functions SET revision = $1, sha256 = '\\x00'", revision)
	if err := migrations.Migrate(ctx, url); err == nil || !strings.Contains(err.Error(), "without bumping functionsRevision") {
		t.Fatalf("migrate over the same revision with other text: err = %v, want a refusal", err)
	}
	if h := horizon(); h != "7" {
		t.Fatalf("the refused migrate changed ledger_horizon() to %s", h)
	}

	exec(t, conn, "DELETE FROM ledger_functions")
	if err := migrations.Check(ctx, url); !errors.Is(err, migrations.ErrNotMigrated) {
		t.Fatalf("check without functions.sql applied: err = %v, want ErrNotMigrated", err)
	}
	if err := migrations.Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	if h := horizon(); h == "7" {
		t.Fatal("migrate did not apply functions.sql over a database without a revision")
	}
	if err := migrations.Check(ctx, url); err != nil {
		t.Fatalf("check after migrate: %v", err)
	}
}

// TestMigrateLeavesANewerSchema: over a schema a newer binary migrated
// (one more migration than this binary has), Migrate succeeds and changes
// nothing, as Check accepts it: an older replica's serve --migrate starts
// during a rolling deploy or after a rollback.
func TestMigrateLeavesANewerSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	conn := connect(t, url)
	exec(t, conn, "UPDATE ledger_schema_version SET version = version + 1")
	want := catalog(t, url)
	if err := migrations.Migrate(ctx, url); err != nil {
		t.Fatalf("migrate over a newer schema: %v", err)
	}
	if got := catalog(t, url); got != want {
		t.Errorf("migrate changed a newer schema:\n%s", lineDiff(want, got))
	}
	if err := migrations.Check(ctx, url); err != nil {
		t.Fatalf("check over a newer schema: %v", err)
	}
}

// TestNoMigrationDefinesAFunctionOfFunctionsSQL: a numbered migration that
// created or replaced a function of functions.sql would be undone by it
// (functions.sql runs after the migrations); change functions.sql instead.
func TestNoMigrationDefinesAFunctionOfFunctionsSQL(t *testing.T) {
	t.Parallel()
	create := regexp.MustCompile(`(?im)^\s*CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)`)
	functions, err := os.ReadFile("functions.sql")
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	for _, m := range create.FindAllStringSubmatch(string(functions), -1) {
		defined[strings.ToLower(m[1])] = true
	}
	if len(defined) == 0 {
		t.Fatal("functions.sql defines no function")
	}
	names, err := migrate.FindMigrations(migrations.FS())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		sql, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range create.FindAllStringSubmatch(string(sql), -1) {
			if defined[strings.ToLower(m[1])] {
				t.Errorf("%s creates %s, which functions.sql defines: change it there and bump functionsRevision", name, m[1])
			}
		}
	}
}

// TestConcurrentMigrate runs Migrate from several processes' worth of
// connections at once on a new database: every one succeeds.
func TestConcurrentMigrate(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = migrations.Migrate(context.Background(), url)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("migrate %d: %v", i, err)
		}
	}
}

// TestMigrateDuringARollingDeploy runs Migrate from an older binary (one
// migration fewer) and a newer one at once, on new databases: both succeed,
// the newer schema stands. Unserialised, the older one could read the
// version before the newer one migrated past it, and tern would then refuse
// to migrate "down" to its own last migration.
func TestMigrateDuringARollingDeploy(t *testing.T) {
	t.Parallel()
	names, err := migrate.FindMigrations(migrations.FS())
	if err != nil {
		t.Fatal(err)
	}
	older := fstest.MapFS{}
	for _, name := range names[:len(names)-1] {
		sql, err := fs.ReadFile(migrations.FS(), name)
		if err != nil {
			t.Fatal(err)
		}
		older[name] = &fstest.MapFile{Data: sql}
	}
	for round := range 6 {
		url := pgtest.NewEmptyDatabase(t)
		var wg sync.WaitGroup
		var olderErr, newerErr error
		wg.Go(func() { olderErr = migrations.MigrateWith(context.Background(), url, older) })
		wg.Go(func() { newerErr = migrations.Migrate(context.Background(), url) })
		wg.Wait()
		if olderErr != nil || newerErr != nil {
			t.Fatalf("round %d: the older binary's migrate: %v; the newer one's: %v", round, olderErr, newerErr)
		}
		if err := migrations.Check(context.Background(), url); err != nil {
			t.Fatalf("round %d: check after both: %v", round, err)
		}
	}
}

func migrateTo(t *testing.T, url string, version int32) {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, url)
	m, err := migrate.NewMigrator(ctx, conn, "ledger_schema_version")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.LoadMigrations(migrations.FS()); err != nil {
		t.Fatal(err)
	}
	if err := m.MigrateTo(ctx, version); err != nil {
		t.Fatalf("migrate to %d: %v", version, err)
	}
}

// catalogQueries describe a database's schema, one line per object, in an
// order that does not depend on how it was built.
var catalogQueries = []string{
	`SELECT 'schema ' || nspname FROM pg_namespace
	  WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' ORDER BY 1`,
	`SELECT format('column %s.%s %s %s %s default %s', c.table_schema, c.table_name, c.column_name, c.data_type,
	              c.is_nullable, coalesce(c.column_default, '-'))
	   FROM information_schema.columns c
	  WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema')
	  ORDER BY c.table_schema, c.table_name, c.ordinal_position`,
	`SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) FROM pg_constraint
	  WHERE connamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
	`SELECT format('index %s', indexdef) FROM pg_indexes
	  WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
	`SELECT format('trigger %s', pg_get_triggerdef(oid)) FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1`,
	`SELECT format('sequence %s.%s %s start %s increment %s cache %s', schemaname, sequencename, data_type,
	              start_value, increment_by, cache_size)
	   FROM pg_sequences ORDER BY 1`,
	`SELECT format('view %s.%s %s', schemaname, viewname, definition) FROM pg_views
	  WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
	`SELECT format('function %s acl %s%s', p.oid::regprocedure, coalesce(p.proacl::text, 'default'), E'\n' || pg_get_functiondef(p.oid))
	   FROM pg_proc p WHERE p.pronamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')
	  ORDER BY p.oid::regprocedure::text`,
	`SELECT format('migrations applied %s', version) FROM ledger_schema_version`,
	`SELECT format('functions.sql revision %s sha256 %s', revision, encode(sha256, 'hex')) FROM ledger_functions`,
}

func catalog(t *testing.T, url string) string {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, url)
	var b strings.Builder
	for _, q := range catalogQueries {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

var functionsRe = regexp.MustCompile(`(?m)^functions\.sql revision (\d+) sha256 \w+$`)

func functionsLine(catalog string) string { return functionsRe.FindString(catalog) }

func revisionOf(line string) string { return functionsRe.FindStringSubmatch(line)[1] }

// lineDiff lists the lines only one of want and got has.
func lineDiff(want, got string) string {
	count := map[string]int{}
	for _, l := range strings.Split(want, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(got, "\n") {
		count[l]--
	}
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if count[l] > 0 {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if count[l] < 0 {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
