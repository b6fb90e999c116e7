package esdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
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

// raceRetry spaces the retries of an append that lost the race for its
// expected revision: a few milliseconds, jittered so the racers spread out.
var raceRetry = backoff.Policy{Min: time.Millisecond, Max: 20 * time.Millisecond, Jitter: 1}

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
RETURNING g.attempts, g.stream, g.expected_revision`

	// expectSQL moves a pending claim from the revision its appends expected
	// to a new one; it matches no row when another writer moved it first.
	expectSQL = `UPDATE esdb_event_ids SET expected_revision = $3
 WHERE event_id = $1 AND state = 'pending' AND expected_revision IS NOT DISTINCT FROM $2`

	storedSQL = `SELECT stream_revision, commit_position, prepare_position
  FROM esdb_event_ids WHERE event_id = $1 AND state = 'committed'`

	commitSQL = `UPDATE esdb_event_ids
   SET state = 'committed', stream_revision = $2, commit_position = $3, prepare_position = $4,
       committed_at = clock_timestamp()
 WHERE event_id = $1`
)

// noStream is the expected revision of an append that creates its stream.
const noStream = -1

// errClaimMoved means that another writer took the claim over while this
// one still worked on it: this one lost its guard lock (its database
// connection ended). The other writer stores the event; the caller retries.
var errClaimMoved = errors.New("another writer took over the claim of the event id")

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
		expected *int64
	)
	err = conn.QueryRow(ctx, claimSQL, e.ID, e.Stream, id).Scan(&attempts, &stream, &expected)
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

	res, err := l.appendExpected(ctx, conn, e, id, expected)
	if err != nil {
		return eventlog.AppendResult{}, err
	}
	if res.Duplicate {
		l.logger.Info("esdb event log: found the event stored by an earlier attempt",
			"event_id", e.ID, "stream", e.Stream, "revision", res.StreamVersion, "attempts", attempts)
		if err := commit(ctx, conn, e.ID, res); err != nil {
			return eventlog.AppendResult{}, guardError(err)
		}
		return res, nil
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
	res := eventlog.AppendResult{Duplicate: true}
	if err := conn.QueryRow(ctx, storedSQL, eventID).Scan(&res.StreamVersion, &res.Position.Commit, &res.Position.Prepare); err != nil {
		return eventlog.AppendResult{}, guardError(err)
	}
	return res, nil
}

func commit(ctx context.Context, conn *pgxpool.Conn, eventID string, res eventlog.AppendResult) error {
	_, err := conn.Exec(ctx, commitSQL, eventID, res.StreamVersion, res.Position.Commit, res.Position.Prepare)
	return err
}

// appendExpected appends e after revision *expected of its stream, the
// revision the claim recorded (nil: none yet), chaining its hash to the
// event there. Before each append it looks at the one place the event can
// be if an earlier attempt stored it, right after that revision: there it
// reports the event as a Duplicate. When another event holds that place, no
// earlier attempt can land any more, and the claim moves to the stream's
// current last revision (recorded before appending). Wrong expected version
// means another append won the race: look again.
func (l *Log) appendExpected(ctx context.Context, conn *pgxpool.Conn, e eventlog.Event, id uuid.UUID, expected *int64) (eventlog.AppendResult, error) {
	stream := l.streamName(e.Stream)
	payloadSHA := sha256.Sum256(e.Payload)
	for attempt := 1; ; attempt++ {
		client, err := l.conn()
		if err != nil {
			return eventlog.AppendResult{}, err
		}
		var prev *esdbclient.RecordedEvent // the event at *expected
		if expected != nil {
			var next *esdbclient.RecordedEvent
			prev, next, err = l.around(ctx, client, stream, *expected)
			if err != nil {
				return eventlog.AppendResult{}, err
			}
			if next != nil && next.EventID == id {
				return storedAt(next), nil
			}
			if next != nil {
				if err := l.moveClaim(ctx, conn, e.ID, expected, nil); err != nil {
					return eventlog.AppendResult{}, err
				}
				expected = nil
			}
		}
		if expected == nil {
			tail, err := l.readStream(ctx, client, stream, esdbclient.ReadStreamOptions{Direction: esdbclient.Backwards, From: esdbclient.End{}}, 1)
			if err != nil {
				return eventlog.AppendResult{}, err
			}
			rev := int64(noStream)
			prev = nil
			if len(tail) == 1 {
				prev, rev = tail[0], int64(tail[0].EventNumber)
			}
			if err := l.moveClaim(ctx, conn, e.ID, nil, &rev); err != nil {
				return eventlog.AppendResult{}, err
			}
			expected = &rev
		}

		prevHash := eventlog.GenesisHash
		var want esdbclient.ExpectedRevision = esdbclient.NoStream{}
		if prev != nil {
			last, err := l.record(prev)
			if err != nil {
				return eventlog.AppendResult{}, err
			}
			prevHash, want = last.Hash, esdbclient.Revision(prev.EventNumber)
		}
		data, err := l.eventData(e, id, payloadSHA[:], prevHash)
		if err != nil {
			return eventlog.AppendResult{}, err
		}
		if n := appendSize(data); n > MaxAppendSize {
			return eventlog.AppendResult{}, fmt.Errorf("%w: %d bytes with its metadata, over the server's maximum append size of %d",
				eventlog.ErrTooLarge, n, MaxAppendSize)
		}
		// A detached append that lands after Append gave up leaves the id
		// pending at this expected revision: every later attempt appends
		// expecting it too, until another event takes the place after it.
		wr, err := detach(ctx, l, client, func() (*esdbclient.WriteResult, error) {
			return client.AppendToStream(leader(ctx), stream, esdbclient.AppendToStreamOptions{ExpectedRevision: want}, data)
		}, nil)
		if hasCode(err, esdbclient.ErrorCodeWrongExpectedVersion) && attempt < maxAppendAttempts {
			if err := backoff.Sleep(ctx, raceRetry.Delay(attempt-1)); err != nil {
				return eventlog.AppendResult{}, classify(err) // a deadline is unavailable, like any other
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

// moveClaim records that the appends of a pending event id now expect
// revision to (nil: none) instead of from, on the guard connection that
// holds the id's lock.
func (l *Log) moveClaim(ctx context.Context, conn *pgxpool.Conn, eventID string, from, to *int64) error {
	tag, err := conn.Exec(ctx, expectSQL, eventID, from, to)
	if err != nil {
		return guardError(err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("%w: %w", eventlog.ErrUnavailable, errClaimMoved)
	}
	return nil
}

// around reads the event at revision rev of stream (nil for noStream) and
// the one after it, if any.
func (l *Log) around(ctx context.Context, client *connection, stream string, rev int64) (at, next *esdbclient.RecordedEvent, err error) {
	count := uint64(2)
	if rev == noStream {
		count = 1
	}
	events, err := l.readStream(ctx, client, stream, esdbclient.ReadStreamOptions{From: esdbclient.Revision(uint64(max(rev, 0)))}, count)
	if err != nil {
		return nil, nil, err
	}
	if rev == noStream {
		if len(events) == 1 {
			next = events[0]
		}
		return nil, next, nil
	}
	if len(events) == 0 || int64(events[0].EventNumber) != rev {
		return nil, nil, fmt.Errorf("stream %s has no event at revision %d, where the claim of this event id expects it: was the stream deleted or truncated?", stream, rev)
	}
	if len(events) == 2 {
		next = events[1]
	}
	return events[0], next, nil
}

// MaxAppendSize is the largest append KurrentDB 24.10 and 25.x accept by
// default (their MaxAppendSize setting): the encoded size of the proposed
// message, payload, metadata and id together.
const MaxAppendSize = 1 << 20

// metadataReserve is what MaxPayload leaves of MaxAppendSize for the
// event's metadata (ids, hashes, times, the Stripe-Signature header) and
// its encoding; a signature header too long for it makes Append refuse the
// event with eventlog.ErrTooLarge instead.
const metadataReserve = 16 << 10

// MaxPayload implements eventlog.PayloadLimiter: the webhook refuses bodies
// the server would refuse to store.
func (l *Log) MaxPayload() int { return MaxAppendSize - metadataReserve }

var _ eventlog.PayloadLimiter = (*Log)(nil)

// appendSize is the size the server counts against MaxAppendSize for
// event: its proposed message as EventStore-Client-Go v4 encodes it.
func appendSize(event esdbclient.EventData) int {
	most, least := esdbclient.UUIDAsInt64(event.EventID)
	return proto.Size(&streams.AppendReq_ProposedMessage{
		Id: &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
			MostSignificantBits: most, LeastSignificantBits: least,
		}}},
		Metadata:       map[string]string{"type": event.EventType, "content-type": "application/octet-stream"},
		CustomMetadata: event.Metadata,
		Data:           event.Data,
	})
}

// eventData is the EventStoreDB event of e, chained after prevHash.
func (l *Log) eventData(e eventlog.Event, id uuid.UUID, payloadSHA, prevHash []byte) (esdbclient.EventData, error) {
	md, err := json.Marshal(Metadata{
		StripeEventID: e.ID,
		APIVersion:    e.APIVersion,
		Created:       e.Created.UTC(),
		Account:       e.Account,
		Signature:     e.Signature,
		Source:        string(e.Source.OrWebhook()),
		ReceivedAt:    time.Now().UTC(),
		PayloadSHA256: hex.EncodeToString(payloadSHA),
		PrevHash:      hex.EncodeToString(prevHash),
		Hash:          hex.EncodeToString(eventlog.ChainHash(prevHash, payloadSHA)),
	})
	if err != nil {
		return esdbclient.EventData{}, err
	}
	return esdbclient.EventData{
		EventID:     id,
		EventType:   e.Type,
		ContentType: esdbclient.ContentTypeBinary,
		Data:        e.Payload,
		Metadata:    md,
	}, nil
}

// storedAt reports an event found already stored.
func storedAt(ev *esdbclient.RecordedEvent) eventlog.AppendResult {
	return eventlog.AppendResult{Duplicate: true, StreamVersion: int64(ev.EventNumber), Position: position(ev.Position)}
}
