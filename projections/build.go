package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

// Swap and drop tuning: a swap waits at most swapLockTimeout for a lock (a
// reader holding a view, a runner's batch), so readers never queue behind it
// for long, and tries swapAttempts times.
const (
	swapLockTimeout = 2 * time.Second
	swapAttempts    = 10
	buildBatchSize  = 2000
)

// BuildGCHeadroom is the least the heap of a process that builds the read
// model (ledger projections rebuild and diff) may grow between two garbage
// collections (gctune.Headroom). A build keeps a few hundred MB live (the
// states a fill holds, the chunks in its stages), allocates about 20 KB an
// event, and each collection marks all that is live: at Go's default
// GOGC=100 the collector took about a quarter of the build's Go CPU.
const BuildGCHeadroom = 512 << 20

// Progress reports how far a build (Rebuild, Diff, a new version) has got.
type Progress struct {
	Done     int64             // events folded so far
	Total    int64             // events to fold when the fold started (all the log's, for a build's fill), at least Done
	Position eventlog.Position // of the last event folded
	Elapsed  time.Duration
}

// Rate is the events folded per second so far.
func (p Progress) Rate() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Done) / p.Elapsed.Seconds()
}

// ETA estimates the time left to fold the events of Total, 0 when unknown.
func (p Progress) ETA() time.Duration {
	rate := p.Rate()
	if rate == 0 {
		return 0
	}
	return time.Duration(float64(p.Total-p.Done) / rate * float64(time.Second))
}

// builder folds the log into new schemas of one projection. Its methods
// expect the caller to hold the projection's build lock.
type builder struct {
	pool      *pgxpool.Pool
	log       eventlog.Log
	p         Projection
	logger    *slog.Logger
	metrics   *metrics
	progress  func(Progress) // nil: no reports
	batchSize int            // records per transaction of catchUp
	fillChunk int            // records per read of fill; 0: fillChunk
	fillMax   int            // objects fill holds before it writes them; 0: fillMaxObjects
	announced int            // rows per statement of announce; 0: announcePage
	added     int64          // notifications the build added to the outbox
	join      int            // batches read that foldLog applies at once when they are decoded (batch.then); 0: one
}

// Built is what a build did.
type Built struct {
	// Notifications is how many notifications the build added to the
	// outbox: 0 for a build with the live version's logic, whose every
	// notification the live runner derived already.
	Notifications int64
}

// build makes a new schema of b.p live. With fill it first folds the whole
// log into it, beside the live version; without, it swaps in the empty
// schema at once (first start: there is nothing to keep serving). Once live,
// what its final state implies is announced (announceFinal).
func (b *builder) build(ctx context.Context, fill bool) (Built, error) {
	if err := b.dropStale(ctx); err != nil {
		return Built{}, err
	}
	schema, err := b.createSchema(ctx)
	if err != nil {
		return Built{}, err
	}
	pos := eventlog.Start
	if fill {
		b.logger.InfoContext(ctx, "building projection beside the live one", "version", b.p.Version, "schema", schema)
		if pos, err = b.fill(ctx, schema, nil, true); err != nil {
			return Built{}, err
		}
	}
	replaced, err := b.swap(ctx, schema, pos, fill)
	if err != nil {
		return Built{}, err
	}
	if err := b.announceFinal(ctx, schema, replaced.Version); err != nil {
		return Built{}, err
	}
	old := replaced.Schema
	b.logger.InfoContext(ctx, "projection swapped in", "version", b.p.Version, "schema", schema, "old_schema", old,
		"notifications_added", b.added)
	if old != "" {
		if err := b.dropSchema(ctx, old); err != nil {
			// Harmless: the next build drops every unreferenced schema.
			b.logger.WarnContext(ctx, "could not drop the old projection schema", "schema", old, "err", err)
		}
	}
	return Built{Notifications: b.added}, nil
}

