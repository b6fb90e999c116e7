package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/puddle/v2"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

// reconnect spaces the reconnections of a Subscribe whose connection failed.
var reconnect = backoff.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// Subscribe implements eventlog.Log. It holds one pooled connection that
// LISTENs on ledger_events, reads everything after the last delivered position
// in batches, then waits for a notification (or the poll interval) and reads
// again. LISTEN comes before every read, so no commit can fall between the
// read and the wait. Records committed behind a transaction that is still
// running are not read yet (see the package doc); while there are any,
// Subscribe polls again after a short, growing delay instead of the poll
// interval, since the transaction holding them back need not be an append
// and so need not notify. When the connection fails, Subscribe takes a new one and
// resumes after the last record h accepted, so each record is delivered once;
// it only gives up on ctx, on h's error, on a closed pool, or on an error
// other than ErrUnavailable.
func (l *Log) Subscribe(ctx context.Context, from eventlog.Position, h eventlog.Handler) error {
	return l.subscribe(ctx, from, h, readAllSQL, (*rowScanner).record)
}

// SubscribeFold implements eventlog.FoldSubscriber: Subscribe reading
// what ReadAllFold reads.
func (l *Log) SubscribeFold(ctx context.Context, from eventlog.Position, h eventlog.Handler) error {
	return l.subscribe(ctx, from, h, readAllFoldSQL, (*rowScanner).foldRecord)
}

// subscribe is Subscribe reading records with sql (readAllSQL or
// readAllFoldSQL), scanned by scan.
func (l *Log) subscribe(ctx context.Context, from eventlog.Position, h eventlog.Handler, sql string, scan scanFunc) error {
	s := &subscription{Log: l, h: h, pos: from, sql: sql, scan: scan}
	retry := backoff.New(reconnect)
	for {
		err := s.follow(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if hErr, ok := errors.AsType[handlerError](err); ok {
			return hErr.err
		}
		if !errors.Is(err, eventlog.ErrUnavailable) || errors.Is(err, puddle.ErrClosedPool) {
			return err
		}
		if s.listened {
			retry.Reset()
		}
		delay := retry.Next()
		l.logger.WarnContext(ctx, "event log subscription lost the database; reconnecting",
			"after", s.pos.String(), "retry_in", delay.String(), "err", err)
		if err := backoff.Sleep(ctx, delay); err != nil {
			return err
		}
	}
}

// subscription is the state of one Subscribe call.
type subscription struct {
	*Log
	h        eventlog.Handler
	sql      string            // of its reads: readAllSQL or readAllFoldSQL
	scan     scanFunc          // of the rows they read
	pos      eventlog.Position // of the last record h accepted
	listened bool              // the latest connection got as far as LISTEN
}

// handlerError carries the handler's error out of follow untouched.
type handlerError struct{ err error }

func (e handlerError) Error() string { return e.err.Error() }

// follow runs the subscription on one connection until it fails.
func (s *subscription) follow(ctx context.Context) error {
	s.listened = false
	pooled, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("subscribe: acquire connection: %w", classify(err))
	}
	conn := pooled.Conn()
	defer func() {
		// A connection that LISTENs must not go back to the pool: close it,
		// and Release then discards it.
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
		pooled.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN ledger_events"); err != nil {
		return fmt.Errorf("subscribe: listen: %w", classify(err))
	}
	s.listened = true
	heldBackPoll := backoff.New(heldBackPolling)
	var (
		last    time.Time
		spacing time.Duration
	)
	for {
		// Under a stream of commits, each read takes what several of them
		// wrote, instead of paying a horizon and a handler call for each.
		if err := backoff.Sleep(ctx, time.Until(last.Add(spacing))); err != nil {
			return err
		}
		last = time.Now()
		delivered, heldBack, err := s.catchUp(ctx, conn)
		if err != nil {
			return err
		}
		spacing = readSpacing(delivered, time.Since(last))
		timeout := s.pollInterval
		if heldBack {
			timeout = min(heldBackPoll.Next(), s.pollInterval)
		} else {
			heldBackPoll.Reset()
		}
		if err := s.wait(ctx, conn, timeout); err != nil {
			return err
		}
	}
}

