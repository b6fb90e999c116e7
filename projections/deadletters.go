package projections

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// ReadDeadLetters lists the dead letters of every projection's live
// version, in log order.
func ReadDeadLetters(ctx context.Context, pool *pgxpool.Pool) ([]report.DeadLetter, error) {
	rows, err := pool.Query(ctx, `SELECT d.projection, d.version, d.event_id, d.event_type, d.position, d.prepare,
       coalesce(d.stream, ''), coalesce(d.stream_version, -1), d.error, d.recorded_at
  FROM projection_dead_letters d JOIN projection_checkpoints c ON c.schema_name = d.schema_name
 ORDER BY d.projection, d.position, d.prepare`)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	letters, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (report.DeadLetter, error) {
		var l report.DeadLetter
		err := row.Scan(&l.Projection, &l.Version, &l.EventID, &l.EventType, &l.Position.Commit, &l.Position.Prepare, &l.Stream, &l.StreamVersion, &l.Error, &l.RecordedAt)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return letters, nil
}

// Retry applies again the dead letters of p's live version whose event ids
// are given (none: every one), after a fix: each is read back from the log
// and folded into the live read model; those that fail again are
// dead-lettered again. It serialises with the runner's batches on the
// checkpoint's row lock, and the fold is order-independent (DESIGN §4), so
// applying an old event late gives the state applying it in order would
// have. Rebuilds re-drive dead letters as well.
func Retry(ctx context.Context, pool *pgxpool.Pool, log eventlog.Log, p Projection, logger *slog.Logger, eventIDs ...string) (report.RetryResult, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var res report.RetryResult
	cp, ok, err := loadCheckpoint(ctx, pool, p.Name, "")
	if err != nil || !ok {
		return res, cmp.Or(err, fmt.Errorf("projection %s has no live version", p.Name))
	}
	if cp.Version != p.Version {
		return res, fmt.Errorf("the live version of %s is %d, this binary's is %d: rebuild instead", p.Name, cp.Version, p.Version)
	}
	letters, err := ReadDeadLetters(ctx, pool)
	if err != nil {
		return res, err
	}
	letters = slices.DeleteFunc(letters, func(l report.DeadLetter) bool {
		return l.Projection != p.Name || (len(eventIDs) > 0 && !slices.Contains(eventIDs, l.EventID))
	})
	for _, id := range eventIDs {
		if !slices.ContainsFunc(letters, func(l report.DeadLetter) bool { return l.EventID == id }) {
			return res, fmt.Errorf("%s: %w", id, report.ErrNoDeadLetter)
		}
	}
	if len(letters) == 0 {
		return res, nil
	}
	// The log is read before the writing transaction: a PostgreSQL log's
	// readers wait for every transaction that writes.
	recs := make([]eventlog.Record, 0, len(letters))
	for _, l := range letters {
		rec, err := readDeadLetter(ctx, log, l)
		if err != nil {
			return res, err
		}
		recs = append(recs, rec)
	}
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.ID
	}
	b, err := foldBatch(ctx, pool, logger, p, cp.Schema, p.decode(recs), func(tx pgx.Tx) error {
		// An update, not a row lock alone: the runner, seeing the row
		// changed, lets go of the states it holds (heldStates).
		tag, err := tx.Exec(ctx, `UPDATE projection_checkpoints SET updated_at = clock_timestamp() WHERE name = $1 AND schema_name = $2`, p.Name, cp.Schema)
		if err != nil || tag.RowsAffected() == 0 {
			return cmp.Or(err, errCheckpointMoved)
		}
		_, err = tx.Exec(ctx, `DELETE FROM projection_dead_letters WHERE schema_name = $1 AND event_id = ANY($2)`, cp.Schema, ids)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("retry dead letters of %s: %w", p.Name, err)
	}
	failed := map[string]bool{}
	for _, l := range b.deadLetters {
		failed[l.eventID] = true
		res.DeadLettered = append(res.DeadLettered, l.eventID)
	}
	for _, id := range ids {
		if !failed[id] {
			res.Applied = append(res.Applied, id)
		}
	}
	return res, nil
}

// readDeadLetter reads l's record back from the log by its stream version.
func readDeadLetter(ctx context.Context, log eventlog.Log, l report.DeadLetter) (eventlog.Record, error) {
	if l.Stream == "" || l.StreamVersion < 0 {
		return eventlog.Record{}, fmt.Errorf("dead letter %s was recorded without its stream: rebuild to re-drive it", l.EventID)
	}
	recs, err := log.ReadStream(ctx, l.Stream, l.StreamVersion, 1)
	if err != nil {
		return eventlog.Record{}, fmt.Errorf("read dead letter %s: %w", l.EventID, err)
	}
	if len(recs) != 1 || recs[0].ID != l.EventID {
		return eventlog.Record{}, fmt.Errorf("dead letter %s is not at version %d of stream %s", l.EventID, l.StreamVersion, l.Stream)
	}
	return recs[0], nil
}

// deadLetterGauge is ledger_projection_dead_letters, read from the database
// at each scrape, so that a retry or a rebuild by another process shows at
// once.
type deadLetterGauge struct {
	pool *pgxpool.Pool
	desc *prometheus.Desc
}

func newDeadLetterGauge(pool *pgxpool.Pool) *deadLetterGauge {
	return &deadLetterGauge{pool: pool, desc: prometheus.NewDesc("ledger_projection_dead_letters",
		"Events the live version of a projection could not apply (ledger projections dead-letters lists them).",
		[]string{"projection"}, nil)}
}

func (g *deadLetterGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

// Collect reports nothing when the database cannot be read: /readyz says so.
func (g *deadLetterGauge) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	rows, err := g.pool.Query(ctx, `SELECT c.name, (SELECT count(*) FROM projection_dead_letters d WHERE d.schema_name = c.schema_name)
  FROM projection_checkpoints c`)
	if err != nil {
		return
	}
	defer rows.Close()
	for rows.Next() {
		var (
			name string
			n    int64
		)
		if rows.Scan(&name, &n) == nil {
			ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(n), name)
		}
	}
}
