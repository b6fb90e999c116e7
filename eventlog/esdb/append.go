package esdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Metadata is the JSON metadata of every event the Log writes. Byte strings
// are lowercase hex.
type Metadata struct {
	StripeEventID string    `json:"stripe_event_id"`
	APIVersion    string    `json:"api_version"`
	Created       time.Time `json:"created"`
	Account       string    `json:"account,omitempty"`
	Signature     string    `json:"signature"`
	Source        string    `json:"source,omitempty"` // eventlog.Source; absent before provenance was recorded: webhook
	ReceivedAt    time.Time `json:"received_at"`
	PayloadSHA256 string    `json:"payload_sha256"`
	PrevHash      string    `json:"prev_hash"`
	Hash          string    `json:"hash"`
}

// maxAppendAttempts bounds the wrong-expected-version retries of one append:
// each lost race means another append to the stream succeeded.
const maxAppendAttempts = 100

// guardLockClass is the first key of the guard's advisory locks ('esdb'); the
// second is hashtext(event id).
const guardLockClass = 0x65736462

const (
	lockSQL   = `SELECT pg_advisory_lock($1, hashtext($2))`
	unlockSQL = `SELECT pg_advisory_unlock($1, hashtext($2))`

	// claimSQL inserts a pending row or counts one more attempt on a pending
	// row; it returns nothing for a committed row.
	claimSQL = `INSERT INTO esdb_event_ids AS g (event_id, stream, event_uuid) VALUES ($1, $2, $3)
ON CONFLICT (event_id) DO UPDATE SET attempts = g.attempts + 1 WHERE g.state = 'pending'
RETURNING g.attempts, g.stream`

	storedSQL = `SELECT stream_revision, commit_position, prepare_position
  FROM esdb_event_ids WHERE event_id = $1 AND state = 'committed'`

	commitSQL = `UPDATE esdb_event_ids
   SET state = 'committed', stream_revision = $2, commit_position = $3, prepare_position = $4,
       committed_at = clock_timestamp()
 WHERE event_id = $1`
)

// Append implements eventlog.Log with the dedup protocol of the package
// documentation. It returns once EventStoreDB acknowledged the write.
func (l *Log) Append(ctx context.Context, e eventlog.Event) (eventlog.AppendResult, error) {
	if e.ID == "" || e.Stream == "" {
		return eventlog.AppendResult{}, fmt.Errorf("append %q to stream %q: event id and stream are required", e.ID, e.Stream)
	}
	res, err := l.appendGuarded(ctx, e)
	if err != nil {
		return eventlog.AppendResult{}, fmt.Errorf("append %s to %s: %w", e.ID, e.Stream, err)
	}
	return res, nil
}

func (l *Log) appendGuarded(ctx context.Context, e eventlog.Event) (eventlog.AppendResult, error) {
	conn, unlock, err := l.lockEventID(ctx, e.ID)
	if err != nil {
		return eventlog.AppendResult{}, guardError(err)
	}
	defer unlock()

	id := EventID(e.ID)
	var (
		attempts int
		stream   string
	)
	err = conn.QueryRow(ctx, claimSQL, e.ID, e.Stream, id).Scan(&attempts, &stream)
	if errors.Is(err, pgx.ErrNoRows) {
		return l.stored(ctx, conn, e.ID)
	}
	if err != nil {
		return eventlog.AppendResult{}, guardError(err)
	}
	if stream != e.Stream {
		// The id is bound to the stream of its first claim, so that recovery looks in the right place.
		l.logger.Warn("esdb event log: event re-delivered for another stream; keeping the first",
			"event_id", e.ID, "stream", e.Stream, "claimed_stream", stream)
		e.Stream = stream
	}

	if attempts > 1 {
		found, err := l.findEvent(ctx, l.streamName(e.Stream), id)
		if err != nil {
			return eventlog.AppendResult{}, err
		}
		if found != nil {
			l.logger.Info("esdb event log: recovered an append interrupted after it reached EventStoreDB",
				"event_id", e.ID, "stream", e.Stream, "revision", found.EventNumber)
			res := storedAt(found)
			if err := commit(ctx, conn, e.ID, res); err != nil {
				return eventlog.AppendResult{}, guardError(err)
			}
			return res, nil
		}
	}

	res, err := l.appendChained(ctx, e, id)
	if err != nil {
		return eventlog.AppendResult{}, err
	}
	if l.afterAppend != nil {
		if err := l.afterAppend(); err != nil {
			return eventlog.AppendResult{}, err
		}
	}
	if err := commit(ctx, conn, e.ID, res); err != nil {
		// The event is durable; the next claim of the id finds it and commits the row.
		l.logger.Warn("esdb event log: appended but could not mark the event committed",
			"event_id", e.ID, "stream", e.Stream, "err", err)
	}
	return res, nil
}

// lockEventID takes the guard's advisory lock on a Stripe event id on a
// connection of its own. unlock releases the lock and the connection; when
// the lock's state is unknown it closes the connection, which ends the
// session and with it the lock.
func (l *Log) lockEventID(ctx context.Context, eventID string) (*pgxpool.Conn, func(), error) {
	conn, err := l.guard.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	drop := func() {
		_ = conn.Conn().Close(context.Background())
		conn.Release()
	}
	if _, err := conn.Exec(ctx, lockSQL, guardLockClass, eventID); err != nil {
		drop()
		return nil, nil, err
	}
	unlock := func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, unlockSQL, guardLockClass, eventID); err != nil {
			drop()
			return
		}
		conn.Release()
	}
	return conn, unlock, nil
}

