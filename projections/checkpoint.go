package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

// checkpoint is a projection's row of projection_checkpoints: the live
// version, its schema, and the position of the last event applied to it.
// The position is written and read as it is held, eventlog.Position's
// uint64s, into and out of bigint columns: pgx refuses a value beyond int64
// either way rather than wrapping it.
type checkpoint struct {
	Version  int
	Schema   string
	Position eventlog.Position
	Plans    pgtype.Text // the canonical plan mapping it was folded with; not Valid: not recorded
}

// errCheckpointMoved reports that the checkpoint is no longer where the
// caller left it: another runner advanced it, or a rebuild swapped schemas.
var errCheckpointMoved = errors.New("checkpoint moved: another runner or a rebuild got there first")

const selectCheckpointSQL = `SELECT version, schema_name, position, prepare, plans FROM projection_checkpoints WHERE name = $1`

// loadCheckpoint reads name's checkpoint; ok is false when it has none.
// suffix is appended to the query (FOR UPDATE, FOR SHARE).
func loadCheckpoint(ctx context.Context, q pgxQuerier, name, suffix string) (cp checkpoint, ok bool, err error) {
	err = q.QueryRow(ctx, selectCheckpointSQL+suffix, name).Scan(&cp.Version, &cp.Schema, &cp.Position.Commit, &cp.Position.Prepare, &cp.Plans)
	if errors.Is(err, pgx.ErrNoRows) {
		return checkpoint{}, false, nil
	}
	if err != nil {
		return checkpoint{}, false, fmt.Errorf("read checkpoint of %s: %w", name, err)
	}
	return cp, true, nil
}

// pgxQuerier is what pools, connections and transactions have in common.
type pgxQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// advance moves name's checkpoint from cp to pos, within the caller's
// transaction, if nobody moved it since cp was read; else errCheckpointMoved.
// It takes the row lock before the batch writes anything, so a runner and a
// swap always lock the row first and the read model tables second. It
// returns the row's xmin before and after the move: the live runner's own
// last commit left the row at was unless another writer updated it since
// (heldStates).
func advance(ctx context.Context, tx pgx.Tx, name string, cp checkpoint, pos eventlog.Position) (was, now uint32, err error) {
	err = tx.QueryRow(ctx, advanceSQL, name, cp.Schema, cp.Position.Commit, cp.Position.Prepare, pos.Commit, pos.Prepare).Scan(&was, &now)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, errCheckpointMoved
	}
	if err != nil {
		return 0, 0, fmt.Errorf("advance checkpoint of %s to %s: %w", name, pos, err)
	}
	return was, now, nil
}

// advanceSQL is advance's compare-and-set. The CTE locks the row before
// the update reads it, and keeps its xmin from before.
const advanceSQL = `WITH held AS (
  SELECT xmin AS x FROM projection_checkpoints
   WHERE name = $1 AND schema_name = $2 AND position = $3 AND prepare = $4 FOR UPDATE)
UPDATE projection_checkpoints c SET position = $5, prepare = $6, updated_at = clock_timestamp()
  FROM held WHERE c.name = $1
RETURNING held.x, c.xmin`

// Advisory lock classes: the first key of pg_try_advisory_lock(int, int),
// the second being hashtext(projection name).
const (
	runLockClass   = 0x4c50524e // 'LPRN': the runner of a projection
	buildLockClass = 0x4c504244 // 'LPBD': a build (new version, rebuild, diff)
)

// lockCheckInterval is how often a held lock's connection is pinged, so that
// a holder whose connection died stops instead of working without the lock.
const lockCheckInterval = 5 * time.Second

// sessionLock is a session-level advisory lock held on a dedicated
// connection. Its context is cancelled when the connection fails.
type sessionLock struct {
	conn   *pgxpool.Conn
	class  int32
	name   string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// errLocked reports that another session holds the lock.
var errLocked = errors.New("held by another session")

// tryLock takes the class lock of name, or fails with errLocked.
func tryLock(ctx context.Context, pool *pgxpool.Pool, class int32, name string, logger *slog.Logger) (*sessionLock, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire connection for lock: %w", err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, class, name).Scan(&ok); err != nil {
		conn.Release()
		return nil, fmt.Errorf("take lock of %s: %w", name, err)
	}
	if !ok {
		conn.Release()
		return nil, errLocked
	}
	l := &sessionLock{conn: conn, class: class, name: name}
	l.ctx, l.cancel = context.WithCancel(ctx)
	l.wg.Go(func() { l.watch(logger) })
	return l, nil
}

// lock takes the class lock of name, retrying every interval until ctx is done.
func lock(ctx context.Context, pool *pgxpool.Pool, class int32, name string, interval time.Duration, logger *slog.Logger) (*sessionLock, error) {
	for {
		l, err := tryLock(ctx, pool, class, name, logger)
		if !errors.Is(err, errLocked) {
			return l, err
		}
		if err := backoff.Sleep(ctx, interval); err != nil {
			return nil, err
		}
	}
}

func (l *sessionLock) watch(logger *slog.Logger) {
	t := time.NewTicker(lockCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
			if err := l.conn.Ping(l.ctx); err != nil && l.ctx.Err() == nil {
				logger.Warn("projection lock connection lost; stopping", "err", err) // logger names the projection
				l.cancel()
				return
			}
		}
	}
}

// Context is cancelled when the lock is released or its connection fails.
func (l *sessionLock) Context() context.Context { return l.ctx }

// Release unlocks and returns the connection; a connection that cannot
// unlock is closed, which releases the lock too.
func (l *sessionLock) Release() {
	l.cancel()
	l.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, l.class, l.name); err != nil {
		_ = l.conn.Conn().Close(ctx)
	}
	l.conn.Release()
}
