// Package migrations holds the numbered SQL migrations of the ledger's
// PostgreSQL schema (event log and read model), embedded into the binary, and
// applies them with tern. Every package's tables are numbered here, the esdb
// backend's guard (003, 011, 012) included, because tern applies one gapless
// sequence per database; each file's header names the package that owns its
// tables (docs/operations.md lists them).
package migrations

import (
	"context"
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

// FS returns the embedded migration files.
func FS() fs.FS { return files }

// Migrate creates the database named in databaseURL when it does not exist,
// then applies every pending migration. It is idempotent and safe to run from
// several processes at once (tern serialises them with an advisory lock).
func Migrate(ctx context.Context, databaseURL string) error {
	if err := CreateDatabase(ctx, databaseURL); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Close(ctx)
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := m.LoadMigrations(files); err != nil {
		return fmt.Errorf("migrate: load: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
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
// databaseURL exists and has every embedded migration applied. It fails
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
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		return err
	}
	if version < len(names) {
		return fmt.Errorf("database %q has %d of the %d migrations this binary needs: %w", cfg.Database, version, len(names), ErrNotMigrated)
	}
	return nil
}
