package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/internal/stripesync"
)

func newBackfillCmd(c *cli) *cobra.Command {
	var (
		since time.Duration
		types []string
	)
	cmd := &cobra.Command{
		Use:   "backfill",
		Short: "Append the events Stripe's Events API holds that the log does not",
		Long: `Page Stripe's /v1/events (STRIPE_API_KEY; Stripe keeps 30 days), newest first, and
append every event the log does not hold yet, through the same dedup as the webhook,
with provenance "backfill" (such events carry no Stripe-Signature: verify counts them
as unsigned by design). An interrupted run resumes where it stopped when run again
with the same --types. Then fetches what pending thin events announce.
Prints a summary: events seen, appended, already stored.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since <= 0 {
				return usageError("backfill: --since must be positive")
			}
			return runBackfill(cmd.Context(), c, since, types)
		},
	}
	cmd.Flags().DurationVar(&since, "since", stripesync.DefaultBackfillWindow, "how far back to ask Stripe for events")
	cmd.Flags().StringSliceVar(&types, "types", nil, "only these event types, comma-separated (at most 20); default every type")
	return cmd
}

func runBackfill(ctx context.Context, c *cli, since time.Duration, types []string) error {
	if len(types) > 20 {
		return usageError(fmt.Sprintf("backfill: --types names %d types; Stripe takes at most 20", len(types)))
	}
	s, closeAll, err := openSyncer(ctx, c)
	if err != nil {
		return err
	}
	defer closeAll()
	progress, finish := estimatedProgressBar(c.stderr, "backfill")
	opts := stripesync.BackfillOptions{Since: since, Types: types}
	if progress != nil {
		opts.Progress = func(p stripesync.BackfillProgress) {
			estimate := p.Seen
			if p.Covered > 0 {
				estimate = int64(float64(p.Seen) / p.Covered)
			}
			progress(p.Seen, estimate)
		}
	}
	sum, err := s.Backfill(ctx, opts)
	finish()
	if sum.Run != 0 {
		resumed := ""
		if sum.Resumed {
			resumed = ", resumed"
		}
		fmt.Fprintf(c.stdout, "backfill run %d (events since %s%s): %d seen, %d appended, %d already stored\n",
			sum.Run, sum.From.Format(time.RFC3339), resumed, sum.Seen, sum.Appended, sum.AlreadyStored)
	}
	if err != nil {
		if sum.Run != 0 {
			fmt.Fprintln(c.stdout, "interrupted: run the same command again to resume")
		}
		return err
	}
	if t := sum.Thin; t.Fetched+t.Failed+t.Nothing > 0 {
		fmt.Fprintf(c.stdout, "thin events: %d fetched (%d appended), %d still pending, %d with nothing to fetch\n",
			t.Fetched, t.Appended, t.Failed, t.Nothing)
	}
	return nil
}

func newReconcileCmd(c *cli) *cobra.Command {
	var (
		opts   stripesync.ReconcileOptions
		format string
	)
	cmd := &cobra.Command{
		Use:   "reconcile",
		Short: "Compare the read model with Stripe's objects and repair the drift",
		Long: `List customers, subscriptions (status=all) and invoices from Stripe's API
(STRIPE_API_KEY), compare them with the read model, and print every field that
differs (object, field, ledger value, Stripe value). Unless --dry-run, append each
differing object as an observed snapshot (ledger.observed.*, provenance
"reconcile", created = when it was fetched), which the projection folds like a
Stripe snapshot: the read model converges to Stripe's state once the projection
(ledger serve) has applied them, and a rebuild reproduces it.
Exits 0 without drift, 1 when drift was found (and repaired unless --dry-run),
2 on error.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if opts.Account != "" && !strings.HasPrefix(opts.Account, "acct_") {
				return usageError(fmt.Sprintf("reconcile: --account %q is not an acct_… id", opts.Account))
			}
			if opts.Customer != "" && !strings.HasPrefix(opts.Customer, "cus_") {
				return usageError(fmt.Sprintf("reconcile: --customer %q is not a cus_… id", opts.Customer))
			}
			return runReconcile(cmd.Context(), c, opts, format)
		},
	}
	cmd.Flags().StringVar(&opts.Customer, "customer", "", "reconcile only this customer (cus_…)")
	cmd.Flags().StringVar(&opts.Account, "account", "", "the Connect account (acct_…) to reconcile; default the platform")
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "report the drift, append nothing")
	cmd.Flags().StringVar(&format, "format", "text", "text or json")
	return cmd
}

func runReconcile(ctx context.Context, c *cli, opts stripesync.ReconcileOptions, format string) error {
	s, closeAll, err := openSyncer(ctx, c)
	if err != nil {
		return err
	}
	defer closeAll()
	rep, err := s.Reconcile(ctx, opts)
	if err != nil {
		return err
	}
	if format == "json" {
		if err := writeJSON(c.stdout, rep); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		if len(rep.Drift) > 0 {
			fmt.Fprintln(tw, "OBJECT\tID\tCUSTOMER\tFIELD\tLEDGER\tSTRIPE")
		}
		for _, d := range rep.Drift {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Object, d.ID, d.Customer, d.Field, d.Ledger, d.Stripe)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "compared %d customer(s), %d subscription(s), %d invoice(s) with Stripe: %d drifting field(s)",
			rep.Customers, rep.Subscriptions, rep.Invoices, len(rep.Drift))
		switch {
		case len(rep.Drift) == 0:
			fmt.Fprintln(c.stdout)
		case opts.DryRun:
			fmt.Fprintln(c.stdout, "; --dry-run: nothing appended")
		default:
			fmt.Fprintf(c.stdout, "; %d observed snapshot(s) appended, applied by the projection\n", rep.Appended)
		}
	}
	if len(rep.Drift) > 0 {
		return problemError{fmt.Errorf("reconcile: %d field(s) drifted from Stripe", len(rep.Drift))}
	}
	return nil
}

// openSyncer opens the backends and the Stripe API client for backfill and
// reconcile, which need STRIPE_API_KEY.
func openSyncer(ctx context.Context, c *cli) (*stripesync.Syncer, func(), error) {
	cfg, logger, err := c.setup()
	if err != nil {
		return nil, nil, err
	}
	if cfg.StripeAPIKey == "" {
		return nil, nil, errors.New("STRIPE_API_KEY is not set: a restricted key with read access to events, customers, subscriptions and invoices is enough")
	}
	b, err := OpenBackends(ctx, cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	s, err := newSyncer(cfg, b, logger)
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return s, b.Close, nil
}
