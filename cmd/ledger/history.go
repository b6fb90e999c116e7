package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
)

// runHistory exports one customer's stream, or with --all every event of the
// log in global order, to stdout as JSON Lines or CSV. It reads and writes a
// batch at a time, so memory stays flat however long the history.
func runHistory(ctx context.Context, cfg Config, logger *slog.Logger, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("format", "jsonl", "output format: jsonl or csv")
	since := fs.String("since", "", "only events created at or after this RFC 3339 time")
	until := fs.String("until", "", "only events created at or before this RFC 3339 time")
	all := fs.Bool("all", false, "every event of the log, in global order, instead of one customer's")
	account := fs.String("account", "", "the Connect account (acct_…) of the customer")
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return usageError(err.Error())
	}
	keep, err := createdBetween(*since, *until)
	if err != nil {
		return usageError(err.Error())
	}
	var stream string
	switch {
	case *all && len(positional) == 0 && *account == "":
	case *all:
		return usageError("history: --all takes no customer and no --account")
	case len(positional) != 1:
		return usageError("history: give one customer id (cus_…) or --all")
	default:
		if stream, err = audit.CustomerStream(positional[0], *account); err != nil {
			return usageError(err.Error())
		}
	}

	out := bufio.NewWriterSize(stdout, 64<<10)
	var write func(eventlog.Record) error
	flush := out.Flush
	switch *format {
	case "jsonl":
		write = audit.NewJSONLWriter(out).Write
	case "csv":
		w := audit.NewCSVWriter(out)
		write = w.Write
		flush = func() error {
			if err := w.Flush(); err != nil {
				return err
			}
			return out.Flush()
		}
	default:
		return usageError(fmt.Sprintf("history: --format must be jsonl or csv, not %q", *format))
	}

	b, err := OpenBackends(ctx, cfg, logger, postgres.WithCompleteReads(auditReadWait)) // a short read would look like the end of the log
	if err != nil {
		return err
	}
	defer b.Close()
	l := b.Log
	var read int64
	each := func(batch []eventlog.Record) error {
		read += int64(len(batch))
		for _, r := range batch {
			if !keep(r) {
				continue
			}
			if err := write(r); err != nil {
				return err
			}
		}
		return nil
	}
	if *all {
		err = audit.EachInLog(ctx, l, each)
	} else {
		err = audit.EachInStream(ctx, l, stream, 0, each)
	}
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if err := flush(); err != nil {
		return fmt.Errorf("history: write: %w", err)
	}
	if !*all && read == 0 {
		return fmt.Errorf("history: customer %s has no events (stream %s)", positional[0], stream)
	}
	return nil
}

// createdBetween returns a filter keeping records created in [since, until];
// an empty bound is open.
func createdBetween(since, until string) (func(eventlog.Record) bool, error) {
	var from, to time.Time
	var err error
	if since != "" {
		if from, err = time.Parse(time.RFC3339, since); err != nil {
			return nil, fmt.Errorf("history: --since: %w", err)
		}
	}
	if until != "" {
		if to, err = time.Parse(time.RFC3339, until); err != nil {
			return nil, fmt.Errorf("history: --until: %w", err)
		}
	}
	return func(r eventlog.Record) bool {
		return (since == "" || !r.Created.Before(from)) && (until == "" || !r.Created.After(to))
	}, nil
}

// parseInterspersed parses fs's flags wherever they stand among the
// positional arguments (ledger history cus_123 --format csv), which the flag
// package alone stops at, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
