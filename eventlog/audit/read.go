package audit

import (
	"context"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// BatchSize is how many records the readers in this package ask the log for at a time.
const BatchSize = 1000

// EachInLog hands f every record of the log in global order, a batch at a
// time, until the log ends or f fails.
func EachInLog(ctx context.Context, l eventlog.Log, f func([]eventlog.Record) error) error {
	for from := eventlog.Start; ; {
		batch, err := l.ReadAll(ctx, from, BatchSize)
		if err != nil || len(batch) == 0 {
			return err
		}
		if err := f(batch); err != nil {
			return err
		}
		from = batch[len(batch)-1].Position
	}
}

// EachInStream hands f the records of stream from version from on, a batch at
// a time, until the stream ends or f fails.
func EachInStream(ctx context.Context, l eventlog.Log, stream string, from int64, f func([]eventlog.Record) error) error {
	for {
		batch, err := l.ReadStream(ctx, stream, from, BatchSize)
		if err != nil {
			return err
		}
		if len(batch) > 0 {
			if err := f(batch); err != nil {
				return err
			}
		}
		if len(batch) < BatchSize {
			return nil
		}
		from = batch[len(batch)-1].StreamVersion + 1
	}
}
