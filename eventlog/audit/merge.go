package audit

import (
	"context"
	"errors"
	"slices"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// StreamReader is what the merges of streams read: every eventlog.Log is one.
type StreamReader interface {
	ReadStream(ctx context.Context, stream string, fromVersion int64, limit int) ([]eventlog.Record, error)
}

// EachInStreams hands f the records of streams positioned after `after`,
// merged into global order, a batch of up to batch records at a time, until
// every stream ends or f fails. It reads each stream a batch at a time, so
// memory is O(len(streams) × batch). A customer's history is its stream
// merged with its linked objects' (DESIGN §8).
func EachInStreams(ctx context.Context, l StreamReader, streams []string, after eventlog.Position, batch int, f func([]eventlog.Record) error) error {
	cursors := make([]*streamCursor, 0, len(streams))
	for _, s := range streams {
		c := &streamCursor{stream: s}
		if after != eventlog.Start {
			var err error
			if c.next, err = firstAfter(ctx, l, s, after); err != nil {
				return err
			}
		}
		cursors = append(cursors, c)
	}
	out := make([]eventlog.Record, 0, batch)
	for {
		var min *streamCursor
		for _, c := range cursors {
			if err := c.fill(ctx, l, batch); err != nil {
				return err
			}
			if len(c.buf) > 0 && (min == nil || c.buf[0].Position.Less(min.buf[0].Position)) {
				min = c
			}
		}
		if min == nil || len(out) == batch {
			if len(out) > 0 {
				if err := f(out); err != nil {
					return err
				}
				out = make([]eventlog.Record, 0, batch)
			}
			if min == nil {
				return nil
			}
		}
		out = append(out, min.buf[0])
		min.buf = min.buf[1:]
	}
}

// ReadStreams returns up to limit records of streams positioned after
// `after`, merged into global order: one page of a customer's history.
func ReadStreams(ctx context.Context, l eventlog.Log, streams []string, after eventlog.Position, limit int) ([]eventlog.Record, error) {
	var recs []eventlog.Record
	err := EachInStreams(ctx, l, streams, after, limit, func(batch []eventlog.Record) error {
		recs = batch
		return errEnough
	})
	if errors.Is(err, errEnough) {
		err = nil
	}
	return recs, err
}

var errEnough = errors.New("enough records")

// streamCursor is one stream of a merge: the records read ahead and the
// version to read from next.
type streamCursor struct {
	stream string
	next   int64
	buf    []eventlog.Record
	done   bool
}

func (c *streamCursor) fill(ctx context.Context, l StreamReader, batch int) error {
	if len(c.buf) > 0 || c.done {
		return nil
	}
	recs, err := l.ReadStream(ctx, c.stream, c.next, batch)
	if err != nil {
		return err
	}
	c.buf, c.done = recs, len(recs) < batch
	if len(recs) > 0 {
		c.next = recs[len(recs)-1].StreamVersion + 1
	}
	return nil
}

// firstAfter is the first version of stream positioned after pos (the
// stream's length when there is none). A stream's versions come in global
// order, so it gallops then bisects with one-record reads: O(log n) reads.
func firstAfter(ctx context.Context, l StreamReader, stream string, pos eventlog.Position) (int64, error) {
	// Versions below lo are at or before pos; versions at hi or above are after it, or absent.
	after := func(v int64) (bool, error) {
		recs, err := l.ReadStream(ctx, stream, v, 1)
		if err != nil {
			return false, err
		}
		return len(recs) == 0 || pos.Less(recs[0].Position), nil
	}
	lo, hi := int64(0), int64(0)
	for {
		isAfter, err := after(hi)
		if err != nil {
			return 0, err
		}
		if isAfter {
			break
		}
		lo, hi = hi+1, 2*hi+1
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		isAfter, err := after(mid)
		if err != nil {
			return 0, err
		}
		if isAfter {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// ReadStreamsBefore is a page of a history read newest first: up to limit
// records of streams positioned before `before` (nil: the newest), in global
// order, and total, how many records the streams hold. It reads at most
// limit records of each stream, its head, and (for a page after the first)
// O(log n) one-record reads to find where `before` falls, so a page costs the
// same however long the history is.
func ReadStreamsBefore(ctx context.Context, l eventlog.Log, streams []string, before *eventlog.Position, limit int) (recs []eventlog.Record, total int64, err error) {
	for _, s := range streams {
		head, ok, err := l.StreamHead(ctx, s)
		if err != nil {
			return nil, 0, err
		}
		var length int64
		if ok {
			length = head.StreamVersion + 1
		}
		total += length
		end := length
		if before != nil {
			if end, err = firstAfter(ctx, l, s, *before); err != nil {
				return nil, 0, err
			}
		}
		// One more than limit: the record at `before` itself may be among them.
		from := max(0, end-int64(limit)-1)
		if end == from {
			continue
		}
		batch, err := l.ReadStream(ctx, s, from, int(end-from))
		if err != nil {
			return nil, 0, err
		}
		batch = slices.DeleteFunc(batch, func(r eventlog.Record) bool { return before != nil && !r.Position.Less(*before) })
		recs = append(recs, batch[max(0, len(batch)-limit):]...)
	}
	slices.SortFunc(recs, func(a, b eventlog.Record) int {
		if a.Position.Less(b.Position) {
			return -1
		}
		if b.Position.Less(a.Position) {
			return 1
		}
		return 0
	})
	return recs[max(0, len(recs)-limit):], total, nil
}
