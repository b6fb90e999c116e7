// Package esdb implements eventlog.Log on EventStoreDB / KurrentDB with
// EventStore-Client-Go/v4, keeping an exact dedup guard in PostgreSQL
// (DESIGN §2, §7).
//
// # Streams, events and positions
//
// A ledger stream s (customer-cus_…, object-…, acct_…/customer-…) is stored
// as the EventStoreDB stream prefix+s, with a prefix unique to this ledger
// that its guard database records (see WithStreamPrefix), so that one
// stream-prefix filter selects the ledger's events in $all, whatever else
// (system streams, other applications) the database holds; events under the
// prefix that are not the ledger's are skipped. Each Stripe
// event is one EventStoreDB event: its id is the UUIDv5 of the Stripe event id
// (EventID), its type the Stripe type, its data the raw payload bytes with
// content type application/octet-stream (nothing on the way may treat it as a
// document and re-encode it), and its metadata the JSON of Metadata: the
// Stripe id, API version, created, account, signature header, provenance,
// received_at, payload SHA-256 and the per-stream hash chain. A record's StreamVersion is
// the event's stream revision and its Position the event's $all (commit,
// prepare) position.
//
// The chain stays consistent under concurrent appends to one stream: Append
// appends after an exact expected revision (no_stream for a new stream),
// with the new hash computed from the hash of the event at that revision; on
// wrong-expected-version it looks again.
//
// # Exact dedup
//
// KurrentDB recognises a retried append only when it expects the revision
// the event was first written after (it then answers success and writes
// nothing, however long ago the write was); the same event id appended
// after a later revision, or to another stream, is stored again. The
// ledger needs "an event id is stored at most once, ever", so every append
// goes through the esdb_event_ids table (migrations 003, 011 and 012), under a
// session advisory lock on the event id that serialises appends of the same
// id across processes:
//
//  1. claim: insert the id as pending, or add one to the attempts of a
//     pending row; a committed row means the event is stored: report
//     Duplicate with its stored revision and position.
//  2. expect: a pending row records the revision its appends expect. With
//     one recorded, read the stream at that revision and the one after it
//     (two events, never the whole stream): the event there means an earlier
//     attempt stored it (report Duplicate); no event there means the append
//     goes after that same revision, so that an earlier attempt still in
//     flight and this one are one write to the server; another event there
//     means no earlier attempt can land any more. Without a usable revision,
//     read the stream's last event and record its revision in the row first.
//  3. append the event expecting the recorded revision; on
//     wrong-expected-version go back to 2.
//  4. mark the row committed with the revision and position.
//
// Every step commits on its own, so a crash anywhere leaves either no row
// (nothing happened), a pending row (the next append of the id looks where
// the crashed one wrote, if it did) or a committed row: no event is lost or
// stored twice. The lock dies with its connection, so a crashed writer never
// blocks the retry. A writer whose connection (and lock) ended while its
// append was in flight cannot duplicate either: its append expects the
// recorded revision, and it records a new one only through its own
// connection (step 2), which fails once the connection is gone. An abandoned
// append (a context that ended, a retired client, see Errors) that lands
// after Append gave up is recognised the same way.
//
// A failure after step 3 (the event is durable but step 4 fails) is logged
// and the append still succeeds; the pending row is resolved by the next
// claim of the id. The guard is the source of truth for "already stored":
// restoring it from an older backup than the log needs the missing ids
// re-claimed from $all first.
//
// Readers must still be idempotent per event id: ReadAll, Subscribe and the
// projections' checkpoints (DESIGN §2) guard against a replay from an older
// position, and a projection must apply an event id once however often it is
// delivered.
//
// # Reading and subscribing
//
// EventStore-Client-Go v4 sends no server-side filter on counted reads of
// $all, so ReadAll is a filtered SubscribeToAll (the server filters by
// stream prefix) that stops at limit records or at the server's caught-up
// message: only the ledger's events cross the network. Head and CountAfter
// answer from the dedup guard's committed rows, which record every stored
// event's $all position. Subscribe uses the same filtered subscription.
// Filtered subscriptions receive checkpoints while they
// skip foreign events; SubscribeCheckpoints hands them to the caller so its
// stored position advances past those events too. When the subscription
// drops (the client never resubscribes by itself), Subscribe resubscribes
// from the later of the last delivered record and the last checkpoint, and
// drops anything at or before it, so nothing is lost or delivered twice.
// Checkpoints are only as good as the server's: older releases could send
// one at 2^64-1 or past an event not yet delivered (kurrent-io/KurrentDB#4892,
// #4975), so Open refuses them (SupportedServers), and the subscription
// still takes a checkpoint only at an event it skipped (see checkpoint).
// It asks for one checkpoint per 100 search windows.
//
// Every call carries requires-leader (see leader), so a follower never
// answers with a copy that lags.
//
// # Errors
//
// Client errors are classified with errors.As on *esdbclient.Error (esdbclient.FromError
// misses wrapped errors) and, for the raw gRPC errors some calls return, on
// the gRPC status: unavailable, not leader, deadline exceeded, aborted (a
// write that timed out before it was replicated, or a follower's forward to
// the leader that timed out: its fate is unknown, and the guard's step 2
// finds it if it landed) and a closed connection wrap
// eventlog.ErrUnavailable (the webhook answers 503); wrong
// expected version is retried inside Append. Failures of the dedup guard's
// database wrap eventlog.ErrUnavailable as well, and so does a deadline.
//
// Two behaviours of EventStore-Client-Go v4.2.0 around outages are worked
// around here. The client gives up on a server that stays unreachable
// through its discovery attempts and closes itself for good; the Log then
// replaces it with a new client as soon as a call reports the give-up (or,
// later, the closed connection). And a call racing with that give-up blocks
// forever whatever its context: the client's connection goroutine ends
// without taking the requests already handed to it. Every call into the
// client therefore runs detached (see detach) and returns at the first of:
// its result, its context, the Log replacing the client it runs on, or
// stuckCallTimeout. Replacing the client releases every call still waiting
// on the old one at once, so a subscription stuck there resubscribes on the
// new client right away instead of waiting out stuckCallTimeout (its context
// has no deadline).
package esdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/metadata"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// eventIDNamespace is the UUIDv5 namespace of EventID.
var eventIDNamespace = uuid.MustParse("0f5c8e0a-63d4-4f4e-9d3b-6b1c1d2a8e71")

