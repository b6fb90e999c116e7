package projections

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// Notifications reads the outbox (outbox.go) in position order: the pull
// feed of GET /v1/notifications and the push worker's source.
//
// A waiting long poll holds no pooled connection: while any Wait waits, one
// listener per Notifications holds a connection of its own (outside the
// pool) that LISTENs on NotificationsChannel and wakes every waiter, which
// then reads with a briefly acquired pooled connection. So idle pull
// clients never take the webhook's connections.
type Notifications struct {
	pool *pgxpool.Pool
	poll time.Duration // how often waiters look again while the listener is not listening

	// MaxWaiting bounds the long polls that wait at once; one more is
	// refused with EUNAVAILABLE (503). Zero means DefaultMaxWaiting.
	MaxWaiting int

	reads chan struct{} // a token per concurrent wake-up read, so a wake-up leaves the pool to the webhook

	mu        sync.Mutex
	waiting   int
	changed   chan struct{} // closed, and replaced, when waiters should read again
	listening bool          // a listener runs
}

// DefaultMaxWaiting is how many long polls one process lets wait at once.
const DefaultMaxWaiting = 1000

// NewNotifications reads the outbox through pool.
func NewNotifications(pool *pgxpool.Pool) *Notifications {
	reads := int32(1)
	if pool != nil {
		reads = max(reads, pool.Config().MaxConns/4)
	}
	return &Notifications{pool: pool, poll: time.Second, changed: make(chan struct{}), reads: make(chan struct{}, reads)}
}

// MaxNotificationsPage is the most notifications After returns at once.
const MaxNotificationsPage = 1000

const selectNotificationsSQL = `SELECT position, id, type, account, customer_id, event_ids, occurred_at, data::text
  FROM notifications WHERE position > $1 ORDER BY position LIMIT $2`

// After returns up to limit notifications after position after, in order.
func (n *Notifications) After(ctx context.Context, after int64, limit int) ([]notify.Notification, error) {
	return readNotifications(ctx, n.pool, selectNotificationsSQL, after, min(max(limit, 1), MaxNotificationsPage))
}

// Wait is After, but when there is nothing after after it waits up to wait
// for a commit of new notifications before answering, perhaps empty. It
// holds no pooled connection while it waits.
func (n *Notifications) Wait(ctx context.Context, after int64, limit int, wait time.Duration) ([]notify.Notification, error) {
	page, err := n.After(ctx, after, limit)
	if err != nil || len(page) > 0 || wait <= 0 {
		return page, err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	changed, err := n.startWaiting()
	if err != nil {
		return nil, err
	}
	defer n.stopWaiting()
	for {
		// The signal is taken before the read, so a commit after the read
		// still wakes this waiter.
		select {
		case n.reads <- struct{}{}:
		case <-ctx.Done():
			return ignoreDeadline(nil, ctx.Err())
		}
		page, err := n.After(ctx, after, limit)
		<-n.reads
		if err != nil || len(page) > 0 {
			return ignoreDeadline(page, err)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ignoreDeadline(nil, ctx.Err())
		}
		changed = n.signal()
	}
}

// startWaiting counts a waiter in, starting the listener if none runs, and
// returns the signal to wait for.
func (n *Notifications) startWaiting() (<-chan struct{}, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	limit := n.MaxWaiting
	if limit <= 0 {
		limit = DefaultMaxWaiting
	}
	if n.waiting >= limit {
		return nil, domain.Errorf(domain.EUNAVAILABLE, "%d long polls are already waiting, the most this process serves; retry later, or poll without wait", limit)
	}
	n.waiting++
	if !n.listening {
		n.listening = true
		go n.listen() // it stops itself once no one waits
	}
	return n.changed, nil
}

// stopWaiting counts a waiter out.
func (n *Notifications) stopWaiting() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.waiting--
}

// signal returns the current wake-up channel.
func (n *Notifications) signal() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changed
}

// wake tells every waiter to read again.
func (n *Notifications) wake() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.changed)
	n.changed = make(chan struct{})
}

// idle reports that no one waits, and if so marks the listener stopped.
func (n *Notifications) idle() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.waiting == 0 {
		n.listening = false
	}
	return !n.listening
}

// listenerLinger is how long, at most, the listener outlives the last waiter, so
// that a client polling in a loop (or the sender) does not reconnect it
// for each poll; it is also how often an idle listener pings its connection.
const listenerLinger = 30 * time.Second

// listen wakes the waiters on each commit of notifications, on a connection
// of its own, until no one has waited for listenerLinger. Each (re)connection
// wakes them too (a commit before LISTEN was not signalled), and while it
// cannot listen they look again every poll (and meet the outage).
func (n *Notifications) listen() {
	for {
		if stopped := n.listenOnce(); stopped || n.idle() {
			return
		}
		n.wake()
		time.Sleep(n.poll)
		if n.idle() {
			return
		}
	}
}

// listenOnce listens on one connection until it fails, or until the
// listener is idle (stopped is then true).
func (n *Notifications) listenOnce() (stopped bool) {
	ctx := context.Background()
	connectCtx, cancel := context.WithTimeout(ctx, listenerLinger)
	defer cancel()
	conn, err := pgx.ConnectConfig(connectCtx, n.pool.Config().ConnConfig)
	if err != nil {
		return false
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(connectCtx, "LISTEN "+NotificationsChannel); err != nil {
		return false
	}
	n.wake()
	for {
		waitCtx, cancel := context.WithTimeout(ctx, listenerLinger)
		_, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			n.wake()
		case !errors.Is(err, context.DeadlineExceeded):
			return false
		case n.idle():
			return true
		default: // a quiet spell: make sure the connection still listens
			pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return false
			}
		}
	}
}

// ignoreDeadline makes the end of a long poll's wait an empty answer.
func ignoreDeadline(page []notify.Notification, err error) ([]notify.Notification, error) {
	if errors.Is(err, context.DeadlineExceeded) {
		return page, nil
	}
	return page, err
}

// Notification returns the notification with id; ok is false when none has it.
func (n *Notifications) Notification(ctx context.Context, id string) (notify.Notification, bool, error) {
	page, err := readNotifications(ctx, n.pool, `SELECT position, id, type, account, customer_id, event_ids, occurred_at, data::text
  FROM notifications WHERE id = $1`, id)
	if err != nil || len(page) == 0 {
		return notify.Notification{}, false, err
	}
	return page[0], true, nil
}

func readNotifications(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) ([]notify.Notification, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, notificationsError(err)
	}
	page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (notify.Notification, error) {
		var n notify.Notification
		var data string
		err := row.Scan(&n.Position, &n.ID, &n.Type, &n.Account, &n.CustomerID, &n.EventIDs, &n.OccurredAt, &data)
		n.OccurredAt, n.Data = n.OccurredAt.UTC(), []byte(data)
		return n, err
	})
	if err != nil {
		return nil, notificationsError(err)
	}
	return page, nil
}

// notificationsError classifies a failed read of the outbox: an unreachable
// or overloaded database is eventlog.ErrUnavailable (503, retry later).
func notificationsError(err error) error {
	if postgres.IsUnavailable(err) {
		return fmt.Errorf("read notifications: %w", errors.Join(err, eventlog.ErrUnavailable))
	}
	return fmt.Errorf("read notifications: %w", err)
}
