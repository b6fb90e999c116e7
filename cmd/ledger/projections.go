package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// runProjections handles `ledger projections status|rebuild|diff`.
func runProjections(ctx context.Context, cfg Config, logger *slog.Logger, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("projections: want status, rebuild or diff")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("projections "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	wait := fs.Bool("wait", false, "rebuild/diff: wait for a build in progress elsewhere instead of failing")
	format := fs.String("format", "text", "status/diff output: text or json")
	if err := fs.Parse(args); err != nil {
		return usageError(err.Error())
	}
	if *format != "text" && *format != "json" {
		return usageError("projections: --format must be text or json")
	}
	p := projections.Billing(cfg.Plans)
	if name := fs.Arg(0); name != "" && name != p.Name {
		return usageError(fmt.Sprintf("projections: unknown projection %q (known: %s)", name, p.Name))
	}
	svc, err := OpenBackends(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer svc.Close()

	switch sub {
	case "status":
		statuses, err := projections.ReadStatus(ctx, svc.Pool, svc.Log)
		if err != nil {
			return err
		}
		if *format == "json" {
			return writeJSON(stdout, statuses)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tVERSION\tPOSITION\tHEAD\tLAG\tDEAD LETTERS\tUPDATED")
		for _, s := range statuses {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s\n", s.Name, s.Version, s.Position, s.Head, s.Lag, s.DeadLetters, s.UpdatedAt.UTC().Format("2006-01-02T15:04:05Z"))
		}
		return tw.Flush()
	case "rebuild", "diff":
		total, err := svc.Log.CountAfter(ctx, eventlog.Start)
		if err != nil {
			return err
		}
		progress, finish := progressBar(stderr, sub+" "+p.Name, total)
		opts := projections.Options{Logger: logger, Wait: *wait}
		if progress != nil {
			opts.Progress = func(pr projections.Progress) { progress(pr.Done) }
		}
		if sub == "rebuild" {
			err = projections.Rebuild(ctx, svc.Pool, svc.Log, p, opts)
			finish()
			if err == nil {
				fmt.Fprintf(stdout, "projection %s version %d rebuilt and live\n", p.Name, p.Version)
			}
			return err
		}
		report, err := projections.Diff(ctx, svc.Pool, svc.Log, p, opts)
		finish()
		if err != nil {
			return err
		}
		if *format == "json" {
			return writeJSON(stdout, report)
		}
		return report.WriteText(stdout)
	}
	return usageError(fmt.Sprintf("projections: unknown subcommand %q", sub))
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
