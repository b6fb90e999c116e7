package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// Options configure Rebuild and Diff.
type Options struct {
	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // where the event counters go; nil: nowhere
	Progress   func(Progress)        // called after every batch; nil: progress is logged every few seconds
	Wait       bool                  // wait for a build in progress to finish instead of failing with ErrBuildInProgress
}

// lockBuild takes p's build lock as opts say and returns a builder of p.
func lockBuild(ctx context.Context, pool *pgxpool.Pool, log eventlog.Log, p Projection, opts Options) (*builder, *sessionLock, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("projection", p.Name)
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, nil, err
	}
	var l *sessionLock
	if opts.Wait {
		l, err = lock(ctx, pool, buildLockClass, p.Name, time.Second, logger)
	} else {
		l, err = tryLock(ctx, pool, buildLockClass, p.Name, logger)
	}
	if errors.Is(err, errLocked) {
		return nil, nil, fmt.Errorf("%s: %w", p.Name, report.ErrBuildInProgress)
	}
	if err != nil {
		return nil, nil, err
	}
	progress := opts.Progress
	if progress == nil {
		progress = logProgress(ctx, logger)
	}
	return &builder{pool: pool, log: log, p: p.reading(log), logger: logger, metrics: m, progress: progress, batchSize: buildBatchSize}, l, nil
}

// Rebuild builds p afresh from the whole log beside the live version and
// swaps it in (ledger projections rebuild). A Runner on any replica keeps the
// live version current meanwhile and follows the new schema after the swap.
// It returns once the new version is live, with what the build added to
// the outbox.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, log eventlog.Log, p Projection, opts Options) (Built, error) {
	b, l, err := lockBuild(ctx, pool, log, p.building(), opts)
	if err != nil {
		return Built{}, err
	}
	defer l.Release()
	// Under the build lock nobody else swaps, so the mapping checked here is
	// the one replaced. Another mapping for the live version would be rebuilt
	// back by the Runners of servers configured with the live one: refuse it.
	cp, ok, err := loadCheckpoint(l.Context(), pool, p.Name, "")
	if err != nil {
		return Built{}, err
	}
	if ok && cp.Version == p.Version && cp.Plans.Valid && !cp.foldedWith(p) {
		return Built{}, plansChanged(cp, p)
	}
	return b.build(l.Context(), true)
}
