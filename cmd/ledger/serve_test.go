package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
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
	stop := startServeCmd(t, env("DATABASE_URL", pgtest.NewDatabase(t), "STRIPE_WEBHOOK_SECRET", "whsec_x",
		"LEDGER_ADDR", "127.0.0.1:0", "LEDGER_LOG_FORMAT", "text"), &logs, func(logs string) bool {
		return strings.Contains(logs, "msg=serving")
	})
	stop()
	if !strings.Contains(logs.String(), `level=WARN msg="LEDGER_API_TOKEN is not set`) {
		t.Errorf("no warning that /v1 is disabled:\n%s", logs.String())
	}
}

// startServeCmd runs `ledger serve` with getenv, its logs to logs, until
// started holds of them; stop ends it and requires a clean exit.
func startServeCmd(t *testing.T, getenv func(string) string, logs *logtest.Buffer, started func(logs string) bool) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, getenv, &bytes.Buffer{}, logs) }()
	deadline := time.After(time.Minute)
	for !started(logs.String()) {
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v\n%s", err, logs.String())
		case <-deadline:
			t.Fatalf("serve did not start:\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve: %v", err)
		}
	}
}

// TestServePprofOnlyWhenAsked: without LEDGER_PPROF_ADDR serve answers no
// /debug/pprof/ anywhere; with it, the profiles are served on that address
// alone, never on the public listener.
func TestServePprofOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, pprofAddr := range []string{"", "127.0.0.1:0"} {
		t.Run("LEDGER_PPROF_ADDR="+pprofAddr, func(t *testing.T) {
			t.Parallel()
			var logs logtest.Buffer
			served := regexp.MustCompile(`msg=serving addr=(\S+)`)
			profiling := regexp.MustCompile(`msg="serving pprof" addr=(\S+)`)
			stop := startServeCmd(t, env("DATABASE_URL", pgtest.NewDatabase(t), "STRIPE_WEBHOOK_SECRET", "whsec_x",
				"LEDGER_ADDR", "127.0.0.1:0", "LEDGER_PPROF_ADDR", pprofAddr, "LEDGER_LOG_FORMAT", "text"), &logs, func(logs string) bool {
				return served.MatchString(logs) && (pprofAddr == "" || profiling.MatchString(logs))
			})
			public := served.FindStringSubmatch(logs.String())[1]
			if code, _ := get("http://" + public + "/debug/pprof/"); code != http.StatusNotFound {
				t.Errorf("the public listener answers /debug/pprof/ with %d, want 404", code)
			}
			profiled := profiling.FindStringSubmatch(logs.String())
			switch {
			case pprofAddr == "" && profiled != nil:
				t.Errorf("pprof is served at %s without LEDGER_PPROF_ADDR", profiled[1])
			case pprofAddr != "" && profiled == nil:
				t.Errorf("no pprof listener logged with LEDGER_PPROF_ADDR=%s:\n%s", pprofAddr, logs.String())
			case pprofAddr != "":
				if code, body := get("http://" + profiled[1] + "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
					t.Errorf("GET /debug/pprof/ on %s: %d %.200q, want 200 and the profile index", profiled[1], code, body)
				}
				if code, body := get("http://" + profiled[1] + "/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
					t.Errorf("GET /debug/pprof/heap on %s: %d %.200q, want 200 and a heap profile", profiled[1], code, body)
				}
			}
			stop()
		})
	}
}

// TestPprofAddr: a host left out of LEDGER_PPROF_ADDR is the loopback one.
func TestPprofAddr(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"": "", ":6060": "127.0.0.1:6060", "0.0.0.0:6060": "0.0.0.0:6060", "[::1]:6060": "[::1]:6060"} {
		if got, err := pprofAddr(in); err != nil || got != want {
			t.Errorf("pprofAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"6060", "localhost", "127.0.0.1:"} {
		if got, err := pprofAddr(bad); err == nil {
			t.Errorf("pprofAddr(%q) = %q, want an error", bad, got)
		}
	}
}
