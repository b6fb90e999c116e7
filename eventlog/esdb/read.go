package esdb

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// CountAfterLimit is where CountAfter stops counting: a lag that large means
// "far behind" whatever its exact size.
const CountAfterLimit = 10_000

// ReadStream implements eventlog.Log.
func (l *Log) ReadStream(ctx context.Context, stream string, fromVersion int64, limit int) ([]eventlog.Record, error) {
	recs, err := l.readStreamRecords(ctx, stream, fromVersion, limit)
	if err != nil {
		return nil, fmt.Errorf("read stream %s from version %d: %w", stream, fromVersion, err)
	}
	return recs, nil
}

// StreamHead implements eventlog.Log with one backwards read from the end.
func (l *Log) StreamHead(ctx context.Context, stream string) (eventlog.Record, bool, error) {
	client, err := l.conn()
	if err != nil {
		return eventlog.Record{}, false, fmt.Errorf("read the head of stream %s: %w", stream, err)
	}
	events, err := l.readStream(ctx, client, l.streamName(stream),
		esdbclient.ReadStreamOptions{Direction: esdbclient.Backwards, From: esdbclient.End{}}, 1)
	if err != nil {
		return eventlog.Record{}, false, fmt.Errorf("read the head of stream %s: %w", stream, err)
	}
	if len(events) == 0 {
		return eventlog.Record{}, false, nil
	}
	r, err := l.record(events[0])
	if err != nil {
		return eventlog.Record{}, false, fmt.Errorf("read the head of stream %s: %w", stream, err)
	}
	return r, true, nil
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
		esdbclient.ReadStreamOptions{From: esdbclient.Revision(uint64(max(fromVersion, 0)))}, uint64(limit))
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

// ReadAll implements eventlog.Log with a filtered $all subscription that
// it stops at the first of limit records and the server's caught-up
// message: EventStore-Client-Go v4 sends no filter on counted reads, and the
// server filters subscriptions itself, so only the ledger's events cross the
// network.
func (l *Log) ReadAll(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	if limit <= 0 {
		return []eventlog.Record{}, nil
	}
	recs, err := l.readAllFiltered(ctx, from, limit)
	if err != nil {
		return nil, fmt.Errorf("read all after %s: %w", from, err)
	}
	return recs, nil
}

func (l *Log) readAllFiltered(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	client, err := l.conn()
	if err != nil {
		return nil, err
	}
	recs, err := detach(ctx, l, client, func() ([]eventlog.Record, error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		sub, err := client.SubscribeToAll(leader(ctx), l.subscribeOptions(from))
		if err != nil {
			return nil, err
		}
		defer sub.Close()
		recs := []eventlog.Record{}
		for len(recs) < limit {
			ev := sub.Recv()
			switch {
			case ev.EventAppeared != nil:
				rec := ev.EventAppeared.OriginalEvent()
				if !after(position(rec.Position), from) {
					continue // a server that resumed at, not after, the position
				}
				r, ok, err := l.decode(rec)
				if err != nil {
					return nil, err
				}
				if ok {
					recs = append(recs, r)
				}
			case ev.CaughtUp != nil:
				return recs, nil
			case ev.SubscriptionDropped != nil:
				return nil, ev.SubscriptionDropped.Error
			}
		}
		return recs, nil
	}, nil)
	if err != nil {
		return nil, classify(err)
	}
	return recs, nil
}

const (
	headSQL = `SELECT commit_position, prepare_position FROM esdb_event_ids WHERE state = 'committed'
 ORDER BY commit_position DESC, prepare_position DESC LIMIT 1`
	countAfterSQL = `SELECT count(*) FROM (SELECT FROM esdb_event_ids WHERE state = 'committed'
   AND (commit_position, prepare_position) > ($1, $2) LIMIT $3) AS after`
)

// Head implements eventlog.Log from the dedup guard, which records the $all
// position of every committed event: the position of the last one. An event
// whose guard row is still pending (its append succeeded but the guard's
// commit failed, see the package documentation) is not counted until the
// next claim of its id resolves it.
func (l *Log) Head(ctx context.Context) (eventlog.Position, error) {
	var head eventlog.Position
	err := l.guard.QueryRow(ctx, headSQL).Scan(&head.Commit, &head.Prepare)
	if errors.Is(err, pgx.ErrNoRows) {
		return eventlog.Start, nil
	}
	if err != nil {
		return eventlog.Start, fmt.Errorf("read head: %w", guardError(err))
	}
	return head, nil
}

