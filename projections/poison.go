package projections

import (
	"context"
	"errors"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// isDataError reports whether err, from folding a batch, is PostgreSQL
// refusing the values some event carries (DESIGN §4, "Poison"): the
// event is dead-lettered; errClaimedTwice counts as PostgreSQL's 21000,
// which it stands for across a fold's rounds. Every other error (connection lost,
// serialization failure, deadlock, shutdown, a missing table) is the
// infrastructure's: the batch is rolled back and retried.
func isDataError(err error) bool {
	if errors.Is(err, errClaimedTwice) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) < 2 {
		return false
	}
	switch pgErr.Code[:2] {
	case "21", // cardinality violation: two events of a batch write one row twice
		"22", // data exception: NUL, invalid text, out-of-range value or time
		"23", // integrity constraint violation
		"54": // program limit exceeded: an index row over the btree maximum
		return true
	}
	return false
}

// foldBatch folds b into schema in one transaction of pool, after before
// (nil: nothing; the runner advances its checkpoint there). When
// PostgreSQL refuses the values of some event, it folds b again in a new
// transaction, bisecting it under savepoints down to the events that fail
// alone, which are dead-lettered; every other event commits. A batch of
// parts is folded again part by part, each bisected only if it fails
// alone, as each would be in a transaction of its own. It returns the
// batch as committed, with its dead letters, each of which it logs.
func foldBatch(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger, p Projection, schema string, b *batch,
	before func(pgx.Tx) error) (*batch, error) {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if before != nil {
			if err := before(tx); err != nil {
				return err
			}
		}
		return fold(ctx, tx, p, schema, b)
	})
	if isDataError(err) {
		// The bisection folds halves under savepoints, each from the state
		// the one before left in the read model: none is held.
		p.states.reset()
		p.states = nil
		logger.WarnContext(ctx, "a batch holds values the read model refuses; isolating the events that cause it",
			"schema", schema, "events", b.events, "err", err)
		cause := err
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if before != nil {
				if err := before(tx); err != nil {
					return err
				}
			}
			var err error
			b, err = isolateParts(ctx, tx, p, schema, b, cause)
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	for _, l := range b.deadLetters {
		logger.ErrorContext(ctx, "projection dead-lettered an event", "schema", schema,
			"event_id", l.eventID, "event_type", l.eventType, "position", l.position.String(), "reason", l.err)
	}
	return b, nil
}

// isolateParts folds b, which failed as a whole with cause, into schema
// within tx: b's records when b has no parts, else each part's in turn,
// under a savepoint, bisected as isolate does when it fails.
func isolateParts(ctx context.Context, tx pgx.Tx, p Projection, schema string, b *batch, cause error) (*batch, error) {
	if b.parts == nil {
		return isolate(ctx, tx, p, schema, b.recs, cause)
	}
	var out *batch
	for _, part := range b.parts {
		folded := p.decode(part.recs)
		err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return fold(ctx, sp, p, schema, folded) })
		if isDataError(err) {
			folded, err = isolate(ctx, tx, p, schema, part.recs, err)
		}
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = folded
		} else {
			out = out.then(folded)
		}
	}
	return out, nil
}

// isolate folds recs, of which the batch as a whole failed with cause, into
// schema within tx: each half under a savepoint, splitting again the halves
// that fail with a data error, down to single events, which it dead-letters.
func isolate(ctx context.Context, tx pgx.Tx, p Projection, schema string, recs []eventlog.Record, cause error) (*batch, error) {
	if len(recs) == 1 {
		b := p.decode(nil)
		b.recs, b.events, b.last = recs, 1, recs[0].Position
		b.deadLetters = []deadLetter{newDeadLetter(recs[0], cause)}
		b.outcomes[outcomeDeadLetter] = 1
		return b, fold(ctx, tx, p, schema, b)
	}
	mid := len(recs) / 2
	var out *batch
	for _, half := range [][]eventlog.Record{recs[:mid], recs[mid:]} {
		b := p.decode(half)
		err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return fold(ctx, sp, p, schema, b) })
		if isDataError(err) {
			b, err = isolate(ctx, tx, p, schema, half, err)
		}
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = b
		} else {
			out.merge(b)
		}
	}
	return out, nil
}

// newDeadLetter records that rec could not be applied, in text PostgreSQL
// can hold whatever the record carries.
func newDeadLetter(rec eventlog.Record, err error) deadLetter {
	return deadLetter{eventID: domain.StorableText(rec.ID), eventType: domain.StorableText(rec.Type), position: rec.Position,
		stream: domain.StorableText(rec.Stream), streamVersion: rec.StreamVersion, err: domain.StorableText(err.Error())}
}