// analyze analyzes the tables of schema that names (viewedTables), so
// that readers get a good plan from the first query after the swap: each
// table in a statement of its own, up to one per core at once (one ANALYZE
// of them all took a 1M-event build 2 s on one core).
func (b *builder) analyze(ctx context.Context, schema string, names ...string) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, name := range names {
		g.Go(func() error {
			if _, err := b.pool.Exec(gctx, "ANALYZE "+ident(schema)+"."+name); err != nil {
				return fmt.Errorf("analyze %s.%s: %w", schema, name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// createSchema creates an empty schema for a build of b.p.
func (b *builder) createSchema(ctx context.Context) (string, error) {
	schema := b.p.newSchemaName()
	if _, err := b.pool.Exec(ctx, createSchemaSQL(schema)); err != nil {
		return "", fmt.Errorf("create schema %s: %w", schema, err)
	}
	return schema, nil
}

// dropStale drops the schemas of b.p's builds that are not live: left by a
// build that died, or by a swap that could not drop its predecessor.
func (b *builder) dropStale(ctx context.Context) error {
	rows, err := b.pool.Query(ctx, `SELECT nspname FROM pg_namespace
 WHERE nspname ~ $1 AND nspname NOT IN (SELECT schema_name FROM projection_checkpoints)`, b.p.schemaPattern())
	if err != nil {
		return fmt.Errorf("list stale schemas of %s: %w", b.p.Name, err)
	}
	stale, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list stale schemas of %s: %w", b.p.Name, err)
	}
	for _, schema := range stale {
		b.logger.InfoContext(ctx, "dropping stale projection schema", "schema", schema)
		if err := b.dropSchema(ctx, schema); err != nil {
			return err
		}
	}
	return nil
}

// dropSchema drops schema and its dead letters.
func (b *builder) dropSchema(ctx context.Context, schema string) error {
	return retryLockTimeouts(ctx, b.logger, "drop schema "+schema, func() error {
		return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d; DROP SCHEMA IF EXISTS %s CASCADE",
				swapLockTimeout.Milliseconds(), ident(schema)))
			if err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `DELETE FROM projection_dead_letters WHERE schema_name = $1`, schema)
			return err
		})
	})
}

// catchUp folds the records after from into schema as p, one transaction per
// batch, until it meets the head (or passes until, when set), and returns
// the position of the last record folded.
func (b *builder) catchUp(ctx context.Context, p Projection, schema string, from eventlog.Position, until *eventlog.Position) (eventlog.Position, error) {
	pos, err := b.foldLog(ctx, from, until, batchSizes{b.batchSize, b.batchSize}, func(ctx context.Context, bt *batch) (*batch, error) {
		return foldBatch(ctx, b.pool, b.logger, p, schema, bt, nil)
	}, nil)
	if err != nil {
		return from, fmt.Errorf("build %s: %w", schema, err)
	}
	return pos, nil
}

// batchSizes bounds the batches of a fold of the log: the first read takes
// first records, and each read that comes back full quadruples the next, up
// to max. So a fold far behind the head takes big batches (few transactions,
// rows written once for many events), and one near it small ones; doubling,
// a catch-up spent its first 15,000 events in four transactions, each
// folded alone while the next one was read and decoded.
type batchSizes struct{ first, max int }

// foldLog reads the records after from in batches of sizes until it meets
// the head (or passes until, when set), decodes each and hands it to apply,
// which returns the batch as applied; then it calls finish, when given. It
// reports progress (counting the log meanwhile) and metrics, and returns the
// position of the last record applied. Reading, decoding and applying
// overlap: each stage hands the next one batch ahead.
func (b *builder) foldLog(ctx context.Context, from eventlog.Position, until *eventlog.Position, sizes batchSizes,
	apply func(context.Context, *batch) (*batch, error), finish func(context.Context) error) (eventlog.Position, error) {
	return b.foldStages(ctx, from, until, sizes, nil, apply, finish)
}

