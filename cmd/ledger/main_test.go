package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// env builds a getenv from pairs.
func env(pairs ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestServeRefusesToStartWithoutWebhookSecret(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"serve"}, env("DATABASE_URL", "postgres://127.0.0.1:1/x"), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "STRIPE_WEBHOOK_SECRET") {
		t.Fatalf("serve without a secret: err = %v, want a refusal naming STRIPE_WEBHOOK_SECRET", err)
	}
}

func TestMigrateCreatesDatabaseAndIsIdempotent(t *testing.T) {
	t.Parallel()
	url := strings.Replace(pgtest.NewDatabase(t), "ledger_test_", "ledger_migrate_", 1)
	ctx := context.Background()
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, pgtest.ServerURL())
		if err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{databaseName(t, url)}.Sanitize()+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	for i := range 2 {
		var out bytes.Buffer
		if err := run(ctx, []string{"migrate"}, env("DATABASE_URL", url), &out, &out); err != nil {
			t.Fatalf("migrate run %d: %v", i, err)
		}
	}
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&n); err != nil || n != 0 {
		t.Fatalf("events table after migrate: n=%d err=%v", n, err)
	}
}

func TestUnknownCommandIsUsageError(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"frobnicate"}, env(), &out, &out)
	if _, ok := err.(usageError); !ok {
		t.Fatalf("err = %v, want a usage error", err)
	}
}

func databaseName(t *testing.T, url string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}
