// Command ledger runs the stripe-ledger service and its operator and auditor
// tools:
//
//	ledger serve                  the webhook endpoint, read API and projections
//	ledger migrate                create the database if missing and apply migrations
//	ledger verify                 re-prove the event log's hash chains, seals and stored signatures
//	ledger seal                   seal the event log now and print the seal's hash
//	ledger projections status|rebuild|diff
//	ledger history                export a customer's events (or --all) as JSON Lines or CSV
//	ledger backfill               append the events Stripe's Events API holds that the log does not
//	ledger reconcile              compare the read model with Stripe's objects and repair the drift
//	ledger events                 the Stripe event types the ledger decodes (to enable on the endpoint)
//	ledger version                this binary's module version and VCS revision
//
// The command line is built with cobra and registered in newRootCmd: a
// command with flags or arguments is one newXxxCmd in its own file; one
// without (migrate, seal, events, version) is a row there, its runXxx in
// its own file; a group (projections, notifications) lists its commands. Configuration comes from the
// environment (DESIGN §6) and is read only when a command runs, so --help
// works whatever the environment holds; see the README.
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

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
	}
	os.Exit(exitCode(err))
}

// Exit codes: 0 ok, 1 the command ran and found a problem (problemError),
// 2 bad usage or the command could not run.
const (
	exitOK      = 0
	exitProblem = 1
	exitFailed  = 2
)

// usageError is a command line the ledger refuses before running anything.
type usageError string

func (e usageError) Error() string { return string(e) }

// problemError is a command that ran to the end and found something wrong
// (a diff with changes, a tampered log): exit 1.
type problemError struct{ error }

func (e problemError) Unwrap() error { return e.error }

func exitCode(err error) int {
	var problem problemError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &problem):
		return exitProblem
	}
	return exitFailed
}

// cli is what every command shares: the process's environment and output,
// and the configuration, read on first use.
type cli struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	started        bool // a command's RunE began: later errors are not usage errors
}

// setup reads the configuration and builds the logger for a command that
// is about to run.
func (c *cli) setup() (Config, *slog.Logger, error) {
	cfg, err := LoadConfig(c.getenv)
	if err != nil {
		return Config{}, nil, err
	}
	logger, err := newLogger(c.stderr, c.getenv)
	if err != nil {
		return Config{}, nil, err
	}
	return cfg, logger, nil
}

// backends is setup, then OpenBackends: what most commands start with.
// The caller closes the backends.
func (c *cli) backends(ctx context.Context) (*Backends, Config, *slog.Logger, error) {
	cfg, logger, err := c.setup()
	if err != nil {
		return nil, Config{}, nil, err
	}
	b, err := OpenBackends(ctx, cfg, logger)
	return b, cfg, logger, err
}

// run executes a command line; tests call it as main does.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c := &cli{getenv: getenv, stdout: stdout, stderr: stderr}
	root := newRootCmd(c)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var usage usageError
	if err != nil && !c.started && !errors.As(err, &usage) {
		// cobra's own refusals (unknown command or flag, wrong arguments).
		err = usageError(err.Error())
	}
	return err
}

func newRootCmd(c *cli) *cobra.Command {
	root := &cobra.Command{
		Use:   "ledger",
		Short: "An audit-grade ledger of Stripe billing events",
		Long: `ledger stores every verified Stripe webhook event in an append-only, hash-chained
log and projects it into a read model of customers, subscriptions and invoices.

Configuration comes from the environment (DATABASE_URL, STRIPE_WEBHOOK_SECRET,
LEDGER_EVENTLOG, LEDGER_ADDR, LEDGER_API_TOKEN, LEDGER_PLANS, LEDGER_SEAL_INTERVAL,
LEDGER_LOG_LEVEL, LEDGER_LOG_FORMAT, STRIPE_API_KEY, STRIPE_API_BASE,
LEDGER_RECONCILE_INTERVAL); see the README.

Exit codes: 0 ok, 1 the command found a problem (projections diff found changes,
verify found tampering, reconcile found drift), 2 bad usage or the command could not run.`,
		Args:              noArgs,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(*cobra.Command, []string) error { c.started = true; return nil },
		RunE:              c.missingCommand,
	}
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err.Error()) })
	root.AddCommand(
		newServeCmd(c),
		plainCmd("migrate", "Create the database if missing and apply the schema migrations", "", c.runMigrate),
		newVerifyCmd(c),
		plainCmd("seal", "Seal the event log now and print the new seal's id and hash", sealHelp, c.runSeal),
		c.group("projections", "Where each projection stands; rebuild it blue/green; diff a rebuild against the live model",
			newProjectionsStatusCmd(c),
			newProjectionsBuildCmd(c, "rebuild", "Rebuild a projection blue/green from the whole log, then swap it live"),
			newProjectionsBuildCmd(c, "diff", "Show, without swapping, what a rebuild with this binary's logic would change (exit 1 when it would)"),
			newProjectionsDeadLettersCmd(c), newProjectionsRetryCmd(c)),
		c.group("notifications", "Where each push receiver of LEDGER_NOTIFY_URL stands; send notifications again",
			newNotificationsStatusCmd(c), newNotificationsReplayCmd(c)),
		newHistoryCmd(c),
		newBackfillCmd(c),
		newReconcileCmd(c),
		plainCmd("events", "List the Stripe event types the ledger decodes: the ones to enable on the webhook endpoint", "", c.runEvents),
		plainCmd("version", "Print the module version and VCS revision this binary was built from", "", c.runVersion),
	)
	return root
}

// plainCmd is a command that takes neither arguments nor flags of its own
// and runs run.
func plainCmd(use, short, long string, run func(context.Context) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return run(cmd.Context()) },
	}
}

// group is a command that only groups subs (ledger projections, ledger
// notifications); run alone, it is missingCommand.
func (c *cli) group(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noArgs,
		RunE:  c.missingCommand,
	}
	cmd.AddCommand(subs...)
	return cmd
}

// missingCommand is the RunE of a command that only groups others (ledger,
// ledger projections) run without one: it prints the command's help on
// stderr and exits 2, since a script that ran it meant to run something.
func (c *cli) missingCommand(cmd *cobra.Command, _ []string) error {
	cmd.SetOut(c.stderr)
	_ = cmd.Help()
	if cmd.HasParent() {
		return usageError(cmd.Name() + ": no command given (see the list above)")
	}
	return usageError("no command given (see the list above)")
}

// noArgs refuses positional arguments, naming the first one.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		if cmd.HasSubCommands() {
			return usageError(fmt.Sprintf("%s: unknown command %q", cmd.CommandPath(), args[0]))
		}
		return usageError(fmt.Sprintf("%s: unexpected argument %q", cmd.CommandPath(), args[0]))
	}
	return nil
}
