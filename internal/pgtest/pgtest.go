// Package pgtest gives tests a real, throwaway PostgreSQL database with the
// ledger's migrations applied. The server comes from LEDGER_TEST_DATABASE_URL
// (default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/migrations"
)

// ServerURL is the URL of the server tests create their databases on.
func ServerURL() string {
	if u := os.Getenv("LEDGER_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

var template struct {
	once sync.Once
	name string
	err  error
}

// NewDatabase creates a uniquely named, migrated database, drops it when the
// test ends, and returns its URL. Databases are cloned from a template that is
// migrated once per test binary, so each costs one CREATE DATABASE.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	ctx := context.Background()
	template.once.Do(func() {
		template.name = "ledger_tmpl_" + randomSuffix()
		template.err = migrations.Migrate(ctx, urlFor(tb, template.name))
	})
	if template.err != nil {
		tb.Fatalf("pgtest: migrate template database: %v", template.err)
	}
	name := "ledger_test_" + randomSuffix()
	admin := connect(tb, ServerURL())
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+template.name); err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	dropWhenDone(tb, name)
	return urlFor(tb, name)
}

// NewEmptyDatabase creates a uniquely named database without any migration,
// drops it when the test ends, and returns its URL: for tests of the
// migrations themselves.
func NewEmptyDatabase(tb testing.TB) string {
	tb.Helper()
	ctx := context.Background()
	name := "ledger_empty_" + randomSuffix()
	admin := connect(tb, ServerURL())
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	dropWhenDone(tb, name)
	return urlFor(tb, name)
}

func dropWhenDone(tb testing.TB, name string) {
	tb.Cleanup(func() {
		ctx := context.Background()
		c := connect(tb, ServerURL())
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
}

// NewPool opens a pool on a fresh database from NewDatabase, closed when the test ends.
func NewPool(tb testing.TB) (*pgxpool.Pool, string) {
	tb.Helper()
	url := NewDatabase(tb)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		tb.Fatalf("pgtest: open pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool, url
}

// AsSuperuser runs sql in one transaction with triggers off
// (session_replication_role = replica), as a superuser who wants to get past
// the append-only triggers would: tests simulate tampering with it. The
// server's role must be a superuser (the default postgres is).
func AsSuperuser(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	tb.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, sql, args...)
		return err
	})
	if err != nil {
		tb.Fatalf("pgtest: as superuser: %s: %v", sql, err)
	}
}

// Main runs a package's tests and then drops the template database. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if template.name != "" {
		dropTemplate()
	}
	return code
}

func dropTemplate() {
	ctx := context.Background()
	c, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		return
	}
	defer c.Close(ctx)
	_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+template.name+" WITH (FORCE)")
}

// urlFor is ServerURL with its database replaced by database.
func urlFor(tb testing.TB, database string) string {
	u, err := url.Parse(ServerURL())
	if err != nil {
		tb.Fatalf("pgtest: parse %s: %v", ServerURL(), err)
	}
	u.Path = "/" + database
	return u.String()
}

func connect(tb testing.TB, url string) *pgx.Conn {
	c, err := pgx.Connect(context.Background(), url)
	if err != nil {
		tb.Fatalf("pgtest: connect %s: %v", url, err)
	}
	return c
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
