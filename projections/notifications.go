package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/notify"
)

// Notifications reads the outbox (outbox.go) in position order: the pull
// feed of GET /v1/notifications and the push worker's source.
type Notifications struct {
	pool *pgxpool.Pool
	poll time.Duration // how often Wait looks again between signals
}

// NewNotifications reads the outbox through pool.
func NewNotifications(pool *pgxpool.Pool) *Notifications {
	return &Notifications{pool: pool, poll: time.Second}
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
// for a commit of new notifications (LISTEN) before answering, perhaps empty.
func (n *Notifications) Wait(ctx context.Context, after int64, limit int, wait time.Duration) ([]notify.Notification, error) {
	page, err := n.After(ctx, after, limit)
	if err != nil || len(page) > 0 || wait <= 0 {
		return page, err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	conn, err := n.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("wait for notifications: %w", err)
	}
	defer func() {
		// The connection goes back to the pool: stop listening on it first.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "UNLISTEN *")
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+NotificationsChannel); err != nil {
		return nil, fmt.Errorf("listen for notifications: %w", err)
	}
	for {
		// Read again after LISTEN: a commit in between would not be signalled.
		page, err := n.After(ctx, after, limit)
		if err != nil || len(page) > 0 {
			return ignoreDeadline(page, err)
		}
		pollCtx, cancelPoll := context.WithTimeout(ctx, n.poll)
		_, err = conn.Conn().WaitForNotification(pollCtx)
		cancelPoll()
		if ctx.Err() != nil {
			return ignoreDeadline(nil, ctx.Err())
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("wait for notifications: %w", err)
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
		return nil, fmt.Errorf("read notifications: %w", err)
	}
	page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (notify.Notification, error) {
		var n notify.Notification
		var data string
		err := row.Scan(&n.Position, &n.ID, &n.Type, &n.Account, &n.CustomerID, &n.EventIDs, &n.OccurredAt, &data)
		n.OccurredAt, n.Data = n.OccurredAt.UTC(), []byte(data)
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("read notifications: %w", err)
	}
	return page, nil
}
