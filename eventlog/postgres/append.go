package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Group commit defaults: committers is how many batches may be in flight at
// once (one connection each), maxBatch and maxBatchBytes bound one batch.
// One committer by default: every append waits for the one batch in flight
// and joins the next, so batches grow with the load. A batch of two costs
// PostgreSQL about as much as two lone appends (ledger_append_batch's fixed
// cost is about 1.5 ledger_append's; pgbench on the functions alone), so
// only batches of about four and more pay. Measured with bench/ingest.sh at
// concurrency 8 (12,000 deliveries, the machine shared, load average 5-7):
// 8 committers (each stream mapped to one) stored 1.5 events per commit at
// 728-824 CPU-us per delivery (ledger + backends), one committer 3.9 events
// per commit at 612-625, with p99 unchanged. The price is head-of-line
// waiting: an append that waits for a stream lock held by another process
// delays the appends of every stream queued behind its batch. Several
// committers (WithGroupCommit) each take the streams that map to them.
const (
	defaultCommitters    = 1
	defaultMaxBatch      = 128
	defaultMaxBatchBytes = 8 << 20
)

// errClosed answers appends made after Close.
var errClosed = errors.New("event log closed")

// appendRequest is one Append waiting for the batch it joined to commit.
type appendRequest struct {
	ctx  context.Context
	e    eventlog.Event
	done chan appendAnswer // buffered: the committer never waits for the caller
}

type appendAnswer struct {
	res eventlog.AppendResult
	err error
}

// appendSQL and appendBatchSQL are one statement each, hence one implicit
// transaction: the stream locks the functions take are released only when
// that transaction commits, and each is its transaction's first write, as
// they require. A lone event goes through ledger_append, which costs the
// database less than a batch of one.
//
// notifySQL follows appendBatchSQL in the same implicit transaction (a
// pipeline ends it with one Sync) when the batch carries the NOTIFY that
// announces it (claimNotify): delivered at that commit, it names the
// transaction and its last position, the one nextval gave last in this
// session. A batch of duplicates has no transaction id and announces
// nothing.
const (
	appendSQL = `SELECT duplicate, stream_version, tx, global_position
  FROM ledger_append($1, $2, $3, $4, $5, $6, $7, $8, $9)`
	appendBatchSQL = `SELECT ord, duplicate, stream_version, tx, global_position
  FROM ledger_append_batch($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bytea[], $8::text[], $9::text[])`
	notifySQL = `SELECT pg_notify('ledger_events', pg_current_xact_id()::text || '/' || currval('events_global_position_seq'))
 WHERE pg_current_xact_id_if_assigned() IS NOT NULL`
)

// Append implements eventlog.Log. It returns once the row is committed, which
// with synchronous_commit on (the default) means flushed to the WAL.
//
// Concurrent appends are grouped. Each stream maps to one committer (a hash
// of the stream, modulo the committers), which stores what is waiting for it
// in one transaction (ledger_append_batch) whenever it is free, so that the
// appends share one WAL flush. Appends of one stream made while an earlier
// one commits thus join one batch, where they take dense versions in arrival
// order under one stream lock, instead of each waiting for the lock in a
// transaction of its own; with several committers (WithGroupCommit), other
// streams commit in parallel on the others. Each append is answered once its transaction has committed;
// when that fails for want of the database, every append in it fails with
// ErrUnavailable and none is stored. Any other failure (an event the
// database refuses) is retried one event at a time, so that it fails that
// event alone.
func (l *Log) Append(ctx context.Context, e eventlog.Event) (eventlog.AppendResult, error) {
	if e.ID == "" || e.Stream == "" {
		return eventlog.AppendResult{}, fmt.Errorf("append %q to stream %q: event id and stream are required", e.ID, e.Stream)
	}
	if err := ctx.Err(); err != nil {
		return eventlog.AppendResult{}, fmt.Errorf("append %s to %s: %w", e.ID, e.Stream, classify(err))
	}
	l.startCommitters()
	req := &appendRequest{ctx: ctx, e: e, done: make(chan appendAnswer, 1)}
	select {
	case l.appends[maphash.String(l.seed, e.Stream)%uint64(len(l.appends))] <- req:
	case <-l.closing:
		return eventlog.AppendResult{}, fmt.Errorf("append %s to %s: %w", e.ID, e.Stream, errClosed)
	case <-ctx.Done():
		return eventlog.AppendResult{}, fmt.Errorf("append %s to %s: %w", e.ID, e.Stream, classify(ctx.Err()))
	}
	select {
	case a := <-req.done:
		return a.res, a.err
	case <-ctx.Done():
		// The batch may still commit it: a retry is then answered as a duplicate.
		return eventlog.AppendResult{}, fmt.Errorf("append %s to %s: %w", e.ID, e.Stream, classify(ctx.Err()))
	}
}

// startCommitters starts the committer goroutines on the first append; Close stops them.
func (l *Log) startCommitters() {
	l.commitOnce.Do(func() {
		for _, appends := range l.appends {
			l.committing.Go(func() { l.commit(appends) })
		}
	})
}

