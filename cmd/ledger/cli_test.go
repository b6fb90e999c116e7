package main

import (
	"bytes"
	"context"
	"errors"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// commandPaths lists every command and subcommand of the ledger, cobra's
// help and completion commands included, as argument lists.
func commandPaths(t *testing.T) [][]string {
	t.Helper()
	root := newRootCmd(&cli{getenv: env(), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}})
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var paths [][]string
	var walk func(cmd *cobra.Command, path []string)
	walk = func(cmd *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range cmd.Commands() {
			walk(sub, append(append([]string(nil), path...), sub.Name()))
		}
	}
	walk(root, nil)
	if len(paths) < 10 {
		t.Fatalf("found only %d commands: %v", len(paths), paths)
	}
	return paths
}

// absentDatabase is the URL of a database that does not exist; the test
// fails at its end if something created it.
func absentDatabase(t *testing.T) string {
	t.Helper()
	url := strings.Replace(pgtest.NewDatabase(t), "ledger_test_", "ledger_absent_", 1)
	name := databaseName(t, url)
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, pgtest.ServerURL())
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close(ctx)
		var exists bool
		if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
			t.Error(err)
		}
		if exists {
			_, _ = c.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			t.Errorf("database %s was created by a command that should have run nothing", name)
		}
	})
	return url
}

// TestEveryHelpExitsZeroAndRunsNothing asks every command for --help (and
// -h, and `ledger help <command>`) with an environment no command could run
// with, against a database that does not exist: help is printed once, the
// exit code is 0, and the database is still absent afterwards.
func TestEveryHelpExitsZeroAndRunsNothing(t *testing.T) {
	t.Parallel()
	getenv := env("DATABASE_URL", absentDatabase(t), "LEDGER_PLANS", "bad", "LEDGER_EVENTLOG", "nonsense", "LEDGER_LOG_LEVEL", "loud")
	for _, path := range commandPaths(t) {
		lines := [][]string{append(append([]string(nil), path...), "--help"), append(append([]string(nil), path...), "-h")}
		if len(path) > 0 && path[0] != "help" {
			lines = append(lines, append([]string{"help"}, path...))
		}
		for _, args := range lines {
			var out, errOut bytes.Buffer
			err := run(context.Background(), args, getenv, &out, &errOut)
			if err != nil || exitCode(err) != 0 {
				t.Errorf("%v: err = %v (exit %d), want exit 0", args, err, exitCode(err))
			}
			if n := strings.Count(out.String(), "Usage:"); n != 1 {
				t.Errorf("%v: usage printed %d times on stdout:\n%s", args, n, out.String())
			}
			if errOut.Len() != 0 {
				t.Errorf("%v: wrote to stderr: %s", args, errOut.String())
			}
		}
	}
}

// TestUnknownFlagsAndStrayArgumentsExitTwo gives every command a flag it
// does not have, and every command that takes no argument a stray one:
// each is refused as a usage error (exit 2) before anything runs.
func TestUnknownFlagsAndStrayArgumentsExitTwo(t *testing.T) {
	t.Parallel()
	getenv := env("DATABASE_URL", absentDatabase(t), "STRIPE_WEBHOOK_SECRET", "whsec_x")
	var lines [][]string
	for _, path := range commandPaths(t) {
		lines = append(lines, append(append([]string(nil), path...), "--no-such-flag"))
	}
	lines = append(lines,
		[]string{"frobnicate"},
		[]string{"serve", "stray"},
		[]string{"migrate", "stray"},
		[]string{"migrate", "--dry-run"},
		[]string{"version", "stray"},
		[]string{"verify", "stray"},
		[]string{"projections"},
		[]string{"projections", "bogus"},
		[]string{"projections", "status", "stray"},
		[]string{"projections", "status", "--wait"},
		[]string{"projections", "status", "--format", "xml"},
		[]string{"projections", "rebuild", "billing", "extra"},
		[]string{"projections", "diff", "--format", "yaml"},
		[]string{"projections", "dead-letters", "stray"},
		[]string{"projections", "dead-letters", "--format", "xml"},
		[]string{"projections", "retry"},
		[]string{"projections", "retry", "evt_1", "--all"},
		[]string{"history", "cus_1", "--since", "2026-11-02", "--until", "2026-11-01"},
		[]string{"history", "cus_1", "--since", "2026-11-01T10:00:00Z", "--until", "2026-11-01T09:00:00Z"},
		[]string{"history", "cus_1", "--until", "yesterday"},
	)
	for _, args := range lines {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, getenv, &out, &errOut)
		if !isUsage(err) || exitCode(err) != 2 {
			t.Errorf("%v: err = %v (exit %d), want a usage error, exit 2", args, err, exitCode(err))
		}
		if out.Len() != 0 {
			t.Errorf("%v: wrote to stdout: %s", args, out.String())
		}
	}
}