// foldStages is foldLog with a stage between decoding and applying, when
// prepare is given: it takes each decoded batch before apply does, and
// overlaps with the apply of the batch before.
func (b *builder) foldStages(ctx context.Context, from eventlog.Position, until *eventlog.Position, sizes batchSizes,
	prepare func(context.Context, *batch) error, apply func(context.Context, *batch) (*batch, error),
	finish func(context.Context) error) (eventlog.Position, error) {
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	var total atomic.Int64
	if b.progress != nil {
		// Beside the fold, not before it: a count of a million events takes
		// the database most of a second. Only those after from: the swap's
		// catch-up waited that second for a count of the whole log.
		g.Go(func() error {
			n, err := b.log.CountAfter(gctx, from)
			total.Store(n)
			return err
		})
	}
	read, decoded := make(chan []eventlog.Record, 1), make(chan *batch, 1)
	g.Go(func() error {
		defer close(read)
		for pos, size := from, sizes.first; ; size = min(4*size, sizes.max) {
			recs, done, err := b.read(gctx, pos, until, size)
			if err != nil || len(recs) == 0 {
				return err
			}
			pos = recs[len(recs)-1].Position
			select {
			case read <- recs:
			case <-gctx.Done():
				return gctx.Err()
			}
			if done {
				return nil
			}
		}
	})
	g.Go(func() error {
		defer close(decoded)
		for recs := range read {
			select {
			case decoded <- b.p.decodeParallel(recs):
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	batches := decoded
	if prepare != nil {
		prepared := make(chan *batch, 1)
		batches = prepared
		g.Go(func() error {
			defer close(prepared)
			for bt := range decoded {
				if err := prepare(gctx, bt); err != nil {
					return err
				}
				select {
				case prepared <- bt:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			return nil
		})
	}
	pos, done := from, int64(0)
	g.Go(func() error {
		for bt := range batches {
			bt = b.joinReady(bt, batches)
			bt, err := apply(gctx, bt)
			if err != nil {
				return err
			}
			b.added += bt.notified
			b.metrics.observe(gctx, b.logger, b.p.Name, bt)
			pos, done = bt.last, done+int64(bt.events)
			if b.progress != nil {
				b.progress(Progress{Done: done, Total: max(total.Load(), done), Position: pos, Elapsed: time.Since(start)})
			}
		}
		if finish != nil {
			return finish(gctx)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return from, err
	}
	return pos, nil
}

// joinReady joins to bt (batch.then) the batches decoded already, up to
// b.join in all.
func (b *builder) joinReady(bt *batch, batches <-chan *batch) *batch {
	for n := 1; n < b.join; n++ {
		select {
		case next, ok := <-batches:
			if !ok {
				return bt
			}
			bt = bt.then(next)
		default:
			return bt
		}
	}
	return bt
}

// read returns the next batch of up to size records after pos, cut at until
// when set; done reports that nothing more is to be read. It reads only what
// a fold needs when the log can (eventlog.FoldReader).
func (b *builder) read(ctx context.Context, pos eventlog.Position, until *eventlog.Position, size int) (recs []eventlog.Record, done bool, err error) {
	if r, ok := b.log.(eventlog.FoldReader); ok {
		recs, err = r.ReadAllFold(ctx, pos, size)
	} else {
		recs, err = b.log.ReadAll(ctx, pos, size)
	}
	if err != nil {
		return nil, false, err
	}
	done = len(recs) < size
	if until != nil {
		for i, r := range recs {
			if until.Less(r.Position) {
				return recs[:i], true, nil
			}
		}
	}
	return recs, done, nil
}

// swap makes schema, folded up to pos, the live version of b.p, and returns
// the checkpoint of the version it replaced (the zero checkpoint when none). With catchUp it first folds
// whatever was appended after pos, so that the new version is never behind
// the live one it replaces: readers never see a change go back.
//
// It never reads the log inside a transaction that has written (a writing
// transaction holds the PostgreSQL log's horizon, so such a read would wait
// for itself): each attempt folds up to the head outside any transaction,
// then, in one short transaction, re-points the views and moves the
// checkpoint by compare-and-set, provided the live version has not advanced
// past what the new one holds; else it tries again.
func (b *builder) swap(ctx context.Context, schema string, pos eventlog.Position, catchUp bool) (replaced checkpoint, err error) {
	for attempt := 1; ; attempt++ {
		cp, ok, err := loadCheckpoint(ctx, b.pool, b.p.Name, "")
		if err != nil {
			return checkpoint{}, err
		}
		if ok && cp.Version > b.p.Version {
			return checkpoint{}, fmt.Errorf("swap in %s: the live version %d of %s is newer than this binary's %d", schema, cp.Version, b.p.Name, b.p.Version)
		}
		if catchUp {
			if pos, err = b.catchUp(ctx, b.p, schema, pos, nil); err != nil {
				return checkpoint{}, err
			}
		}
		var swapped bool
		err = retryLockTimeouts(ctx, b.logger, "swap in "+schema, func() error {
			return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
				swapped = false
				if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", swapLockTimeout.Milliseconds())); err != nil {
					return err
				}
				var tag pgconn.CommandTag
				if ok {
					tag, err = tx.Exec(ctx, `UPDATE projection_checkpoints
   SET version = $2, schema_name = $3, position = $4, prepare = $5, plans = $7, updated_at = clock_timestamp()
 WHERE name = $1 AND schema_name = $6 AND (position, prepare) <= ($4, $5)`,
						b.p.Name, b.p.Version, schema, pos.Commit, pos.Prepare, cp.Schema, canonicalPlans(b.p.Plans))
				} else {
					tag, err = tx.Exec(ctx, `INSERT INTO projection_checkpoints (name, version, schema_name, position, prepare, plans)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING`,
						b.p.Name, b.p.Version, schema, pos.Commit, pos.Prepare, canonicalPlans(b.p.Plans))
				}
				if err != nil {
					return fmt.Errorf("record checkpoint of %s: %w", b.p.Name, err)
				}
				if tag.RowsAffected() == 0 {
					return nil // the live version moved on (or appeared): fold more and try again
				}
				if _, err := tx.Exec(ctx, viewsSQL(schema)); err != nil {
					return fmt.Errorf("point the readmodel views at %s: %w", schema, err)
				}
				swapped = true
				return nil
			})
		})
		switch {
		case err != nil:
			return checkpoint{}, err
		case swapped && ok:
			return cp, nil
		case swapped:
			return checkpoint{}, nil
		case attempt == swapAttempts*10:
			return checkpoint{}, fmt.Errorf("swap in %s: the live version kept moving ahead in %d attempts", schema, attempt)
		}
		b.logger.InfoContext(ctx, "live projection moved during the swap; folding the rest and retrying", "schema", schema, "attempt", attempt)
	}
}

// viewsSQL re-creates the readmodel views on schema. The views are dropped
// in one statement, which locks them all before the first is replaced.
func viewsSQL(schema string) string {
	var views []string
	var sql strings.Builder
	for _, name := range viewedTables() {
		views = append(views, "readmodel."+name)
		fmt.Fprintf(&sql, "CREATE VIEW readmodel.%s AS SELECT * FROM %s.%s;\n", name, ident(schema), name)
	}
	return "DROP VIEW IF EXISTS " + strings.Join(views, ", ") + ";\n" + sql.String()
}

// lockWaitRetry spaces the retries of a statement that timed out on a lock.
var lockWaitRetry = backoff.Policy{Min: 100 * time.Millisecond, Max: time.Second}

// retryLockTimeouts runs op until it succeeds, fails otherwise than on a
// lock timeout or deadlock, or has tried swapAttempts times.
func retryLockTimeouts(ctx context.Context, logger *slog.Logger, what string, op func() error) error {
	for attempt := 1; ; attempt++ {
		err := op()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "55P03" && pgErr.Code != "40P01") || attempt == swapAttempts {
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		}
		wait := lockWaitRetry.Delay(attempt - 1)
		logger.WarnContext(ctx, "lock wait timed out; retrying", "op", what, "attempt", attempt, "retry_in", wait.String(), "err", err)
		if err := backoff.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}