// stored reports the committed copy of a Stripe event id.
func (l *Log) stored(ctx context.Context, conn *pgxpool.Conn, eventID string) (eventlog.AppendResult, error) {
	var rev, commitPos, preparePos int64
	if err := conn.QueryRow(ctx, storedSQL, eventID).Scan(&rev, &commitPos, &preparePos); err != nil {
		return eventlog.AppendResult{}, guardError(err)
	}
	return eventlog.AppendResult{
		Duplicate:     true,
		StreamVersion: rev,
		Position:      eventlog.Position{Commit: uint64(commitPos), Prepare: uint64(preparePos)},
	}, nil
}

func commit(ctx context.Context, conn *pgxpool.Conn, eventID string, res eventlog.AppendResult) error {
	_, err := conn.Exec(ctx, commitSQL, eventID, res.StreamVersion, int64(res.Position.Commit), int64(res.Position.Prepare))
	return err
}

// appendChained appends e after the stream's last event, chaining its hash,
// and retries when another append to the stream won the race.
func (l *Log) appendChained(ctx context.Context, e eventlog.Event, id uuid.UUID) (eventlog.AppendResult, error) {
	stream := l.streamName(e.Stream)
	payloadSHA := sha256.Sum256(e.Payload)
	for attempt := 1; ; attempt++ {
		client, err := l.conn()
		if err != nil {
			return eventlog.AppendResult{}, err
		}
		tail, err := l.readStream(ctx, client, stream, esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
		if err != nil {
			return eventlog.AppendResult{}, err
		}
		prevHash := eventlog.GenesisHash
		var expected esdb.ExpectedRevision = esdb.NoStream{}
		if len(tail) == 1 {
			last, err := l.record(tail[0])
			if err != nil {
				return eventlog.AppendResult{}, err
			}
			prevHash, expected = last.Hash, esdb.Revision(tail[0].EventNumber)
		}
		md, err := json.Marshal(Metadata{
			StripeEventID: e.ID,
			APIVersion:    e.APIVersion,
			Created:       e.Created.UTC(),
			Account:       e.Account,
			Signature:     e.Signature,
			Source:        string(e.Source.OrWebhook()),
			ReceivedAt:    time.Now().UTC(),
			PayloadSHA256: hex.EncodeToString(payloadSHA[:]),
			PrevHash:      hex.EncodeToString(prevHash),
			Hash:          hex.EncodeToString(eventlog.ChainHash(prevHash, payloadSHA[:])),
		})
		if err != nil {
			return eventlog.AppendResult{}, err
		}
		// A detached append that lands after Append gave up leaves the id
		// pending: the next append of it finds the event (step 2).
		wr, err := detach(ctx, l, client, func() (*esdb.WriteResult, error) {
			return client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expected}, esdb.EventData{
				EventID:     id,
				EventType:   e.Type,
				ContentType: esdb.ContentTypeBinary,
				Data:        e.Payload,
				Metadata:    md,
			})
		}, nil)
		if hasCode(err, esdb.ErrorCodeWrongExpectedVersion) && attempt < maxAppendAttempts {
			// Another append won the race. It may have been of this very event, by
			// a writer that took the id over after this one lost its lock with its
			// database connection: look before writing again.
			found, err := l.findEvent(ctx, stream, id)
			if err != nil {
				return eventlog.AppendResult{}, err
			}
			if found != nil {
				return storedAt(found), nil
			}
			if err := sleep(ctx, time.Duration(rand.Int64N(int64(min(attempt, 20))*int64(time.Millisecond)))); err != nil {
				return eventlog.AppendResult{}, err
			}
			continue
		}
		if err != nil {
			return eventlog.AppendResult{}, classify(err)
		}
		return eventlog.AppendResult{
			StreamVersion: int64(wr.NextExpectedVersion),
			Position:      eventlog.Position{Commit: wr.CommitPosition, Prepare: wr.PreparePosition},
		}, nil
	}
}

// findEvent looks for the event with id in an EventStoreDB stream, newest
// first: an interrupted append left it, if at all, near the end.
func (l *Log) findEvent(ctx context.Context, stream string, id uuid.UUID) (*esdb.RecordedEvent, error) {
	client, err := l.conn()
	if err != nil {
		return nil, err
	}
	var from esdb.StreamPosition = esdb.End{}
	for {
		page, err := l.readStream(ctx, client, stream, esdb.ReadStreamOptions{Direction: esdb.Backwards, From: from}, uint64(l.pageSize()))
		if err != nil {
			return nil, err
		}
		for _, ev := range page {
			if ev.EventID == id {
				return ev, nil
			}
		}
		if len(page) < l.pageSize() || page[len(page)-1].EventNumber == 0 {
			return nil, nil
		}
		from = esdb.Revision(page[len(page)-1].EventNumber - 1)
	}
}

// storedAt reports an event found already stored.
func storedAt(ev *esdb.RecordedEvent) eventlog.AppendResult {
	return eventlog.AppendResult{Duplicate: true, StreamVersion: int64(ev.EventNumber), Position: position(ev.Position)}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
