// Package postgres implements eventlog.Log on PostgreSQL (DESIGN §2).
//
// Records live in the events table of migrations/001_event_log.sql. Appends go
// through the ledger_append and ledger_append_batch functions (migrations/functions.sql),
// which serialise the appends of one stream under a transaction-scoped
// advisory lock; appends to different streams commit concurrently.
// Concurrent Appends are grouped into one ledger_append_batch call, one
// transaction and one WAL flush (group commit, see Append); those of one
// stream always go to the same batch or the next, so that they do not
// wait for each other's lock.
//
// The global order is (tx, global_position): the appending transaction's id,
// then a sequence number, exposed as eventlog.Position{Commit: tx, Prepare:
// global_position}. Transactions commit out of id order, so the global readers
// (ReadAll, Subscribe, Head, CountAfter) first take the horizon
// (ledger_horizon: the oldest transaction id still running in this database),
// then, in a later statement, read only rows below it: everything that
// commits later has a tx at or above it, so a reader never meets a late
// commit behind a position it has already passed. ReadStream returns every
// committed record: a stream's appends are serialised, so its versions commit
// in order, and in global order.
//
// Operational caveat: a transaction of the ledger's database that has written
// something and stays open holds the horizon back, and readers see no record
// appended after it began until it ends (a delay, never a loss). Keep writers
// there short (projection batches, migrations, maintenance); a long one shows
// up as projection lag. Transactions of other databases do not matter.
// ReadAll, Head and CountAfter wait (up to the settle timeout) for the
// transactions running when they are called, so that they see every append
// that returned before the call; Subscribe does not wait, it polls again
// shortly while committed records are held back.
//
// Positions go into bigint columns (the projections' checkpoints): a
// transaction id passes 2^63 only after 2^31 wraparounds of the 32-bit
// counter, which no database lives to see.
//
// Subscribe follows the log with LISTEN/NOTIFY on the ledger_events channel.
// Each Log sends at most one NOTIFY per minNotifyInterval, naming the latest
// position it appended. Not every append's transaction notifies (a notifying
// commit takes a database-wide lock, which would serialise every append's
// WAL flush): the first batch of several events stored once the interval
// has passed carries the NOTIFY in its own transaction, and the appends
// committed after it are announced by the next such batch, or, when none
// follows, by a NOTIFY of its own twice the interval after the last. (Every
// announcement its own transaction cost the database about what the appends
// of a commit did, a WAL flush each.) Lone appends, the light load, are
// announced by NOTIFYs of their own after they commit, as before: carried,
// they waited for it (concurrency 1 measured p50 2.0-5.2 ms against 1.6-2.7
// at load average 13-16). Appends made outside a Log (plain SQL) are found
// by the subscribers' poll interval.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

// Log is the PostgreSQL event log. It is safe for concurrent use.
//
// The pool belongs to the caller: Close does not close it. Stop every
// Subscribe (cancel its context) and Close the log before closing the pool.
type Log struct {
	pool          *pgxpool.Pool
	logger        *slog.Logger
	batchSize     int
	pollInterval  time.Duration
	settleTimeout time.Duration
	completeReads bool // a settle that times out is an error, not a shorter answer

	// Group commit (append.go): Append hands its event to the committer
	// goroutine its stream maps to (appends[i] feeds committer i; seed keys
	// the map), started by the first append and stopped by Close, which
	// stores what is waiting in batches of up to maxBatch events and
	// maxBatchBytes of payload.
	committers    int
	maxBatch      int
	maxBatchBytes int
	appends       []chan *appendRequest
	seed          maphash.Seed
	commitOnce    sync.Once
	committing    sync.WaitGroup
	closing       chan struct{}
	closeOnce     sync.Once

	// The notifier: Append records the latest position it committed (latest)
	// and, unless its batch's transaction carried the NOTIFY that names it
	// (claimNotify), wakes one goroutine, started by the first append and
	// stopped by Close, which sends a NOTIFY once none was sent or claimed
	// for minNotifyInterval, twice that when a batch claimed the last
	// (carried); notifiedAt is when the last was claimed. Commits are
	// counted, not compared by position: with several committers a
	// transaction can commit after one with a later position announced it,
	// and still needs a NOTIFY. announced counts the commits that carried
	// no NOTIFY; covered, how many of them a NOTIFY sent or committed since
	// came after (a carried one covers those counted when it was claimed,
	// before its transaction committed).
	notifyOnce   sync.Once
	wake         chan struct{}
	mu           sync.Mutex
	latest       eventlog.Position
	announced    uint64
	covered      uint64
	notifiedAt   time.Time
	carried      bool
	stopNotifier context.CancelFunc
	notifierDone chan struct{}
}

