package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

// Runner keeps one projection's live read model current, on whichever
// replica holds the projection's lock. See the package documentation.
type Runner struct {
	pool    *pgxpool.Pool
	log     eventlog.Log
	p       Projection
	logger  *slog.Logger
	metrics *metrics

	lockRetry time.Duration  // how often a replica without the lock tries again
	retry     backoff.Policy // after an error; capped short: the runner resumes soon after the database returns
	batchSize int            // of builds; live batches are the log's
	fillChunk int            // records per read of a build's fill; 0: fillChunk
	catchUp   batchSizes     // of the catch-up before following the log live
}

// Catch-up batches: a runner behind the head reads the log itself, in
// batches growing from catchUpFirst to catchUpMax records, before it
// follows the log live in the log's own (small) batches; a live batch of
// catchUpFirst records or more means it fell behind again.
const (
	catchUpFirst = 1000
	catchUpMax   = 16_000
)

// catchUpJoin is how many catch-up batches, when read and decoded already,
// fold in one transaction: each is linked while the one before folds
// (fold), where alone its link kept this process idle.
const catchUpJoin = 2

// errBehind reports that the runner fell behind while following the log
// live: it catches up again in big batches.
var errBehind = errors.New("the runner fell behind the log")

// NewRunner returns a Runner of p that reads log and writes the read model
// through pool. Its metrics are registered with reg (nil: not registered);
// a nil logger discards its messages.
func NewRunner(pool *pgxpool.Pool, log eventlog.Log, p Projection, logger *slog.Logger, reg prometheus.Registerer) (*Runner, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if reg != nil {
		if err := reg.Register(newDeadLetterGauge(pool)); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return nil, fmt.Errorf("register dead-letter gauge: %w", err)
		}
	}
	return &Runner{
		pool: pool, log: log, p: p.reading(log), logger: logger.With("projection", p.Name), metrics: m,
		lockRetry: 3 * time.Second, retry: backoff.Policy{Min: time.Second, Max: 2 * time.Second}, batchSize: buildBatchSize,
		catchUp: batchSizes{catchUpFirst, catchUpMax},
	}, nil
}

// Run keeps the projection current until ctx is done, then returns nil once
// everything it started has stopped. While another replica holds the
// projection's lock it retries every few seconds; database and log errors
// are logged and retried with back-off from the stored checkpoint.
func (r *Runner) Run(ctx context.Context) error {
	retry := backoff.New(r.retry)
	for {
		started := time.Now()
		err := r.runLocked(ctx)
		wait := r.lockRetry
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errLocked):
		default:
			if time.Since(started) > r.retry.Max {
				retry.Reset() // it ran for a while: a fresh failure
			}
			wait = retry.Next()
			r.logger.ErrorContext(ctx, "projection runner failed; retrying", "err", err, "retry_in", wait.String())
		}
		if backoff.Sleep(ctx, wait) != nil {
			return nil
		}
	}
}

// runLocked takes the projection's lock and runs it until ctx is done, the
// lock's connection fails, or an error.
func (r *Runner) runLocked(ctx context.Context) error {
	l, err := tryLock(ctx, r.pool, runLockClass, r.p.Name, r.logger)
	if err != nil {
		return err
	}
	defer l.Release()
	ctx = l.Context()
	r.logger.InfoContext(ctx, "projection runner holds the lock")
	for {
		cp, ok, err := loadCheckpoint(ctx, r.pool, r.p.Name, "")
		if err != nil {
			return err
		}
		if ok && cp.Version > r.p.Version {
			// An older binary (a rolling deploy) must not undo a newer version.
			return fmt.Errorf("live version %d of %s is newer than this binary's %d: not running it", cp.Version, r.p.Name, r.p.Version)
		}
		if !ok || cp.Version != r.p.Version || !cp.foldedWith(r.p) {
			if ok && cp.Version == r.p.Version && cp.Plans.Valid {
				r.logger.WarnContext(ctx, "LEDGER_PLANS differs from the live read model's: rebuilding blue/green",
					"live_plans", cp.Plans.String, "plans", canonicalPlans(r.p.Plans))
			}
			if err := r.buildVersion(ctx); err != nil {
				return err
			}
			continue
		}
		r.logger.InfoContext(ctx, "projection following the log", "version", cp.Version, "schema", cp.Schema, "from", cp.Position.String())
		err = r.follow(ctx, &cp)
		switch {
		case errors.Is(err, errBehind):
		case errors.Is(err, errCheckpointMoved):
			r.logger.InfoContext(ctx, "checkpoint moved under the runner; restarting from the stored one")
		default:
			return err
		}
	}
}

// follow catches cp up with the head of the log in big batches, then
// follows the log live from there.
func (r *Runner) follow(ctx context.Context, cp *checkpoint) error {
	if err := r.catchUpLive(ctx, cp); err != nil {
		return err
	}
	states := newHeldStates(maxHeldStates)
	switch l := r.log.(type) {
	case eventlog.CheckpointSubscriber:
		return l.SubscribeCheckpoints(ctx, cp.Position, r.apply(cp, states), r.skipTo(cp))
	case eventlog.FoldSubscriber:
		return l.SubscribeFold(ctx, cp.Position, r.apply(cp, states))
	}
	return r.log.Subscribe(ctx, cp.Position, r.apply(cp, states))
}

