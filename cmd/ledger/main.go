// Command ledger runs the stripe-ledger service and its operator and auditor
// tools:
//
//	ledger serve                  the webhook endpoint, read API and projections
//	ledger migrate                create the database if missing and apply migrations
//	ledger verify                 re-prove the event log's hash chains and stored signatures
//	ledger projections status|rebuild|diff
//	ledger history                export a customer's events (or --all) as JSON Lines or CSV
//
// Configuration comes from the environment (DESIGN §6); see the README.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	var usage usageError
	switch {
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "ledger:", err)
		fmt.Fprint(os.Stderr, usageText)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "ledger:", err)
		os.Exit(1)
	}
}

const usageText = `usage: ledger <command> [flags]

commands:
  serve      run the webhook endpoint, the read API and the projections
  migrate    create the database if missing and apply the schema migrations
  verify     [--customer cus_… [--account acct_…]]
             recompute every hash chain and payload digest of the event log and, with
             STRIPE_WEBHOOK_SECRET set, re-verify every stored Stripe signature; exits 1 on a mismatch
  projections status | rebuild [billing] [--wait] | diff [billing] [--format text|json]
             where each projection stands; rebuild it blue/green from the whole log; or show,
             without swapping, what a rebuild with this binary's logic would change
  history    cus_… [--account acct_…] | --all   [--format jsonl|csv] [--since RFC3339] [--until RFC3339]
             export a customer's events (--all: every event) to stdout, payloads byte for byte
`

type usageError string

func (e usageError) Error() string { return string(e) }

// run dispatches a command line; tests call it as main does.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("no command given")
	}
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	switch args[0] {
	case "serve":
		return runServe(ctx, cfg, logger, args[1:])
	case "migrate":
		return runMigrate(ctx, cfg, stdout)
	case "verify":
		return runVerify(ctx, cfg, logger, args[1:], stdout, stderr)
	case "projections":
		return runProjections(ctx, cfg, logger, args[1:], stdout, stderr)
	case "history":
		return runHistory(ctx, cfg, logger, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	}
	return usageError(fmt.Sprintf("unknown command %q", args[0]))
}