// Option configures a Log.
type Option func(*Log)

// WithBatchSize sets how many records Subscribe reads and hands to its handler
// at a time (default 1000).
func WithBatchSize(n int) Option {
	return func(l *Log) {
		if n > 0 {
			l.batchSize = n
		}
	}
}

// WithPollInterval sets how long Subscribe waits for a notification before
// reading anyway (default 5s). Notifications wake it immediately; the interval
// is only a safety net.
func WithPollInterval(d time.Duration) Option {
	return func(l *Log) {
		if d > 0 {
			l.pollInterval = d
		}
	}
}

// WithSettleTimeout sets how long ReadAll, Head and CountAfter wait for the
// transactions running when they are called to end, so that they include
// every record appended before the call (default 1s). When it passes they
// return what is safe to read, which leaves out the records appended after
// the oldest transaction still running began.
func WithSettleTimeout(d time.Duration) Option {
	return func(l *Log) {
		if d >= 0 {
			l.settleTimeout = d
		}
	}
}

// WithCompleteReads makes ReadAll, Head and CountAfter wait up to d for the
// transactions running when they are called and, if records are still held
// back then, fail with an error wrapping eventlog.ErrUnavailable instead of
// answering with what is safe to read. Auditing commands want this: a short
// answer would look like the end of the log.
func WithCompleteReads(d time.Duration) Option {
	return func(l *Log) {
		l.settleTimeout, l.completeReads = d, true
	}
}

// WithGroupCommit sets how many append batches may commit at once (one
// connection each; default 1) and the most events one batch holds (default
// 128). A batch size of 1 turns grouping off.
func WithGroupCommit(committers, maxBatch int) Option {
	return func(l *Log) {
		if committers > 0 {
			l.committers = committers
		}
		if maxBatch > 0 {
			l.maxBatch = maxBatch
		}
	}
}

// New returns a Log on pool, a database migrated with the ledger's
// migrations. A nil logger discards the log's messages.
func New(pool *pgxpool.Pool, logger *slog.Logger, opts ...Option) *Log {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{pool: pool, logger: logger, batchSize: 1000, pollInterval: 5 * time.Second, settleTimeout: time.Second,
		committers: defaultCommitters, maxBatch: defaultMaxBatch, maxBatchBytes: defaultMaxBatchBytes,
		seed: maphash.MakeSeed(), closing: make(chan struct{}), wake: make(chan struct{}, 1)}
	for _, opt := range opts {
		opt(l)
	}
	l.appends = make([]chan *appendRequest, l.committers)
	for i := range l.appends {
		l.appends[i] = make(chan *appendRequest)
	}
	return l
}

var (
	_ eventlog.Log        = (*Log)(nil)
	_ eventlog.FoldReader = (*Log)(nil)
)

// claimNotify reports whether the batch about to be stored carries the
// NOTIFY (none was sent or claimed for minNotifyInterval) and, if so, how
// many commits had been announced: its NOTIFY covers them.
func (l *Log) claimNotify() (carried bool, announced uint64) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.notifiedAt) < minNotifyInterval {
		return false, 0
	}
	l.notifiedAt, l.carried = now, true
	return true, l.announced
}

// announce wakes subscribers (of every process) to a committed append at
// pos, whose transaction notified them itself when carried is set (claimed
// once announced commits had been).
func (l *Log) announce(pos eventlog.Position, carried bool, announced uint64) {
	l.mu.Lock()
	if l.latest.Less(pos) {
		l.latest = pos
	}
	if carried {
		l.covered = max(l.covered, announced)
	} else {
		l.announced++
	}
	pending := l.covered < l.announced
	l.mu.Unlock()
	if !pending {
		return
	}
	l.notifyOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		l.stopNotifier, l.notifierDone = cancel, make(chan struct{})
		go l.notify(ctx)
	})
	select {
	case l.wake <- struct{}{}:
	default: // the notifier is due to look again
	}
}