// catchUpLive folds the records after cp into the live schema until a read
// comes back short (the head), each batch in one transaction with its
// checkpoint, as the live batches are, or up to catchUpJoin batches when
// decoded already; reading the next batch and decoding it overlap with the
// fold of the current one (foldLog). A first start
// folds its whole log here, deriving every notification as it goes: the
// COPY fill derives none, so it serves only builds beside a live version,
// whose runner derived them.
func (r *Runner) catchUpLive(ctx context.Context, cp *checkpoint) error {
	b := &builder{pool: r.pool, log: r.log, p: r.p, logger: r.logger, metrics: r.metrics, join: catchUpJoin}
	_, err := b.foldLog(ctx, cp.Position, nil, r.catchUp, func(ctx context.Context, bt *batch) (*batch, error) {
		return r.fold(ctx, cp, bt)
	}, nil)
	return err
}

// buildVersion makes r's version live, under the build lock: an empty
// schema at once when nothing is live, else a full build beside the live one.
func (r *Runner) buildVersion(ctx context.Context) error {
	l, err := lock(ctx, r.pool, buildLockClass, r.p.Name, r.lockRetry, r.logger)
	if err != nil {
		return err
	}
	defer l.Release()
	ctx = l.Context()
	cp, ok, err := loadCheckpoint(ctx, r.pool, r.p.Name, "")
	if err != nil || (ok && cp.Version == r.p.Version && cp.foldedWith(r.p)) {
		return err // or a build that held the lock made it live
	}
	b := &builder{pool: r.pool, log: r.log, p: r.p.building(), logger: r.logger, metrics: r.metrics, batchSize: r.batchSize,
		fillChunk: r.fillChunk, progress: logProgress(ctx, r.logger)}
	_, err = b.build(ctx, ok)
	return err
}

// apply returns the handler that folds each batch into the live schema and
// advances cp, in one transaction, starting from the states held (the
// states of the batches before); after a batch of catch-up size, errBehind.
func (r *Runner) apply(cp *checkpoint, states *heldStates) eventlog.Handler {
	return func(ctx context.Context, recs []eventlog.Record) error {
		b, err := r.foldLive(ctx, cp, states, r.p.decode(recs))
		if err != nil {
			return err
		}
		r.metrics.observe(ctx, r.logger, r.p.Name, b)
		if len(recs) >= r.catchUp.first {
			return errBehind
		}
		return nil
	}
}

// fold folds b into the live schema and advances cp past it, in one
// transaction, and returns b as committed.
func (r *Runner) fold(ctx context.Context, cp *checkpoint, b *batch) (*batch, error) {
	last := b.last
	b, err := foldBatch(ctx, r.pool, r.logger, r.p, cp.Schema, b, func(tx pgx.Tx) error {
		_, _, err := advance(ctx, tx, r.p.Name, *cp, last)
		return err
	})
	if err != nil {
		return nil, err
	}
	cp.Position = last
	return b, nil
}

// foldLive is fold starting from the states held, which it updates once
// the transaction commits (see heldStates).
func (r *Runner) foldLive(ctx context.Context, cp *checkpoint, states *heldStates, b *batch) (*batch, error) {
	last := b.last
	p := r.p
	p.states = states
	var xmin uint32
	b, err := foldBatch(ctx, r.pool, r.logger, p, cp.Schema, b, func(tx pgx.Tx) error {
		var err error
		xmin, err = states.advance(ctx, tx, r.p.Name, *cp, last)
		return err
	})
	if err != nil {
		states.reset()
		return nil, err
	}
	states.commit(xmin)
	cp.Position = last
	return b, nil
}

// skipTo returns the callback that advances cp past records that are not the
// ledger's, when the log reports them (eventlog.CheckpointSubscriber).
func (r *Runner) skipTo(cp *checkpoint) func(context.Context, eventlog.Position) error {
	return func(ctx context.Context, pos eventlog.Position) error {
		if !cp.Position.Less(pos) {
			return nil
		}
		if err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
			_, _, err := advance(ctx, tx, r.p.Name, *cp, pos)
			return err
		}); err != nil {
			return err
		}
		cp.Position = pos
		return nil
	}
}

// logProgress logs a build's progress every few seconds.
func logProgress(ctx context.Context, logger *slog.Logger) func(Progress) {
	var last time.Time
	return func(p Progress) {
		if time.Since(last) < 5*time.Second {
			return
		}
		last = time.Now()
		logger.InfoContext(ctx, "projection build progress", "done", p.Done, "total", p.Total,
			"events_per_second", int(p.Rate()), "eta", p.ETA().Round(time.Second).String())
	}
}
