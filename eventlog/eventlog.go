// Package eventlog defines the append-only log of verified Stripe events that
// every other part of the ledger reads from, and the small interface its
// backends (eventlog/postgres, eventlog/esdb) implement.
//
// A record is immutable once written. Streams hold one Stripe customer each
// (see domain.Envelope.Stream); inside a stream, records carry dense versions
// 0,1,2… and a hash chain (hash = sha256(prev_hash || payload_sha256)) that
// makes any later edit, deletion or reordering detectable.
package eventlog

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Event is a verified Stripe event as it is handed to the log.
type Event struct {
	ID         string    // Stripe's event id, evt_…; the dedup key
	Stream     string    // customer-<cus_id>, object-<type>-<id>, optionally prefixed by acct_…/
	Type       string    // Stripe's event type, e.g. invoice.paid
	APIVersion string    // the API version the payload is rendered in
	Created    time.Time // Stripe's event time (one-second resolution)
	Account    string    // Connect account, empty for the platform's own events
	Payload    []byte    // the raw request body, byte for byte
	Signature  string    // the Stripe-Signature header as received; empty when the event was fetched from Stripe's API
	Source     Source    // how the ledger got it; empty means SourceWebhook
}

// Source is a record's provenance (DESIGN §10): how the ledger came to hold
// it. Only a webhook delivery, or a thin event's notification, carries a
// Stripe-Signature; what the ledger fetched from Stripe's API has none, by
// design, and its source says so.
type Source string

// Sources.
const (
	SourceWebhook   Source = "webhook"   // delivered to POST /stripe/webhook, signature verified
	SourceBackfill  Source = "backfill"  // listed from /v1/events by ledger backfill
	SourceReconcile Source = "reconcile" // an object observed by ledger reconcile (ledger.observed.*)
	SourceThin      Source = "thin"      // a thin event's notification (signed), or what was fetched for it
)

// OrWebhook is s, or SourceWebhook when s is empty: what a backend stores.
func (s Source) OrWebhook() Source {
	if s == "" {
		return SourceWebhook
	}
	return s
}

// Record is an Event as stored, with the attributes the log assigned.
type Record struct {
	Event
	StreamVersion int64     // 0,1,2… inside the stream
	Position      Position  // place in the global order readers consume
	ReceivedAt    time.Time // when the log stored it
	PayloadSHA256 []byte    // sha256(Payload)
	PrevHash      []byte    // Hash of the previous record in the stream, GenesisHash for version 0
	Hash          []byte    // ChainHash(PrevHash, PayloadSHA256)
}

// AppendResult reports what Append did.
type AppendResult struct {
	// Duplicate is true when the event id was already stored; nothing was written
	// and StreamVersion/Position describe the stored copy where the backend knows them.
	Duplicate     bool
	StreamVersion int64
	Position      Position
}

// Position is a place in the global order of the log. PostgreSQL orders by
// (appending transaction id, global_position) in Commit and Prepare;
// EventStoreDB uses its $all (commit, prepare) position. The zero Position is
// before every record.
type Position struct {
	Commit  uint64
	Prepare uint64
}

// Start is the position before the first record.
var Start = Position{}

// Less reports whether p comes before q in the global order.
func (p Position) Less(q Position) bool {
	if p.Commit != q.Commit {
		return p.Commit < q.Commit
	}
	return p.Prepare < q.Prepare
}

// String renders p as "commit/prepare", its one text form (MarshalText).
func (p Position) String() string { return fmt.Sprintf("%d/%d", p.Commit, p.Prepare) }

// MarshalText renders p as String does, so JSON and logs show "7/3".
func (p Position) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText parses the "commit/prepare" form of MarshalText.
func (p *Position) UnmarshalText(text []byte) error {
	commit, prepare, ok := strings.Cut(string(text), "/")
	c, err1 := strconv.ParseUint(commit, 10, 64)
	q, err2 := strconv.ParseUint(prepare, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("position %q is not commit/prepare", text)
	}
	*p = Position{Commit: c, Prepare: q}
	return nil
}