// notify sends a NOTIFY naming the latest appended position, each time it
// is woken, once the interval since the last NOTIFY has passed (twice that
// after a carried one, which the next batch is likely to follow), until ctx
// is done. A failed NOTIFY only delays subscribers until their poll
// interval.
func (l *Log) notify(ctx context.Context) {
	defer close(l.notifierDone)
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		}
		for {
			now := time.Now()
			l.mu.Lock()
			wait := minNotifyInterval
			if l.carried {
				wait *= 2
			}
			pos, pending, due := l.latest, l.covered < l.announced, l.notifiedAt.Add(wait)
			if pending && !now.Before(due) {
				// Sent after the commits counted so far: it covers them.
				l.notifiedAt, l.carried, l.covered = now, false, l.announced
			}
			l.mu.Unlock()
			if !pending {
				break
			}
			if now.Before(due) {
				// A batch stored meanwhile carries it, unless the appends stopped.
				if backoff.Sleep(ctx, due.Sub(now)) != nil {
					return
				}
				continue
			}
			payload := strconv.FormatUint(pos.Commit, 10) + "/" + strconv.FormatUint(pos.Prepare, 10)
			if _, err := l.pool.Exec(ctx, "SELECT pg_notify('ledger_events', $1)", payload); err != nil && ctx.Err() == nil {
				l.logger.Warn("notify subscribers of new events; they will poll", "err", err)
			}
			break
		}
	}
}

// minNotifyInterval is the least time between two NOTIFYs of one Log:
// subscribers read at most every minCatchUpInterval anyway.
const minNotifyInterval = minCatchUpInterval / 2

const recordColumns = `tx, global_position, event_id, stream, stream_version, type, api_version,
       created, received_at, account, payload, signature, source, payload_sha256, prev_hash, hash`

const readStreamSQL = `SELECT ` + recordColumns + `
  FROM events WHERE stream = $1 AND stream_version >= $2
 ORDER BY stream_version LIMIT $3`

// ReadStream implements eventlog.Log.
func (l *Log) ReadStream(ctx context.Context, stream string, fromVersion int64, limit int) ([]eventlog.Record, error) {
	recs, err := queryRecords(ctx, l.pool, limit, (*rowScanner).record, readStreamSQL, stream, fromVersion, limit)
	if err != nil {
		return nil, fmt.Errorf("read stream %s from version %d: %w", stream, fromVersion, err)
	}
	return recs, nil
}

// streamHeadSQL reads the last record of stream $1.
const streamHeadSQL = `SELECT ` + recordColumns + `
  FROM events WHERE stream = $1 ORDER BY stream_version DESC LIMIT 1`

// StreamHead implements eventlog.Log.
func (l *Log) StreamHead(ctx context.Context, stream string) (eventlog.Record, bool, error) {
	recs, err := queryRecords(ctx, l.pool, 1, (*rowScanner).record, streamHeadSQL, stream)
	if err != nil {
		return eventlog.Record{}, false, fmt.Errorf("read the head of stream %s: %w", stream, err)
	}
	if len(recs) == 0 {
		return eventlog.Record{}, false, nil
	}
	return recs[0], true, nil
}

// ReadAll implements eventlog.Log.
func (l *Log) ReadAll(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	return l.readAllSettled(ctx, from, limit, readAllSQL, (*rowScanner).record)
}

// ReadAllFold implements eventlog.FoldReader. The payloads of the records
// of one call are cut from shared blocks of 256 KiB (see rowScanner): a
// record kept keeps its block.
func (l *Log) ReadAllFold(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	return l.readAllSettled(ctx, from, limit, readAllFoldSQL, (*rowScanner).foldRecord)
}

// readAllSettled reads with sql (readAllSQL or readAllFoldSQL) the records
// after from below a settled horizon, scanned by scan.
func (l *Log) readAllSettled(ctx context.Context, from eventlog.Position, limit int, sql string,
	scan scanFunc) ([]eventlog.Record, error) {
	horizon, err := l.settle(ctx)
	if err != nil {
		return nil, fmt.Errorf("read all after %s: %w", from, err)
	}
	recs, err := queryRecords(ctx, l.pool, limit, scan, sql, from.Commit, prepareArg(from), limit, horizon)
	if err != nil {
		return nil, fmt.Errorf("read all after %s: %w", from, err)
	}
	return recs, nil
}

// readAllSQL reads the rows after ($1, $2) in the global order, below the
// horizon $4 taken by an earlier statement.
const readAllSQL = `SELECT ` + recordColumns + readAllAfter

// readAllAfter is the part of readAllSQL and readAllFoldSQL after their columns.
const readAllAfter = `
  FROM events WHERE tx < $4::xid8 AND (tx, global_position) > ($1::xid8, $2::bigint)
 ORDER BY tx, global_position LIMIT $3`

// foldColumns are the columns of the records ReadAllFold returns.
const foldColumns = `tx, global_position, event_id, stream, stream_version, type, api_version, created, account, payload`

// readAllFoldSQL is readAllSQL reading only foldColumns.
const readAllFoldSQL = `SELECT ` + foldColumns + readAllAfter

const headSQL = `SELECT tx, global_position FROM events WHERE tx < $1::xid8
 ORDER BY tx DESC, global_position DESC LIMIT 1`

