package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/logtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/migrations"
)

// TestServeRefusesMissingOrUnmigratedDatabase: serve without --migrate on a
// database that does not exist, or whose schema is behind the binary,
// exits 2 with a message saying what to run, and creates nothing.
func TestServeRefusesMissingOrUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	behind := pgtest.NewDatabase(t)
	c, err := pgx.Connect(ctx, behind)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, `UPDATE ledger_schema_version SET version = version - 1`)
	c.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, url := range map[string]string{"missing": absentDatabase(t), "behind": behind} {
		var out, errOut bytes.Buffer
		err := run(ctx, []string{"serve"}, env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", "whsec_x", "LEDGER_ADDR", "127.0.0.1:0"), &out, &errOut)
		if !errors.Is(err, migrations.ErrNotMigrated) || exitCode(err) != 2 || !strings.Contains(err.Error(), "ledger migrate") {
			t.Errorf("%s database: err = %v (exit %d), want a refusal that says to run ledger migrate, exit 2", name, err, exitCode(err))
		}
		if strings.Contains(errOut.String(), "serving") {
			t.Errorf("%s database: serve logged that it was serving:\n%s", name, errOut.String())
		}
	}
}

// TestServeWarnsWhenReadAPIDisabled starts serve without LEDGER_API_TOKEN,
// text logs, and stops it once it serves.
func TestServeWarnsWhenReadAPIDisabled(t *testing.T) {
	t.Parallel()
	var logs logtest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve"}, env("DATABASE_URL", pgtest.NewDatabase(t), "STRIPE_WEBHOOK_SECRET", "whsec_x",
			"LEDGER_ADDR", "127.0.0.1:0", "LEDGER_LOG_FORMAT", "text"), &bytes.Buffer{}, &logs)
	}()
	deadline := time.After(time.Minute)
	for !strings.Contains(logs.String(), "msg=serving") {
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v\n%s", err, logs.String())
		case <-deadline:
			t.Fatalf("serve did not start:\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if !strings.Contains(logs.String(), `level=WARN msg="LEDGER_API_TOKEN is not set`) {
		t.Errorf("no warning that /v1 is disabled:\n%s", logs.String())
	}
}