// TestMissingCommandPrintsHelp runs the ledger, and each command that only
// groups others, without a command: the help goes to stderr, once, and the
// exit code is 2 (a usage error).
func TestMissingCommandPrintsHelp(t *testing.T) {
	t.Parallel()
	getenv := env("DATABASE_URL", absentDatabase(t), "LEDGER_PLANS", "bad")
	for _, tc := range []struct {
		args []string
		want string // a line of the help
	}{
		{nil, "ledger [command]"},
		{[]string{"projections"}, "ledger projections [command]"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), tc.args, getenv, &out, &errOut)
		if !isUsage(err) || exitCode(err) != 2 {
			t.Errorf("%v: err = %v (exit %d), want a usage error, exit 2", tc.args, err, exitCode(err))
		}
		if n := strings.Count(errOut.String(), "Usage:"); n != 1 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: stderr has the usage %d times, want once with %q:\n%s", tc.args, n, tc.want, errOut.String())
		}
		if out.Len() != 0 {
			t.Errorf("%v: wrote to stdout: %s", tc.args, out.String())
		}
	}
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{problemError{errors.New("tampered")}, 1},
		{usageError("bad flag"), 2},
		{errors.New("database unreachable"), 2},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestConfigErrorsNameTheVariableOnce(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"migrate"}, env("LEDGER_PLANS", "price_1"), &out, &out)
	if err == nil || err.Error() != `LEDGER_PLANS: entry "price_1" is not price_id=plan` || exitCode(err) != 2 {
		t.Fatalf("err = %v (exit %d), want the LEDGER_PLANS message, once, exit 2", err, exitCode(err))
	}
	for _, v := range []string{"LEDGER_LOG_LEVEL", "LEDGER_LOG_FORMAT"} {
		err := run(context.Background(), []string{"migrate"}, env(v, "loud"), &out, &out)
		if err == nil || !strings.HasPrefix(err.Error(), v+" must be") {
			t.Errorf("%s=loud: err = %v, want a refusal naming %s", v, err, v)
		}
	}
}

func TestVersionPrintsBuildInfo(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, env(), &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "ledger ") || !strings.Contains(out.String(), " go1.") {
		t.Errorf("ledger version printed %q", out.String())
	}

	out.Reset()
	writeVersion(&out, &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-11-01T09:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}})
	if want := "ledger v1.2.3 revision 0123abcd (modified) committed 2026-11-01T09:00:00Z go1.26.8\n"; out.String() != want {
		t.Errorf("writeVersion = %q, want %q", out.String(), want)
	}
}

func TestParseTimeFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		value    string
		endOfDay bool
		want     time.Time
	}{
		{"2026-11-01T09:30:00Z", false, time.Date(2026, 11, 1, 9, 30, 0, 0, time.UTC)},
		{"2026-11-01T09:30:00+02:00", true, time.Date(2026, 11, 1, 7, 30, 0, 0, time.UTC)},
		{"2026-11-01", false, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-11-01", true, time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)},
	} {
		got, err := parseTimeFlag("--since", tc.value, tc.endOfDay)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseTimeFlag(%q, %v) = %v, %v; want %v", tc.value, tc.endOfDay, got, err, tc.want)
		}
	}
	if _, err := parseTimeFlag("--since", "last week", false); !isUsage(err) || !strings.Contains(err.Error(), "--since") {
		t.Errorf("bad value: err = %v, want a usage error naming the flag", err)
	}
}

func TestLoggerWritesDurationsAsStringsAtTheConfiguredLevel(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	logger, err := newLogger(&out, env("LEDGER_LOG_LEVEL", "warn"))
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("hidden")
	logger.Warn("retrying", "retry_in", 1500*time.Millisecond)
	if got := out.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `"retry_in":"1.5s"`) || strings.Count(got, "\n") != 1 {
		t.Errorf("log = %q, want one WARN JSON line with retry_in \"1.5s\"", got)
	}
}
