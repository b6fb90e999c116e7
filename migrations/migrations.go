// Package migrations holds the numbered SQL migrations of the ledger's
// PostgreSQL schema (event log and read model), embedded into the binary, and
// applies them with tern. Every package's tables are numbered here, the esdb
// backend's guard (003, 011, 012) included, because tern applies one gapless
// sequence per database; each file's header names the package that owns its
// tables (docs/operations.md lists them).
//
// The SQL functions are not numbered migrations: functions.sql defines each
// as it is now, and Migrate applies it after the migrations whenever
// functionsRevision is newer than the revision the database records, so a
// function's definition stands in one place, not once per change.
package migrations

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed *.sql
var files embed.FS

// versionTable records which migrations have run.
const versionTable = "ledger_schema_version"

// functionsRevision numbers the text of functions.sql: bump it with every
// change to that file. A database records the revision it has
// (ledger_functions, migration 015); Migrate applies functions.sql only over
// an older one, so an older binary that migrates during a rolling deploy (or
// after a rollback) leaves the newer functions in place, as it leaves a
// newer schema. TestSchemaCatalog fails on a change without a bump.
const functionsRevision = 5

//go:embed functions.sql
var functionsSQL []byte

// functionsLock is the advisory lock (0x4c46554e 'LFUN') that serialises
// the processes applying functions.sql: concurrent CREATE OR REPLACE of one
// function fails ("tuple concurrently updated"). migrateLock covers it now;
// it stays for the binaries from before migrateLock, which take only it.
const functionsLock = 1279677774

// migrateLock is the advisory lock (0x4c4d4947 'LMIG') that Migrate holds
// from its first look at the schema version to its last statement. Tern
// locks each of its own steps, not the whole: an older binary (a rolling
// deploy) could read the version, let a newer one migrate past it, then
// ask tern to migrate to its own last migration, which tern refuses
// ("current version … is outside the valid versions").
const migrateLock = 1280133447

// FS returns the embedded migration files.
func FS() fs.FS { return files }

// Migrate creates the database named in databaseURL when it does not exist,
// then applies every pending migration, then functions.sql when the database
// has an older revision of it. It is idempotent and safe to run from several
// processes at once, also of different binaries (migrateLock serialises
// them; a binary from before migrateLock still races with the others).
func Migrate(ctx context.Context, databaseURL string) error {
	return migrateWith(ctx, databaseURL, files)
}

// migrateWith is Migrate applying the numbered migrations of fsys (tests
// give it an older binary's).
func migrateWith(ctx context.Context, databaseURL string, fsys fs.FS) error {
	if err := CreateDatabase(ctx, databaseURL); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Close(ctx)
	// A session lock, released by closing the connection; tern's own locks
	// nest in it.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrateLock); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := m.LoadMigrations(fsys); err != nil {
		return fmt.Errorf("migrate: load: %w", err)
	}
	// A schema newer than this binary's (a newer binary migrated it: a
	// rolling deploy, a rollback) is left as it is, as Check accepts it;
	// tern would refuse it ("current version … is outside the valid
	// versions"), and an older replica's serve --migrate would not start.
	current, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if int(current) <= len(m.Migrations) {
		if err := m.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	if err := applyFunctions(ctx, conn); err != nil {
		return fmt.Errorf("migrate: functions.sql: %w", err)
	}
	return nil
}

// applyFunctions runs functions.sql in one transaction unless the database
// has its revision, or a newer one, already. The same revision with other
// text is refused: two builds disagree about what it holds, and one would
// silently replace the other's functions.
func applyFunctions(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", functionsLock); err != nil {
		return err
	}
	sum := sha256.Sum256(functionsSQL)
	var revision int
	var applied []byte
	err = tx.QueryRow(ctx, "SELECT revision, sha256 FROM ledger_functions").Scan(&revision, &applied)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return err
	case revision > functionsRevision:
		return nil // a newer binary's: leave them
	case revision == functionsRevision && bytes.Equal(applied, sum[:]):
		return nil
	case revision == functionsRevision:
		return fmt.Errorf("the database has revision %d with other text than this binary's: a build changed functions.sql without bumping functionsRevision", revision)
	}
	if _, err := tx.Exec(ctx, string(functionsSQL)); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ledger_functions (revision, sha256) VALUES ($1, $2)
ON CONFLICT (singleton) DO UPDATE SET revision = excluded.revision, sha256 = excluded.sha256, applied_at = excluded.applied_at`,
		functionsRevision, sum[:]); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// CreateDatabase creates the database named in databaseURL if it is missing,
// connecting to the server's "postgres" maintenance database to do so.
func CreateDatabase(ctx context.Context, databaseURL string) error {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	name := cfg.Database
	if name == "" {
		return errors.New("DATABASE_URL names no database")
	}
	admin := cfg.Copy()
	admin.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return fmt.Errorf("connect to create database %q: %w", name, err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %q: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // created concurrently by another process
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %q: %w", name, err)
	}
	return nil
}

// ErrNotMigrated reports a database that is missing, or whose schema is
// behind the migrations this binary embeds.
var ErrNotMigrated = errors.New("run `ledger migrate` (or `ledger serve --migrate`) first")

// Check reports, without changing anything, whether the database named in
// databaseURL exists and has every embedded migration applied, and
// functions.sql at this binary's revision or a newer one. It fails
// with an error wrapping ErrNotMigrated when it does not, and with another
// error when the server cannot be asked. A schema newer than this binary
// passes: during a rolling upgrade the new binary migrates first.
func Check(ctx context.Context, databaseURL string) error {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "3D000" { // invalid_catalog_name
		return fmt.Errorf("database %q does not exist: %w", cfg.Database, ErrNotMigrated)
	}
	if err != nil {
		return fmt.Errorf("connect to database %q: %w", cfg.Database, err)
	}
	defer conn.Close(ctx)
	var version int
	err = conn.QueryRow(ctx, `SELECT COALESCE((SELECT version FROM `+versionTable+`), 0)`).Scan(&version)
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: never migrated
		version, err = 0, nil
	}
	if err != nil {
		return fmt.Errorf("read schema version of database %q: %w", cfg.Database, err)
	}
	names, err := migrate.FindMigrations(files)
	if err != nil {
		return err
	}
	if version < len(names) {
		return fmt.Errorf("database %q has %d of the %d migrations this binary needs: %w", cfg.Database, version, len(names), ErrNotMigrated)
	}
	var revision int
	err = conn.QueryRow(ctx, `SELECT coalesce((SELECT revision FROM ledger_functions), 0)`).Scan(&revision)
	if err != nil {
		return fmt.Errorf("read the functions revision of database %q: %w", cfg.Database, err)
	}
	if revision < functionsRevision {
		return fmt.Errorf("database %q has revision %d of the SQL functions, this binary needs %d: %w", cfg.Database, revision, functionsRevision, ErrNotMigrated)
	}
	return nil
}
