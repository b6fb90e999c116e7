// Package postgres implements eventlog.Log on PostgreSQL (DESIGN §2).
//
// Records live in the events table of migrations/001_event_log.sql. Appends go
// through the ledger_append function, which serialises them under one
// transaction-scoped advisory lock, so they commit in global_position order and
// a reader never meets a late commit behind a position it has already passed.
// Subscribe follows the log with LISTEN/NOTIFY on the ledger_events channel.
package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Log is the PostgreSQL event log. It is safe for concurrent use.
//
// The pool belongs to the caller: Close does not close it. Stop every
// Subscribe (cancel its context) and Close the log before closing the pool.
type Log struct {
	pool         *pgxpool.Pool
	logger       *slog.Logger
	batchSize    int
	pollInterval time.Duration
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

// New returns a Log on pool, a database migrated with the ledger's
// migrations. A nil logger discards the log's messages.
func New(pool *pgxpool.Pool, logger *slog.Logger, opts ...Option) *Log {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{pool: pool, logger: logger, batchSize: 1000, pollInterval: 5 * time.Second}
	for _, opt := range opts {
		opt(l)
	}
	return l
}

var _ eventlog.Log = (*Log)(nil)

// appendSQL is one statement, hence one implicit transaction: the advisory
// lock ledger_append takes is released only when that transaction commits.
const appendSQL = `SELECT duplicate, stream_version, global_position
  FROM ledger_append($1, $2, $3, $4, $5, $6, $7, $8)`

// Append implements eventlog.Log. It returns once the row is committed, which
// with synchronous_commit on (the default) means flushed to the WAL.
func (l *Log) Append(ctx context.Context, e eventlog.Event) (eventlog.AppendResult, error) {
	if e.ID == "" || e.Stream == "" {
		return eventlog.AppendResult{}, fmt.Errorf("append %q to stream %q: event id and stream are required", e.ID, e.Stream)
	}
	var (
		res eventlog.AppendResult
		pos int64
	)
	err := l.pool.QueryRow(ctx, appendSQL, e.ID, e.Stream, e.Type, e.APIVersion, e.Created,
		e.Account, e.Payload, e.Signature).Scan(&res.Duplicate, &res.StreamVersion, &pos)
	if err != nil {
		return eventlog.AppendResult{}, fmt.Errorf("append %s to %s: %w", e.ID, e.Stream, classify(err))
	}
	res.Position = position(pos)
	return res, nil
}

const recordColumns = `global_position, event_id, stream, stream_version, type, api_version,
       created, received_at, account, payload, signature, payload_sha256, prev_hash, hash`

const readStreamSQL = `SELECT ` + recordColumns + `
  FROM events WHERE stream = $1 AND stream_version >= $2
 ORDER BY stream_version LIMIT $3`

// ReadStream implements eventlog.Log.
func (l *Log) ReadStream(ctx context.Context, stream string, fromVersion int64, limit int) ([]eventlog.Record, error) {
	recs, err := queryRecords(ctx, l.pool, readStreamSQL, stream, fromVersion, limit)
	if err != nil {
		return nil, fmt.Errorf("read stream %s from version %d: %w", stream, fromVersion, err)
	}
	return recs, nil
}

// ReadAll implements eventlog.Log.
func (l *Log) ReadAll(ctx context.Context, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	recs, err := readAll(ctx, l.pool, from, limit)
	if err != nil {
		return nil, fmt.Errorf("read all after %s: %w", from, err)
	}
	return recs, nil
}

const readAllSQL = `SELECT ` + recordColumns + `
  FROM events WHERE global_position > $1
 ORDER BY global_position LIMIT $2`

// readAll is shared by ReadAll (on the pool) and Subscribe (on its own connection).
func readAll(ctx context.Context, q querier, from eventlog.Position, limit int) ([]eventlog.Record, error) {
	return queryRecords(ctx, q, readAllSQL, lastPositionAtOrBefore(from), limit)
}

// Head implements eventlog.Log.
func (l *Log) Head(ctx context.Context) (eventlog.Position, error) {
	var pos int64
	if err := l.pool.QueryRow(ctx, `SELECT coalesce(max(global_position), 0) FROM events`).Scan(&pos); err != nil {
		return eventlog.Start, fmt.Errorf("read head: %w", classify(err))
	}
	return position(pos), nil
}

// CountAfter implements eventlog.Log.
func (l *Log) CountAfter(ctx context.Context, from eventlog.Position) (int64, error) {
	var n int64
	err := l.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE global_position > $1`,
		lastPositionAtOrBefore(from)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count records after %s: %w", from, classify(err))
	}
	return n, nil
}

// Close implements eventlog.Log. The Log holds nothing of its own between
// calls (Subscribe's connection belongs to the Subscribe call), and the pool
// is the caller's to close, so Close does nothing.
func (l *Log) Close() {}

// querier is what *pgxpool.Pool and *pgx.Conn have in common.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func queryRecords(ctx context.Context, q querier, sql string, args ...any) ([]eventlog.Record, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, classify(err)
	}
	recs, err := pgx.CollectRows(rows, scanRecord)
	if err != nil {
		return nil, classify(err)
	}
	return recs, nil
}

func scanRecord(row pgx.CollectableRow) (eventlog.Record, error) {
	var (
		r   eventlog.Record
		pos int64
	)
	err := row.Scan(&pos, &r.ID, &r.Stream, &r.StreamVersion, &r.Type, &r.APIVersion,
		&r.Created, &r.ReceivedAt, &r.Account, &r.Payload, &r.Signature,
		&r.PayloadSHA256, &r.PrevHash, &r.Hash)
	r.Position = position(pos)
	r.Created, r.ReceivedAt = r.Created.UTC(), r.ReceivedAt.UTC()
	return r, err
}

// position is the eventlog.Position of a global_position: PostgreSQL has a
// single number, which Prepare mirrors.
func position(globalPosition int64) eventlog.Position {
	return eventlog.Position{Commit: uint64(globalPosition), Prepare: uint64(globalPosition)}
}

// lastPositionAtOrBefore is the largest global_position n whose record
// (Position{n, n}) does not come after p in eventlog.Position order: records
// after p are exactly those with global_position > it. Positions this backend
// hands out have Commit == Prepare, for which it is simply Commit.
func lastPositionAtOrBefore(p eventlog.Position) int64 {
	n := p.Commit
	if p.Prepare < p.Commit {
		n-- // {n, n} comes after {n, prepare < n}
	}
	return int64(min(n, math.MaxInt64))
}