// Head implements eventlog.Log.
func (l *Log) Head(ctx context.Context) (eventlog.Position, error) {
	horizon, err := l.settle(ctx)
	if err != nil {
		return eventlog.Start, fmt.Errorf("read head: %w", err)
	}
	var pos eventlog.Position
	err = l.pool.QueryRow(ctx, headSQL, horizon).Scan(&pos.Commit, &pos.Prepare)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return eventlog.Start, fmt.Errorf("read head: %w", classify(err))
	}
	return pos, nil
}

const countAfterSQL = `SELECT count(*) FROM events
 WHERE tx < $3::xid8 AND (tx, global_position) > ($1::xid8, $2::bigint)`

// CountAfter implements eventlog.Log.
func (l *Log) CountAfter(ctx context.Context, from eventlog.Position) (int64, error) {
	horizon, err := l.settle(ctx)
	if err != nil {
		return 0, fmt.Errorf("count records after %s: %w", from, err)
	}
	var n int64
	if err := l.pool.QueryRow(ctx, countAfterSQL, from.Commit, prepareArg(from), horizon).Scan(&n); err != nil {
		return 0, fmt.Errorf("count records after %s: %w", from, classify(err))
	}
	return n, nil
}

// settleSQL reports the horizon and the largest tx committed so far.
const settleSQL = `SELECT ledger_horizon(), (SELECT tx FROM events ORDER BY tx DESC LIMIT 1)`

// settlePolling spaces settle's reads of the horizon.
var settlePolling = backoff.Policy{Min: time.Millisecond, Max: 50 * time.Millisecond, Jitter: -1}

// settle returns a horizon for a read that follows. It waits until the
// horizon has passed every record committed when it is called, or the settle
// timeout passes, so that the read sees the appends that returned before it
// (read your writes). The transactions it waits for are those of the database
// running now, appends or not; usually they end within a WAL flush.
func (l *Log) settle(ctx context.Context) (uint64, error) {
	var (
		horizon uint64
		last    *uint64
	)
	if err := l.pool.QueryRow(ctx, settleSQL).Scan(&horizon, &last); err != nil {
		return 0, classify(err)
	}
	deadline := time.Now().Add(l.settleTimeout)
	for poll := backoff.New(settlePolling); last != nil && *last >= horizon && time.Now().Before(deadline); {
		if err := backoff.Sleep(ctx, min(poll.Next(), time.Until(deadline))); err != nil {
			return 0, classify(err)
		}
		if err := l.pool.QueryRow(ctx, `SELECT ledger_horizon()`).Scan(&horizon); err != nil {
			return 0, classify(err)
		}
	}
	if l.completeReads && last != nil && *last >= horizon {
		return 0, fmt.Errorf("%w: records are held back by a transaction of the ledger database that has been writing for over %s",
			eventlog.ErrUnavailable, l.settleTimeout)
	}
	return horizon, nil // at the deadline: what is safe to read
}

// Close implements eventlog.Log: it refuses further appends, waits for the
// batches being stored, and stops the notifier. Subscribe's connection
// belongs to the Subscribe call, and the pool is the caller's to close.
func (l *Log) Close() {
	l.closeOnce.Do(func() { close(l.closing) })
	l.commitOnce.Do(func() {}) // no committer starts after Close
	l.committing.Wait()
	l.notifyOnce.Do(func() {}) // no notifier starts after Close
	if l.stopNotifier != nil {
		l.stopNotifier()
		<-l.notifierDone
	}
}

// querier is what *pgxpool.Pool and *pgx.Conn have in common.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// queryRecords runs sql, a query that returns at most limit rows of the
// columns scan reads, and returns its records, scanned by one rowScanner. The slice is made for limit records (up to
// maxReserved), not grown row by row: a rebuild reads chunks of 10,000.
func queryRecords(ctx context.Context, q querier, limit int, scan scanFunc, sql string, args ...any) ([]eventlog.Record, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, classify(err)
	}
	rs := &rowScanner{texts: map[string]string{}}
	recs, err := pgx.AppendRows(make([]eventlog.Record, 0, min(max(limit, 0), maxReserved)), rows,
		func(row pgx.CollectableRow) (eventlog.Record, error) { return scan(rs, row) })
	if err != nil {
		return nil, classify(err)
	}
	return recs, nil
}

// maxReserved bounds the records queryRecords makes room for at once.
const maxReserved = 10_000

// prepareArg is p.Prepare as a global_position bound. No global_position
// exceeds math.MaxInt64, so a larger Prepare means the same as MaxInt64.
func prepareArg(p eventlog.Position) int64 {
	return int64(min(p.Prepare, math.MaxInt64))
}