// EventID is the EventStoreDB event id of a Stripe event id: a UUIDv5, the
// same for every delivery of the event.
func EventID(stripeEventID string) uuid.UUID {
	return uuid.NewSHA1(eventIDNamespace, []byte(stripeEventID))
}

// Log is the EventStoreDB event log. It is safe for concurrent use.
//
// The guard pool belongs to the caller: Close does not close it. Stop every
// Subscribe (cancel its context) before Close.
type Log struct {
	config *esdbclient.Configuration
	guard  *pgxpool.Pool
	logger *slog.Logger
	prefix string
	batch  int

	mu     sync.Mutex
	client *connection // replaced by reconnect when it closes itself
	closed bool
	calls  sync.WaitGroup // detached calls in flight; Close lets them return before closing the client

	skipped sync.Map // EventStoreDB stream names whose events decode skipped (logged once)

	// afterAppend, when set (by tests), runs between the append to
	// EventStoreDB and the guard's commit; an error aborts Append there,
	// as a crash would.
	afterAppend func() error
}

// Option configures a Log.
type Option func(*Log)

// WithStreamPrefix stores the ledger's streams under prefix. Without it the
// Log uses the prefix its guard database records, and on first use records
// a generated one, stripe-ledger-<12 random hex digits>-, unique to this
// ledger. A prefix must not start with another application's stream names
// (nor with $, the system streams'); the Log skips foreign events under it
// anyway. An empty prefix is ignored.
func WithStreamPrefix(prefix string) Option {
	return func(l *Log) {
		if prefix != "" {
			l.prefix = prefix
		}
	}
}

