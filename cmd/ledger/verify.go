package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
)

func newVerifyCmd(c *cli) *cobra.Command {
	var customer, account string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-prove the event log's hash chains, payload digests and stored signatures",
		Long: `Recompute every hash chain and payload digest of the event log (or of one
customer's stream) and, with STRIPE_WEBHOOK_SECRET set, re-verify every stored
Stripe signature. Exits 1 when a record was altered, removed or reordered.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVerify(cmd.Context(), c, customer, account)
		},
	}
	cmd.Flags().StringVar(&customer, "customer", "", "verify only this customer's stream (cus_…); default: the whole log")
	cmd.Flags().StringVar(&account, "account", "", "the Connect account (acct_…) of --customer")
	return cmd
}

// runVerify recomputes every hash chain and payload digest of the log (or of
// one customer's stream) and, with STRIPE_WEBHOOK_SECRET set, re-verifies
// every stored Stripe signature. It fails when anything does not match.
func runVerify(ctx context.Context, c *cli, customer, account string) error {
	stdout, stderr := c.stdout, c.stderr
	var streams []string
	switch {
	case customer != "":
		stream, err := audit.CustomerStream(customer, account)
		if err != nil {
			return usageError(err.Error())
		}
		streams = []string{stream}
	case account != "":
		return usageError("verify: --account needs --customer")
	}
	cfg, logger, err := c.setup()
	if err != nil {
		return err
	}
	b, err := OpenBackends(ctx, cfg, logger, postgres.WithCompleteReads(auditReadWait)) // a short read would look like the end of the log
	if err != nil {
		return err
	}
	defer b.Close()
	l := b.Log

	total := int64(-1) // one stream: its length is unknown, count instead
	if streams == nil {
		if n, err := l.CountAfter(ctx, eventlog.Start); err == nil {
			total = n
		}
	}
	progress, finish := progressBar(stderr, "verifying", total)
	report, err := audit.Verify(ctx, l, streams, cfg.WebhookSecrets, progress)
	finish()
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if streams != nil && report.Events == 0 {
		return fmt.Errorf("verify: stream %s holds no events: nothing to verify (unknown customer, or every record deleted)", streams[0])
	}
	fmt.Fprintf(stdout, "checked %d stream(s), %d event(s): hash chains and payload digests recomputed\n", report.Streams, report.Events)
	if report.SignaturesTested {
		fmt.Fprintf(stdout, "Stripe signatures re-verified against %d webhook secret(s), timestamps ignored\n", len(cfg.WebhookSecrets))
	} else {
		fmt.Fprintln(stdout, "Stripe signatures NOT checked: STRIPE_WEBHOOK_SECRET is not set")
	}
	for _, p := range report.Problems {
		fmt.Fprintln(stdout, "PROBLEM", p)
	}
	if more := report.ProblemCount - int64(len(report.Problems)); more > 0 {
		fmt.Fprintf(stdout, "… and %d more problem(s) not listed\n", more)
	}
	if !report.OK() {
		return problemError{fmt.Errorf("verification failed: %d problem(s)", report.ProblemCount)}
	}
	fmt.Fprintln(stdout, "OK: no record was altered, removed or reordered")
	return nil
}

// progressBar returns a callback that draws progress on stderr when stderr
// is a terminal (a bar against total, or a counter when total is negative:
// unknown), and a func that ends the drawing. When stderr is not a terminal,
// the callback is nil and nothing is drawn.
func progressBar(stderr io.Writer, description string, total int64) (progress func(done int64), finish func()) {
	f, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, func() {}
	}
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(f),
		progressbar.OptionSetDescription(description),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
	return func(done int64) {
			if total >= 0 && done > bar.GetMax64() { // events appended since the count
				bar.ChangeMax64(done)
			}
			_ = bar.Set64(done)
		}, func() {
			_ = bar.Finish()
		}
}