// commit takes the appends waiting on appends, a batch at a time, and
// stores them, until Close.
func (l *Log) commit(appends <-chan *appendRequest) {
	var batch []*appendRequest // reused: store is done with it when it returns
	for {
		var first *appendRequest
		select {
		case first = <-appends:
		case <-l.closing:
			return
		}
		batch = l.gather(appends, append(batch[:0], first))
		l.store(batch)
		clear(batch) // let the answered requests go
	}
}

// gather appends to batch (holding the first request) the appends waiting
// behind it on appends, within the batch limits.
func (l *Log) gather(appends <-chan *appendRequest, batch []*appendRequest) []*appendRequest {
	size := len(batch[0].e.Payload)
	for len(batch) < l.maxBatch && size < l.maxBatchBytes {
		select {
		case req := <-appends:
			batch, size = append(batch, req), size+len(req.e.Payload)
		default:
			return batch
		}
	}
	return batch
}

// store appends batch in one transaction and answers each request. A batch
// the database refuses for another reason than unavailability is stored one
// event at a time instead, so that only the offending event fails.
func (l *Log) store(batch []*appendRequest) {
	live := batch[:0]
	for _, req := range batch {
		if err := req.ctx.Err(); err != nil {
			req.done <- appendAnswer{err: fmt.Errorf("append %s to %s: %w", req.e.ID, req.e.Stream, classify(err))}
			continue
		}
		live = append(live, req)
	}
	if len(live) == 0 {
		return
	}
	var (
		carried   bool
		announced uint64
	)
	if len(live) > 1 {
		carried, announced = l.claimNotify()
	}
	results, err := l.appendBatch(live, carried)
	if err != nil && !unavailable(err) && len(live) > 1 {
		for _, req := range live {
			l.store([]*appendRequest{req})
		}
		return
	}
	var latest eventlog.Position
	for i, req := range live {
		if err != nil {
			req.done <- appendAnswer{err: fmt.Errorf("append %s to %s: %w", req.e.ID, req.e.Stream, classify(err))}
			continue
		}
		req.done <- appendAnswer{res: results[i]}
		if !results[i].Duplicate && latest.Less(results[i].Position) {
			latest = results[i].Position
		}
	}
	if latest != eventlog.Start {
		l.announce(latest, carried, announced)
	}
}

// appendBatch runs ledger_append (one event) or ledger_append_batch on
// batch, the latter followed in its transaction by notifySQL when notify
// is set (store claims the NOTIFY for batches of several only). Its
// context ends when every request in the batch has given up waiting.
func (l *Log) appendBatch(batch []*appendRequest, notify bool) ([]eventlog.AppendResult, error) {
	if len(batch) == 1 {
		// Its context ends with its one request's.
		e := batch[0].e
		var res eventlog.AppendResult
		err := l.pool.QueryRow(batch[0].ctx, appendSQL, e.ID, e.Stream, e.Type, e.APIVersion, e.Created, e.Account, e.Payload, e.Signature,
			string(e.Source.OrWebhook())).
			Scan(&res.Duplicate, &res.StreamVersion, &res.Position.Commit, &res.Position.Prepare)
		return []eventlog.AppendResult{res}, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := make(chan struct{}, len(batch))
	for _, req := range batch {
		stop := context.AfterFunc(req.ctx, func() {
			waiting <- struct{}{}
			if len(waiting) == len(batch) {
				cancel()
			}
		})
		defer stop()
	}
	n := len(batch)
	var (
		ids, streams, types, apiVersions = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		accounts, signatures, sources    = make([]string, n), make([]string, n), make([]string, n)
		created                          = make([]time.Time, n)
		payloads                         = make([][]byte, n)
	)
	for i, req := range batch {
		e := req.e
		ids[i], streams[i], types[i], apiVersions[i] = e.ID, e.Stream, e.Type, e.APIVersion
		accounts[i], signatures[i], created[i], payloads[i] = e.Account, e.Signature, e.Created, e.Payload
		sources[i] = string(e.Source.OrWebhook())
	}
	results := make([]eventlog.AppendResult, n)
	err := l.query(ctx, notify, func(rows pgx.Rows) error {
		seen := 0
		for rows.Next() {
			var (
				ord int64
				res eventlog.AppendResult
			)
			if err := rows.Scan(&ord, &res.Duplicate, &res.StreamVersion, &res.Position.Commit, &res.Position.Prepare); err != nil {
				return err
			}
			if ord < 1 || ord > int64(n) {
				return fmt.Errorf("ledger_append_batch answered for event %d of %d", ord, n)
			}
			results[ord-1] = res
			seen++
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if seen != n {
			return fmt.Errorf("ledger_append_batch answered for %d of %d events", seen, n)
		}
		return nil
	}, appendBatchSQL, ids, streams, types, apiVersions, created, accounts, payloads, signatures, sources)
	if err != nil {
		return nil, err
	}
	return results, nil
}

// query runs sql with args, a transaction of its own, and hands its rows to
// read; with notify the transaction runs notifySQL after it. Its error is
// the transaction's: the commit's included.
func (l *Log) query(ctx context.Context, notify bool, read func(pgx.Rows) error, sql string, args ...any) error {
	if notify {
		b := &pgx.Batch{}
		b.Queue(sql, args...).Query(read)
		b.Queue(notifySQL)
		return l.pool.SendBatch(ctx, b).Close()
	}
	rows, err := l.pool.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if err := read(rows); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}
