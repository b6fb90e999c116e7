package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// ReceiverStatuses reads every receiver's row, by name.
func ReceiverStatuses(ctx context.Context, pool *pgxpool.Pool) ([]report.ReceiverStatus, error) {
	rows, err := pool.Query(ctx, `SELECT r.receiver, r.position,
       (SELECT count(*) FROM notifications n WHERE n.position > r.position),
       r.delivered, r.failing_id, r.failing_since, r.attempts, r.last_error,
       (SELECT count(*) FROM notification_abandoned a WHERE a.receiver = r.receiver), r.updated_at
  FROM notification_receivers r ORDER BY r.receiver`)
	if err != nil {
		return nil, fmt.Errorf("read notification receivers: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (report.ReceiverStatus, error) {
		var st report.ReceiverStatus
		err := row.Scan(&st.Receiver, &st.Position, &st.Pending, &st.Delivered, &st.FailingID, &st.FailingSince, &st.Attempts, &st.LastError, &st.Abandoned, &st.UpdatedAt)
		return st, err
	})
}

// ErrNoNotification reports that Replay found no notification to start from.
var ErrNoNotification = errors.New("no such notification")

// Replay moves the cursors of the receivers named (none: all) back so that
// they are sent again: every notification derived at or after since, or,
// with id, that notification and every one after it (receivers deduplicate
// by id). It returns the receivers moved.
func Replay(ctx context.Context, pool *pgxpool.Pool, receivers []string, since time.Time, id string) (int64, error) {
	var start int64
	var err error
	if id != "" {
		err = pool.QueryRow(ctx, `SELECT position FROM notifications WHERE id = $1`, id).Scan(&start)
	} else {
		err = pool.QueryRow(ctx, `SELECT position FROM notifications WHERE derived_at >= $1 ORDER BY position LIMIT 1`, since).Scan(&start)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ErrNoNotification
	}
	if err != nil {
		return 0, fmt.Errorf("find notification to replay from: %w", err)
	}
	tag, err := pool.Exec(ctx, `UPDATE notification_receivers
   SET position = least(position, $1), failing_id = '', failing_since = NULL, attempts = 0, updated_at = clock_timestamp()
 WHERE coalesce(cardinality($2::text[]), 0) = 0 OR receiver = ANY($2)`, start-1, receivers)
	if err != nil {
		return 0, fmt.Errorf("replay notifications: %w", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM notification_abandoned WHERE position >= $1 AND (coalesce(cardinality($2::text[]), 0) = 0 OR receiver = ANY($2))`,
		start, receivers); err != nil {
		return 0, fmt.Errorf("replay notifications: %w", err)
	}
	return tag.RowsAffected(), nil
}
