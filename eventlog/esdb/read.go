package esdb

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// CountAfterLimit is where CountAfter stops counting: it scans $all on the
// client, and a lag that large means "far behind" whatever its exact size.
const CountAfterLimit = 10_000

// ReadStream implements eventlog.Log.
func (l *Log) ReadStream(ctx context.Context, stream string, fromVersion int64, limit int) ([]eventlog.Record, error) {
	recs, err := l.readStreamRecords(ctx, stream, fromVersion, limit)
	if err != nil {
		return nil, fmt.Errorf("read stream %s from version %d: %w", stream, fromVersion, err)
	}
	return recs, nil
}

func (l *Log) readStreamRecords(ctx context.Context, stream string, fromVersion int64, limit int) ([]eventlog.Record, error) {
	if limit <= 0 {
		return nil, nil
	}
	client, err := l.conn()
	if err != nil {
		return nil, err
	}
	events, err := l.readStream(ctx, client, l.streamName(stream),
		esdb.ReadStreamOptions{From: esdb.Revision(uint64(max(fromVersion, 0)))}, uint64(limit))
	if err != nil {
		return nil, err
	}
	recs := make([]eventlog.Record, 0, len(events))
	for _, ev := range events {
		r, err := l.record(ev)
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// ReadAll implements eventlog.Log.
func (l *Log) ReadAll(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	var recs []eventlog.Record
	if limit <= 0 {
		return recs, nil
	}
	err := l.scanAll(ctx, from, func(ev *esdb.RecordedEvent) (bool, error) {
		r, err := l.record(ev)
		recs = append(recs, r)
		return len(recs) < limit, err
	})
	if err != nil {
		return nil, fmt.Errorf("read all after %s: %w", from, err)
	}
	return recs, nil
}

// Head implements eventlog.Log: it walks $all backwards to the last ledger event.
func (l *Log) Head(ctx context.Context) (eventlog.Position, error) {
	head, err := l.head(ctx)
	if err != nil {
		return eventlog.Start, fmt.Errorf("read head: %w", err)
	}
	return head, nil
}

func (l *Log) head(ctx context.Context) (eventlog.Position, error) {
	client, err := l.conn()
	if err != nil {
		return eventlog.Start, err
	}
	var from esdb.AllPosition = esdb.End{}
	for {
		page, err := l.readAll(ctx, client, esdb.ReadAllOptions{Direction: esdb.Backwards, From: from}, uint64(l.pageSize()))
		if err != nil {
			return eventlog.Start, err
		}
		for _, ev := range page {
			if l.ours(ev) {
				return position(ev.Position), nil
			}
		}
		if len(page) < l.pageSize() {
			return eventlog.Start, nil
		}
		from = page[len(page)-1].Position
	}
}

// CountAfter implements eventlog.Log. It counts at most CountAfterLimit records.
func (l *Log) CountAfter(ctx context.Context, from eventlog.Position) (int64, error) {
	var n int64
	err := l.scanAll(ctx, from, func(*esdb.RecordedEvent) (bool, error) {
		n++
		return n < CountAfterLimit, nil
	})
	if err != nil {
		return 0, fmt.Errorf("count records after %s: %w", from, err)
	}
	return n, nil
}

// scanAll calls fn with each ledger event positioned after from, in $all
// order, until fn returns false or an error, or $all ends.
func (l *Log) scanAll(ctx context.Context, from eventlog.Position, fn func(*esdb.RecordedEvent) (bool, error)) error {
	client, err := l.conn()
	if err != nil {
		return err
	}
	var at esdb.AllPosition = esdb.Start{}
	if from != eventlog.Start {
		at = esdb.Position{Commit: from.Commit, Prepare: from.Prepare}
	}
	for {
		// Forwards from a position includes the event at it; after() drops it.
		page, err := l.readAll(ctx, client, esdb.ReadAllOptions{From: at}, uint64(l.pageSize()))
		if err != nil {
			return err
		}
		for _, ev := range page {
			if !after(position(ev.Position), from) || !l.ours(ev) {
				continue
			}
			more, err := fn(ev)
			if err != nil || !more {
				return err
			}
		}
		if len(page) < l.pageSize() {
			return nil
		}
		last := page[len(page)-1].Position
		at, from = last, position(last)
	}
}

// pageSize is the batch size, at least 2 so that a page read from the
// position of the previous page's last event always moves on.
func (l *Log) pageSize() int { return max(l.batch, 2) }

// after reports whether a record at p comes after from; every record comes
// after Start, including one at position 0/0.
func after(p, from eventlog.Position) bool {
	return from == eventlog.Start || from.Less(p)
}

// ours reports whether an event of $all belongs to the ledger's streams.
func (l *Log) ours(ev *esdb.RecordedEvent) bool { return strings.HasPrefix(ev.StreamID, l.prefix) }

func position(p esdb.Position) eventlog.Position {
	return eventlog.Position{Commit: p.Commit, Prepare: p.Prepare}
}

// readStream reads up to count events of an EventStoreDB stream; a stream
// that does not exist reads as empty.
func (l *Log) readStream(ctx context.Context, client *connection, stream string, opts esdb.ReadStreamOptions, count uint64) ([]*esdb.RecordedEvent, error) {
	events, err := l.read(ctx, client, func() (*esdb.ReadStream, error) { return client.ReadStream(ctx, stream, opts, count) })
	if hasCode(err, esdb.ErrorCodeResourceNotFound) {
		return nil, nil
	}
	return events, err
}

// readAll reads up to count events of $all.
func (l *Log) readAll(ctx context.Context, client *connection, opts esdb.ReadAllOptions, count uint64) ([]*esdb.RecordedEvent, error) {
	return l.read(ctx, client, func() (*esdb.ReadStream, error) { return client.ReadAll(ctx, opts, count) })
}

// read runs a read and drains it (detached, see detach), classifying its failure.
func (l *Log) read(ctx context.Context, client *connection, open func() (*esdb.ReadStream, error)) ([]*esdb.RecordedEvent, error) {
	events, err := detach(ctx, l, client, func() ([]*esdb.RecordedEvent, error) {
		rs, err := open()
		if err != nil {
			return nil, err
		}
		defer rs.Close()
		var events []*esdb.RecordedEvent
		for {
			ev, err := rs.Recv()
			if errors.Is(err, io.EOF) {
				return events, nil
			}
			if err != nil {
				return nil, err
			}
			events = append(events, ev.OriginalEvent())
		}
	}, nil)
	if err != nil {
		return nil, classify(err)
	}
	return events, nil
}

// record decodes an event the Log wrote.
func (l *Log) record(ev *esdb.RecordedEvent) (eventlog.Record, error) {
	var md Metadata
	if err := json.Unmarshal(ev.UserMetadata, &md); err != nil {
		return eventlog.Record{}, fmt.Errorf("event %s in %s at %d: metadata: %w", ev.EventID, ev.StreamID, ev.EventNumber, err)
	}
	r := eventlog.Record{
		Event: eventlog.Event{
			ID:         md.StripeEventID,
			Stream:     strings.TrimPrefix(ev.StreamID, l.prefix),
			Type:       ev.EventType,
			APIVersion: md.APIVersion,
			Created:    md.Created.UTC(),
			Account:    md.Account,
			Payload:    ev.Data,
			Signature:  md.Signature,
			Source:     eventlog.Source(md.Source).OrWebhook(),
		},
		StreamVersion: int64(ev.EventNumber),
		Position:      position(ev.Position),
		ReceivedAt:    md.ReceivedAt.UTC(),
	}
	var err error
	for _, h := range []struct {
		dst *[]byte
		hex string
	}{{&r.PayloadSHA256, md.PayloadSHA256}, {&r.PrevHash, md.PrevHash}, {&r.Hash, md.Hash}} {
		if *h.dst, err = hex.DecodeString(h.hex); err != nil {
			return eventlog.Record{}, fmt.Errorf("event %s (%s): metadata hash: %w", md.StripeEventID, ev.StreamID, err)
		}
	}
	return r, nil
}
