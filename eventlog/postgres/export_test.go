package postgres

import (
	"context"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// AppendBatch stores events as a committer stores one batch, its
// transaction carrying the NOTIFY when notify is set.
func AppendBatch(ctx context.Context, l *Log, events []eventlog.Event, notify bool) ([]eventlog.AppendResult, error) {
	batch := make([]*appendRequest, len(events))
	for i, e := range events {
		batch[i] = &appendRequest{ctx: ctx, e: e, done: make(chan appendAnswer, 1)}
	}
	return l.appendBatch(batch, notify)
}

// ClaimNotify and Announce are what a committer does before and after it
// stores a batch (store).
func ClaimNotify(l *Log) (carried bool, announced uint64) { return l.claimNotify() }

func Announce(l *Log, pos eventlog.Position, carried bool, announced uint64) {
	l.announce(pos, carried, announced)
}