// CountAfter implements eventlog.Log from the dedup guard, like Head. It
// counts at most CountAfterLimit records.
func (l *Log) CountAfter(ctx context.Context, from eventlog.Position) (int64, error) {
	var n int64
	if err := l.guard.QueryRow(ctx, countAfterSQL, from.Commit, from.Prepare, CountAfterLimit).Scan(&n); err != nil {
		return 0, fmt.Errorf("count records after %s: %w", from, guardError(err))
	}
	return n, nil
}

// after reports whether a record at p comes after from; every record comes
// after Start, including one at position 0/0.
func after(p, from eventlog.Position) bool {
	return from == eventlog.Start || from.Less(p)
}

func position(p esdbclient.Position) eventlog.Position {
	return eventlog.Position{Commit: p.Commit, Prepare: p.Prepare}
}

// readStream reads up to count events of an EventStoreDB stream; a stream
// that does not exist reads as empty.
func (l *Log) readStream(ctx context.Context, client *connection, stream string, opts esdbclient.ReadStreamOptions, count uint64) ([]*esdbclient.RecordedEvent, error) {
	events, err := l.read(ctx, client, func() (*esdbclient.ReadStream, error) { return client.ReadStream(leader(ctx), stream, opts, count) })
	if hasCode(err, esdbclient.ErrorCodeResourceNotFound) {
		return nil, nil
	}
	return events, err
}

// read runs a read and drains it (detached, see detach), classifying its failure.
func (l *Log) read(ctx context.Context, client *connection, open func() (*esdbclient.ReadStream, error)) ([]*esdbclient.RecordedEvent, error) {
	events, err := detach(ctx, l, client, func() ([]*esdbclient.RecordedEvent, error) {
		rs, err := open()
		if err != nil {
			return nil, err
		}
		defer rs.Close()
		var events []*esdbclient.RecordedEvent
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

// skippedAt reports whether the event of $all at exactly pos exists and is
// not the ledger's: where a filtered subscription that has delivered every
// ledger event before pos may checkpoint.
func (l *Log) skippedAt(ctx context.Context, client *connection, pos eventlog.Position) (bool, error) {
	events, err := l.read(ctx, client, func() (*esdbclient.ReadStream, error) {
		return client.ReadAll(leader(ctx), esdbclient.ReadAllOptions{From: esdbclient.Position{Commit: pos.Commit, Prepare: pos.Prepare}}, 1)
	})
	if err != nil {
		return false, err
	}
	return len(events) == 1 && position(events[0].Position) == pos && !l.ledgerEvent(events[0]), nil
}

// ledgerEvent reports whether an event of $all is one the Log wrote: in a
// stream under its prefix, not a system event, with metadata naming a
// Stripe event id whose EventID is the event's id.
func (l *Log) ledgerEvent(ev *esdbclient.RecordedEvent) bool {
	var md Metadata
	return strings.HasPrefix(ev.StreamID, l.prefix) && !strings.HasPrefix(ev.EventType, "$") &&
		json.Unmarshal(ev.UserMetadata, &md) == nil && md.StripeEventID != "" && EventID(md.StripeEventID) == ev.EventID
}

// decode decodes an event of $all that the stream-prefix filter selected.
// ok is false for the events that are not the ledger's (see ledgerEvent),
// which are skipped (and logged once per stream), never fatal: the
// $streamDeleted record a tombstone leaves, other system events, and events
// of another application whose stream names happen to start with the
// prefix. A ledger event that does not decode is an error.
func (l *Log) decode(ev *esdbclient.RecordedEvent) (r eventlog.Record, ok bool, err error) {
	if !l.ledgerEvent(ev) {
		_, seen := l.skipped.LoadOrStore(ev.StreamID, true)
		switch {
		case seen:
		case ev.EventType == "$streamDeleted":
			l.logger.Error("esdb event log: a ledger stream was deleted in EventStoreDB; its events are gone from reads",
				"stream", ev.StreamID, "position", position(ev.Position))
		default:
			l.logger.Warn("esdb event log: skipping events in $all that are not the ledger's (logged once per stream)",
				"stream", ev.StreamID, "type", ev.EventType, "position", position(ev.Position))
		}
		return eventlog.Record{}, false, nil
	}
	r, err = l.record(ev)
	return r, err == nil, err
}

// record decodes an event the Log wrote.
func (l *Log) record(ev *esdbclient.RecordedEvent) (eventlog.Record, error) {
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