// The spacing of a subscription's reads once it has caught up: the least
// time between the starts of two reads. A read that found records and took
// d (the horizon, the read and the handler: for a projection, its fold)
// spaces the next one readDuty times d after its start, within
// minCatchUpInterval and maxCatchUpInterval; one that found none,
// minCatchUpInterval. So the subscription spends at most about 1/readDuty
// of its time reading and handling, and while commits stream in each read
// takes what the commits of that time wrote: a handler's fixed cost per
// call (a projection's statements and round trips) is shared by more
// records as the load grows, or as the machine slows under it. The price
// is delay: a record waits up to the spacing for its read, which grows with
// the load (a bigger batch takes longer, spacing the next one further) up
// to maxCatchUpInterval. A record that commits after an idle spell waits
// for none of this: the last read is long past, so the notification is
// read at once. Four times, up to 200 ms (twice, up to 100 ms, before): at
// c=8 ingest the projection folded 46-47 batches in 8 s instead of 125-151,
// for 9-14% less CPU per delivery, and the notification delay benchmark's
// p50 88-92 ms, p99 246 ms against 45-58 ms, 131-191 ms (load average 10-13).
const (
	minCatchUpInterval = 10 * time.Millisecond
	maxCatchUpInterval = 200 * time.Millisecond
	readDuty           = 4
)

// readSpacing is the least time from the start of a read that delivered
// records and took took to the start of the next.
func readSpacing(delivered int, took time.Duration) time.Duration {
	if delivered == 0 {
		return minCatchUpInterval
	}
	return min(max(readDuty*took, minCatchUpInterval), maxCatchUpInterval)
}

// heldBackPolling spaces the reads while committed records are held back
// (never beyond the poll interval): exact doubling, as a poll, not a retry.
var heldBackPolling = backoff.Policy{Min: 5 * time.Millisecond, Max: time.Second, Jitter: -1}

// horizonSQL takes the horizon and reports whether a record committed by then
// lies at or beyond it, held back. It compares with the largest tx, which the
// index gives at once: an EXISTS (tx >= horizon) was planned, once the
// statement was cached, as a scan of the whole table calling
// ledger_horizon() for every row (usually no row qualifies). OFFSET 0 keeps
// the horizon one call.
const horizonSQL = `SELECT h.h, coalesce((SELECT tx FROM events ORDER BY tx DESC LIMIT 1) >= h.h, false)
  FROM (SELECT ledger_horizon() AS h OFFSET 0) h`

// catchUp hands h every record after s.pos below the horizon, batch by
// batch, and returns how many it delivered. heldBack reports whether records
// committed when it took the horizon were left for later; a record that
// commits after that notifies after it.
func (s *subscription) catchUp(ctx context.Context, conn *pgx.Conn) (delivered int, heldBack bool, err error) {
	var horizon uint64
	if err := conn.QueryRow(ctx, horizonSQL).Scan(&horizon, &heldBack); err != nil {
		return 0, false, fmt.Errorf("subscribe: read horizon: %w", classify(err))
	}
	for {
		batch, err := queryRecords(ctx, conn, s.batchSize, s.scan, s.sql, s.pos.Commit, prepareArg(s.pos), s.batchSize, horizon)
		if err != nil {
			return delivered, false, fmt.Errorf("subscribe: read after %s: %w", s.pos, err)
		}
		if len(batch) == 0 {
			return delivered, heldBack, nil
		}
		if err := s.h(ctx, batch); err != nil {
			return delivered, false, handlerError{err}
		}
		s.pos, delivered = batch[len(batch)-1].Position, delivered+len(batch)
		if len(batch) < s.batchSize {
			return delivered, heldBack, nil
		}
	}
}

// wait blocks until a notification announces a record after s.pos, or
// timeout passes. Notifications that arrived while catchUp was reading name
// records it has already delivered; they are skipped without a query.
func (s *subscription) wait(ctx context.Context, conn *pgx.Conn, timeout time.Duration) error {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(waitCtx)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case waitCtx.Err() != nil:
			return nil // poll anyway
		case err != nil:
			return fmt.Errorf("subscribe: wait for notification: %w", classify(err))
		}
		var pos eventlog.Position
		if err := pos.UnmarshalText([]byte(n.Payload)); err != nil || s.pos.Less(pos) {
			return nil
		}
	}
}