// Handler receives consecutive batches of records from Subscribe. Returning an
// error stops the subscription with that error.
type Handler func(ctx context.Context, batch []Record) error

// Log is the event log. Implementations are safe for concurrent use.
type Log interface {
	// Append stores e at the end of e.Stream. Appending an event id that is
	// already stored is a no-op that reports Duplicate and returns no error.
	// It returns only once the record is durable.
	Append(ctx context.Context, e Event) (AppendResult, error)
	// ReadStream returns up to limit records of stream with version >= fromVersion, in version order.
	ReadStream(ctx context.Context, stream string, fromVersion int64, limit int) ([]Record, error)
	// StreamHead returns the last record of stream; ok is false when the
	// stream has none.
	StreamHead(ctx context.Context, stream string) (r Record, ok bool, err error)
	// ReadAll returns up to limit records positioned strictly after from, in global order.
	// A reader that has seen position P never later meets a new record at or before P.
	ReadAll(ctx context.Context, from Position, limit int) ([]Record, error)
	// Subscribe delivers every record after from to h in global order, in
	// batches: first the stored ones (catch-up), then new ones as they are
	// appended (live). It blocks until ctx is done (returning ctx.Err()) or h
	// or the log fails.
	Subscribe(ctx context.Context, from Position, h Handler) error
	// Head is the position of the last record, Start when the log is empty.
	Head(ctx context.Context) (Position, error)
	// CountAfter counts the records positioned strictly after from (a
	// projection's lag). A backend may stop counting at a documented cap
	// (EventStoreDB: 10,000), so callers treat it as a lower bound.
	CountAfter(ctx context.Context, from Position) (int64, error)
	// Close releases the log's resources.
	Close()
}

// CheckpointSubscriber is implemented by logs whose subscriptions also report
// progress past records that are not the ledger's (EventStoreDB's filtered
// $all subscription sends checkpoints while it skips foreign events). A
// consumer that stores the positions cp receives as its checkpoint resumes
// after those events instead of scanning them again. cp's positions are never
// before a record already delivered; an error from cp stops the subscription.
type CheckpointSubscriber interface {
	SubscribeCheckpoints(ctx context.Context, from Position, h Handler, cp func(ctx context.Context, pos Position) error) error
}

// FoldReader is implemented by logs that can read the global order without
// what only an audit of a record needs: ReadAllFold is ReadAll, but the
// records it returns carry no Signature, Source, ReceivedAt, PayloadSHA256,
// PrevHash or Hash. Projections fold from the rest, and a rebuild or a
// catch-up reads the whole log: reading less of each record spares the
// database and the reader.
type FoldReader interface {
	ReadAllFold(ctx context.Context, from Position, limit int) ([]Record, error)
}

// FoldSubscriber is implemented by logs whose subscriptions can deliver
// records as ReadAllFold reads them: SubscribeFold is Subscribe, but the
// records carry no Signature, Source, ReceivedAt, PayloadSHA256, PrevHash
// or Hash. A projection following the log live reads every record once.
type FoldSubscriber interface {
	SubscribeFold(ctx context.Context, from Position, h Handler) error
}

// PayloadLimiter is implemented by logs that cannot store payloads as large
// as the webhook accepts (DESIGN §5: 1 MiB); the webhook refuses bodies over
// MaxPayload with 413 before verifying them.
type PayloadLimiter interface {
	MaxPayload() int
}

// ErrTooLarge wraps an Append refused because the event is larger than the
// log can store; nothing was written. The webhook answers 413 for it.
var ErrTooLarge = errors.New("event too large for the event log")

// ErrUnavailable wraps failures to reach the log's storage (network, server
// down, not leader, deadline). The webhook answers 503 for it so that Stripe
// retries.
var ErrUnavailable = errors.New("event log unavailable")

// GenesisHash is the PrevHash of a stream's first record: 32 zero bytes.
var GenesisHash = make([]byte, sha256.Size)

// ChainHash computes a record's hash from its predecessor's hash and its payload digest.
func ChainHash(prevHash, payloadSHA256 []byte) []byte {
	h := sha256.New()
	h.Write(prevHash)
	h.Write(payloadSHA256)
	return h.Sum(nil)
}
