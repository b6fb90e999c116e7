package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
)

// runVerify recomputes every hash chain and payload digest of the log (or of
// one customer's stream) and, with STRIPE_WEBHOOK_SECRET set, re-verifies
// every stored Stripe signature. It fails when anything does not match.
func runVerify(ctx context.Context, cfg Config, logger *slog.Logger, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	customer := fs.String("customer", "", "verify only this customer's stream (cus_…); default: the whole log")
	account := fs.String("account", "", "the Connect account (acct_…) of --customer")
	if err := fs.Parse(args); err != nil {
		return usageError(err.Error())
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Sprintf("verify: unexpected argument %q", fs.Arg(0)))
	}
	var streams []string
	switch {
	case *customer != "":
		stream, err := audit.CustomerStream(*customer, *account)
		if err != nil {
			return usageError(err.Error())
		}
		streams = []string{stream}
	case *account != "":
		return usageError("verify: --account needs --customer")
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
		return fmt.Errorf("verification failed: %d problem(s)", report.ProblemCount)
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
