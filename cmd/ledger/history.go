package main

import (
	"bufio"
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
)

func newHistoryCmd(c *cli) *cobra.Command {
	var h historyFlags
	cmd := &cobra.Command{
		Use:   "history (cus_… [--account acct_…] | --all)",
		Short: "Export a customer's events (or --all: every event) as JSON Lines or CSV",
		Long: `Export one customer's history (its stream merged, in log order, with the
streams of its disputes and refunds), or with --all every event of the log in global
order, to stdout as JSON Lines or CSV, payloads byte for byte. In CSV, a cell
starting with = + - @ tab CR or ' gets a leading ' so that spreadsheets do not run
it as a formula; drop it to get the stored value (verify --file reads JSON Lines).
--since and --until take an RFC 3339 time or a plain date (2026-11-01); a
plain --until date includes that whole day (UTC).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runHistory(cmd.Context(), c, h, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&h.format, "format", "jsonl", "output format: jsonl or csv")
	f.StringVar(&h.since, "since", "", "only events created at or after this time (RFC 3339 or 2006-01-02)")
	f.StringVar(&h.until, "until", "", "only events created at or before this time (RFC 3339, or 2006-01-02 for the whole day)")
	f.BoolVar(&h.all, "all", false, "every event of the log, in global order, instead of one customer's")
	f.StringVar(&h.account, "account", "", "the Connect account (acct_…) of the customer")
	return cmd
}

type historyFlags struct {
	format, since, until, account string
	all                           bool
}

// runHistory exports one customer's stream, or with --all every event of the
// log in global order, to stdout as JSON Lines or CSV. It reads and writes a
// batch at a time, so memory stays flat however long the history.
func runHistory(ctx context.Context, c *cli, h historyFlags, positional []string) error {
	keep, err := createdBetween(h.since, h.until)
	if err != nil {
		return err
	}
	var stream string
	switch {
	case h.all && len(positional) == 0 && h.account == "":
	case h.all:
		return usageError("history: --all takes no customer and no --account")
	case len(positional) != 1:
		return usageError("history: give one customer id (cus_…) or --all")
	default:
		if stream, err = domain.CustomerStreamOf(h.account, positional[0]); err != nil {
			return usageError(err.Error())
		}
	}

	out := bufio.NewWriterSize(c.stdout, 64<<10)
	var write func(eventlog.Record) error
	flush := out.Flush
	switch h.format {
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
		return usageError(fmt.Sprintf("history: --format must be jsonl or csv, not %q", h.format))
	}
	cfg, logger, err := c.setup()
	if err != nil {
		return err
	}

	b, err := OpenAuditBackends(ctx, cfg, logger)
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
	if h.all {
		err = audit.EachInLog(ctx, l, each)
	} else {
		// The customer's stream merged with its linked objects' (DESIGN §8).
		var streams []string
		if streams, err = b.ReadModel.CustomerStreams(ctx, h.account, positional[0]); err == nil {
			err = audit.EachInStreams(ctx, l, streams, eventlog.Start, audit.BatchSize, each)
		}
	}
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if err := flush(); err != nil {
		return fmt.Errorf("history: write: %w", err)
	}
	if !h.all && read == 0 {
		return fmt.Errorf("history: customer %s has no events (stream %s)", positional[0], stream)
	}
	return nil
}

// createdBetween returns a filter keeping records created in [since, until];
// an empty bound is open. Bounds that exclude everything are refused.
func createdBetween(since, until string) (func(eventlog.Record) bool, error) {
	from, err := parseTimeFlag("history: --since", since, false)
	if err != nil {
		return nil, err
	}
	to, err := parseTimeFlag("history: --until", until, true)
	if err != nil {
		return nil, err
	}
	if since != "" && until != "" && from.After(to) {
		return nil, usageError(fmt.Sprintf("history: --since %s is after --until %s", since, until))
	}
	return func(r eventlog.Record) bool {
		return (since == "" || !r.Created.Before(from)) && (until == "" || !r.Created.After(to))
	}, nil
}
