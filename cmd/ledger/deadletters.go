package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// newProjectionsDeadLettersCmd is `ledger projections dead-letters`.
func newProjectionsDeadLettersCmd(c *cli) *cobra.Command {
	return newListCmd(c, "dead-letters", "List the events the live projections could not apply, with the reason",
		"PROJECTION\tEVENT\tTYPE\tPOSITION\tRECORDED\tREASON",
		func(ctx context.Context, b *Backends) ([]report.DeadLetter, error) {
			return projections.ReadDeadLetters(ctx, b.Pool)
		},
		func(l report.DeadLetter) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", l.Projection, l.EventID, l.EventType, l.Position,
				l.RecordedAt.UTC().Format("2006-01-02T15:04:05Z"), l.Error)
		})
}

// newListCmd is a command that prints the rows read reads: a table under
// header, one row per line, or with --format json a JSON array.
func newListCmd[T any](c *cli, use, short, header string, read func(context.Context, *Backends) ([]T, error), row func(T) string) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			b, _, _, err := c.backends(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			rows, err := read(cmd.Context(), b)
			if err != nil {
				return err
			}
			if format == "json" {
				return writeJSON(c.stdout, append([]T{}, rows...))
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, header)
			for _, r := range rows {
				fmt.Fprintln(tw, row(r))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output: text or json")
	return cmd
}

// newProjectionsRetryCmd is `ledger projections retry EVT_ID…|--all`.
func newProjectionsRetryCmd(c *cli) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "retry EVT_ID... | --all",
		Short: "Apply dead-lettered events again after a fix (exit 1 when some fail again)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return usageError("projections retry: give event ids or --all, not both or neither")
			}
			b, cfg, logger, err := c.backends(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			res, err := projections.Retry(cmd.Context(), b.Pool, b.Log, projections.Billing(cfg.Plans), logger, args...)
			if err != nil {
				return err
			}
			for _, id := range res.Applied {
				fmt.Fprintf(c.stdout, "applied %s\n", id)
			}
			for _, id := range res.DeadLettered {
				fmt.Fprintf(c.stdout, "dead-lettered again %s\n", id)
			}
			if len(res.DeadLettered) > 0 {
				return problemError{fmt.Errorf("projections retry: %d event(s) still cannot be applied", len(res.DeadLettered))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "retry every dead letter of the live version")
	return cmd
}
