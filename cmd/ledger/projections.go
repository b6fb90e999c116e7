package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/gctune"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// newProjectionsStatusCmd is `ledger projections status`.
func newProjectionsStatusCmd(c *cli) *cobra.Command {
	return newListCmd(c, "status", "Show each projection's version, position, lag and dead letters",
		"NAME\tVERSION\tPOSITION\tHEAD\tLAG\tDEAD LETTERS\tUPDATED\tPLANS\tUNTESTED API VERSIONS",
		func(ctx context.Context, b *Backends) ([]report.Status, error) {
			return projections.ReadStatus(ctx, b.Pool, b.Log)
		},
		func(s report.Status) string {
			plans := "(not recorded)"
			if s.Plans != nil {
				plans = *s.Plans
			}
			var untested []string
			for _, v := range s.APIVersions {
				if !v.Tested {
					untested = append(untested, v.Version)
				}
			}
			return fmt.Sprintf("%s\t%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s", s.Name, s.Version, s.Position, s.Head, s.Lag, s.DeadLetters,
				s.UpdatedAt.UTC().Format("2006-01-02T15:04:05Z"), plans, cmp.Or(strings.Join(untested, ","), "-"))
		})
}

// newProjectionsBuildCmd is `ledger projections rebuild` or `ledger
// projections diff` (sub): a blue/green build, swapped live or compared
// with the live model.
func newProjectionsBuildCmd(c *cli, sub, short string) *cobra.Command {
	var wait bool
	format := "text"
	cmd := &cobra.Command{
		Use:   sub + " [billing]",
		Short: short,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBuild(cmd.Context(), c, sub, args, wait, format)
		},
	}
	if sub == "diff" {
		cmd.Flags().StringVar(&format, "format", "text", "output: text or json")
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for a build in progress elsewhere instead of failing")
	return cmd
}

// runBuild runs a rebuild or a diff of the projection args names (default:
// billing) with a progress bar on a terminal.
func runBuild(ctx context.Context, c *cli, sub string, args []string, wait bool, format string) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	cfg, logger, err := c.setup()
	if err != nil {
		return err
	}
	p := projections.Billing(cfg.Plans)
	if len(args) == 1 && args[0] != p.Name {
		return usageError(fmt.Sprintf("projections %s: unknown projection %q (known: %s)", sub, args[0], p.Name))
	}
	b, err := OpenBackends(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer b.Close()
	defer gctune.Headroom(projections.BuildGCHeadroom)()
	total, err := b.Log.CountAfter(ctx, eventlog.Start)
	if err != nil {
		return err
	}
	progress, finish := progressBar(c.stderr, sub+" "+p.Name, total)
	opts := projections.Options{Logger: logger, Wait: wait}
	if progress != nil {
		opts.Progress = func(pr projections.Progress) { progress(pr.Done) }
	}
	if sub == "rebuild" {
		built, err := projections.Rebuild(ctx, b.Pool, b.Log, p, opts)
		finish()
		if err == nil {
			fmt.Fprintf(c.stdout, "projection %s version %d rebuilt and live; %d new notifications\n", p.Name, p.Version, built.Notifications)
		}
		return err
	}
	report, err := projections.Diff(ctx, b.Pool, b.Log, p, opts)
	finish()
	if err != nil {
		return err
	}
	if format == "json" {
		err = writeJSON(c.stdout, report)
	} else {
		err = report.WriteText(c.stdout)
	}
	if err == nil && !report.Empty() {
		err = problemError{fmt.Errorf("projections diff: a rebuild would change %d customer(s)", len(report.Customers))}
	}
	return err
}

func checkFormat(format string) error {
	if format != "text" && format != "json" {
		return usageError(fmt.Sprintf("--format must be text or json, not %q", format))
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