// StreamPrefix is the prefix of the EventStoreDB streams that hold the ledger's streams.
func (l *Log) StreamPrefix() string { return l.prefix }

// WithBatchSize sets the largest batch Subscribe hands its handler and the
// page size of $all scans (default 500).
func WithBatchSize(n int) Option {
	return func(l *Log) {
		if n > 0 {
			l.batch = n
		}
	}
}

// Open returns a Log on the EventStoreDB node or cluster of connectionString
// (esdb://host:2113?tls=false, esdb+discover://…) with its dedup guard in the
// guard database, migrated with the ledger's migrations. It connects and
// refuses a server it cannot work with (see checkServer): one older than
// the releases with the checkpoint fixes, or a user that may not read $all.
// A nil logger discards messages.
func Open(ctx context.Context, connectionString string, guard *pgxpool.Pool, logger *slog.Logger, opts ...Option) (*Log, error) {
	l, err := open(connectionString, guard, logger, opts...)
	if err != nil {
		return nil, err
	}
	if l.prefix, err = l.streamPrefix(ctx, l.prefix); err != nil {
		l.Close()
		return nil, fmt.Errorf("esdb event log: %w", err)
	}
	if err := l.checkServer(ctx); err != nil {
		l.Close()
		return nil, fmt.Errorf("esdb event log: %w", err)
	}
	return l, nil
}

// open is Open without connecting.
func open(connectionString string, guard *pgxpool.Pool, logger *slog.Logger, opts ...Option) (*Log, error) {
	if guard == nil {
		return nil, errors.New("esdb event log: the dedup guard database is required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := esdbclient.ParseConnectionString(connectionString)
	if err != nil {
		return nil, fmt.Errorf("esdb event log: parse connection string: %w", err)
	}
	cfg.Logger = func(level esdbclient.LogLevel, format string, args ...any) {
		logger.Debug(fmt.Sprintf(format, args...), "component", "esdb-client", "client_level", level)
	}
	client, err := newConnection(cfg)
	if err != nil {
		return nil, fmt.Errorf("esdb event log: %w", err)
	}
	l := &Log{config: cfg, guard: guard, logger: logger, batch: 500, client: client}
	for _, opt := range opts {
		opt(l)
	}
	return l, nil
}

var _ eventlog.Log = (*Log)(nil)

// connection is one client of the Log, from its creation until the Log
// replaces it (or closes).
type connection struct {
	*esdbclient.Client
	retired chan struct{} // closed when the Log stops using the client
}

func newConnection(cfg *esdbclient.Configuration) (*connection, error) {
	c, err := esdbclient.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	return &connection{Client: c, retired: make(chan struct{})}, nil
}

// Close implements eventlog.Log: it closes the client and releases the calls
// still waiting on it.
func (l *Log) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	c := l.client
	close(c.retired)
	l.mu.Unlock()
	// The v4.2.0 client closes a channel that a call may still be sending on:
	// let the calls in flight return first (a stuck one is not waited for).
	returned := make(chan struct{})
	go func() { l.calls.Wait(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(closeWait):
	}
	_ = c.Close()
}

// closeWait bounds how long Close waits for the calls in flight.
const closeWait = 5 * time.Second

// startCall counts a detached call in flight, unless the Log is closed.
func (l *Log) startCall() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.calls.Add(1)
	return true
}

var errClosed = errors.New("esdb event log is closed")

// conn is the current client.
func (l *Log) conn() (*connection, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errClosed
	}
	return l.client, nil
}

// discoveryGaveUp is how EventStore-Client-Go v4.2.0 words the error of the
// call whose discovery failed, right after the client closed itself
// (discoverNode in esdb/impl.go). The error's code is the last attempt's
// (unavailable, deadline exceeded), so only its text tells that the client is
// gone; the next calls fail with ErrorCodeConnectionClosed.
const discoveryGaveUp = "maximum discovery attempt count reached"

// unusable reports whether err says that the client it came from can serve
// no more calls.
func unusable(err error) bool {
	return hasCode(err, esdbclient.ErrorCodeConnectionClosed) || errors.Is(err, errStuck) ||
		(err != nil && strings.Contains(err.Error(), discoveryGaveUp))
}

// reconnect replaces c with a new client when err says it is unusable (see
// unusable) and it is still the current one, and releases every call still
// waiting on c (see detach). The old client is dropped, not closed: its
// connection goroutine may have ended, and closing its channel would turn a
// call still failing on it into a panic.
func (l *Log) reconnect(c *connection, err error) {
	if !unusable(err) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.client != c {
		return
	}
	fresh, newErr := newConnection(l.config)
	if newErr != nil {
		l.logger.Error("esdb event log: recreate client", "err", newErr)
		return
	}
	l.logger.Warn("esdb event log: client unusable; replaced it", "err", err)
	l.client = fresh
	close(c.retired)
}

// stuckCallTimeout is how long detach waits for a client call that ignores
// its context while its client is still the Log's current one.
const stuckCallTimeout = 20 * time.Second

var (
	errStuck   = errors.New("EventStoreDB client call neither returned nor honoured its context")
	errRetired = errors.New("the log stopped using its EventStoreDB client during the call (the client closed itself, or the log was closed)")
)

// detach runs f, a call into client c, in a goroutine of its own and waits
// for its result, for ctx, for the Log to stop using c, or for
// stuckCallTimeout, whichever comes first. EventStore-Client-Go v4.2.0 can
// block a call forever, whatever its context, when the goroutine that owns
// its connection ends (a rediscovery failed) while the call is handing it a
// request on an unbuffered channel. Waiting here lets the caller go. Every
// error f returns, also one that arrives after the caller left, goes to
// l.reconnect, so the call that sees the client give up replaces it and
// releases the calls stuck on it; errStuck replaces it too. An abandoned call
// that returns late has its result passed to release, when set; one that
// never returns keeps its goroutine until the process exits.
func detach[T any](ctx context.Context, l *Log, c *connection, f func() (T, error), release func(T)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result) // unbuffered: a result is either taken or released
	abandoned := make(chan struct{})
	if !l.startCall() {
		var zero T
		return zero, errClosed
	}
	go func() {
		v, err := f()
		l.calls.Done()
		select {
		case done <- result{v, err}:
		case <-abandoned:
			switch {
			case err != nil:
				l.reconnect(c, err)
			case release != nil:
				release(v)
			}
		}
	}()
	taken := func(r result) (T, error) {
		if r.err != nil {
			l.reconnect(c, r.err)
		}
		return r.v, r.err
	}
	timer := time.NewTimer(stuckCallTimeout)
	defer timer.Stop()
	var (
		zero   T
		reason error
	)
	select {
	case r := <-done:
		return taken(r)
	case <-ctx.Done():
		reason = ctx.Err()
	case <-c.retired:
		reason = errRetired
	case <-timer.C:
		reason = errStuck
		l.reconnect(c, errStuck)
	}
	select {
	case r := <-done: // the result arrived together with the reason to leave: take it
		return taken(r)
	default:
		close(abandoned)
		return zero, reason
	}
}

// leader marks the calls made with ctx as requiring the cluster's leader: a
// follower refuses them with not-leader (the client then reconnects to the
// leader, and the call fails with eventlog.ErrUnavailable to be retried)
// instead of answering from a copy that may lag. EventStore-Client-Go v4.2.0
// never sends the header itself: its RequiresLeader options put it in the
// incoming, not the outgoing, metadata of the call's context.
func leader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "requires-leader", "true")
}

// streamName is the EventStoreDB stream of ledger stream s.
func (l *Log) streamName(s string) string { return l.prefix + s }
