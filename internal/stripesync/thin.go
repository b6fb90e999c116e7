package stripesync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
)

// EnqueueThin records that a stored thin event awaits the fetch of what it
// announces. The webhook calls it after the notification is stored and
// before answering 200 (a redelivery enqueues again, harmlessly), so a
// notification is never stored without its fetch being owed.
func EnqueueThin(ctx context.Context, db *pgxpool.Pool, env domain.Envelope) error {
	_, err := db.Exec(ctx, `INSERT INTO thin_events (event_id, account, snapshot_event, related_type, related_id, related_url)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING`,
		env.ID, env.Account, env.SnapshotEvent, env.Related.Type, env.Related.ID, env.Related.URL)
	if err != nil {
		return fmt.Errorf("queue the fetch of thin event %s: %w", env.ID, err)
	}
	return nil
}

// PendingThin counts the thin events whose fetch is still owed.
func PendingThin(ctx context.Context, db *pgxpool.Pool) (int64, error) {
	var n int64
	err := db.QueryRow(ctx, `SELECT count(*) FROM thin_events WHERE fetched_at IS NULL`).Scan(&n)
	return n, err
}

// RegisterThinMetrics registers ledger_thin_events_pending, read from the
// database at each scrape.
func RegisterThinMetrics(reg prometheus.Registerer, db *pgxpool.Pool) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ledger_thin_events_pending",
		Help: "Thin events stored and awaiting the fetch of their snapshot event or related object (no STRIPE_API_KEY, or Stripe unreachable).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := PendingThin(ctx, db)
		if err != nil {
			return -1 // the database did not answer; -1 is never a count
		}
		return float64(n)
	}))
}

type thinRow struct {
	eventID, account, snapshotEvent, relatedType, relatedID, relatedURL string
}

// ThinResult counts what FetchThin did.
type ThinResult struct {
	Fetched  int // a snapshot event or an object appended (or found already stored)
	Failed   int // left pending for the next run (Stripe unreachable, rate limited)
	Nothing  int // nothing could be fetched (no target, or Stripe no longer has it); recorded, not retried
	Appended int // records actually added to the log
}

// FetchThin fetches what every pending thin event announces and appends it
// with provenance thin: the snapshot event (/v1/events/<snapshot_event>)
// when the notification names one, else the related object (its url), stored
// as an observed snapshot. Fetching twice is harmless (dedup), so concurrent
// fetchers need no lock. A transient failure leaves the row pending.
func (s *Syncer) FetchThin(ctx context.Context) (ThinResult, error) {
	var res ThinResult
	if s.API == nil {
		return res, ErrNoAPIKey
	}
	rows, err := s.DB.Query(ctx, `SELECT event_id, account, snapshot_event, related_type, related_id, related_url
  FROM thin_events WHERE fetched_at IS NULL ORDER BY received_at, event_id LIMIT 1000`)
	if err != nil {
		return res, fmt.Errorf("read pending thin events: %w", err)
	}
	pending, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (thinRow, error) {
		var t thinRow
		return t, r.Scan(&t.eventID, &t.account, &t.snapshotEvent, &t.relatedType, &t.relatedID, &t.relatedURL)
	})
	if err != nil {
		return res, fmt.Errorf("read pending thin events: %w", err)
	}
	for _, t := range pending {
		fetchedID, appended, err := s.fetchThin(ctx, t)
		var apiErr *stripeapi.Error
		switch {
		case err == nil:
			res.Fetched++
			if appended {
				res.Appended++
			}
			err = s.markThin(ctx, t.eventID, fetchedID, "")
		case errors.Is(err, errNothingToFetch), stripeapi.IsKind(err, stripeapi.KindNotFound):
			res.Nothing++
			s.logger().WarnContext(ctx, "thin event: nothing to fetch", "event_id", t.eventID, "err", err)
			err = s.markThin(ctx, t.eventID, "", err.Error())
		case ctx.Err() != nil:
			return res, ctx.Err()
		case errors.As(err, &apiErr) && (apiErr.Kind == stripeapi.KindAuth || apiErr.Kind == stripeapi.KindPermission):
			return res, err // every other fetch would fail the same way
		default:
			res.Failed++
			s.logger().WarnContext(ctx, "thin event: fetch failed; it stays pending", "event_id", t.eventID, "err", err)
			_, err = s.DB.Exec(ctx, `UPDATE thin_events SET attempts = attempts + 1, last_error = $2 WHERE event_id = $1`, t.eventID, err.Error())
		}
		if err != nil {
			return res, fmt.Errorf("record the fetch of thin event %s: %w", t.eventID, err)
		}
	}
	return res, nil
}

var errNothingToFetch = errors.New("the thin event names no snapshot event and no related object URL")

// fetchThin fetches and stores what one thin event announces, returning the
// id of the event stored for it.
func (s *Syncer) fetchThin(ctx context.Context, t thinRow) (string, bool, error) {
	if t.snapshotEvent != "" {
		body, err := s.API.Get(ctx, "/v1/events/"+t.snapshotEvent, nil, t.account)
		if err != nil {
			return "", false, err
		}
		env, dup, err := s.store(ctx, body, eventlog.SourceThin)
		return env.ID, !dup, err
	}
	if !strings.HasPrefix(t.relatedURL, "/v1/") {
		return "", false, errNothingToFetch
	}
	fetchedAt := s.now()
	body, err := s.API.Get(ctx, t.relatedURL, nil, t.account)
	if err != nil {
		return "", false, err
	}
	payload, _, err := domain.ObservedEvent(domain.Observation{
		Object: body, Account: t.account, APIVersion: stripeapi.APIVersion, FetchedAt: fetchedAt, Source: string(eventlog.SourceThin),
	})
	if err != nil {
		return "", false, err
	}
	env, dup, err := s.store(ctx, payload, eventlog.SourceThin)
	return env.ID, !dup, err
}

func (s *Syncer) markThin(ctx context.Context, eventID, fetchedID, note string) error {
	_, err := s.DB.Exec(ctx, `UPDATE thin_events SET fetched_at = clock_timestamp(), fetched_event_id = $2, last_error = $3,
       attempts = attempts + 1 WHERE event_id = $1`, eventID, fetchedID, note)
	return err
}

// RunThinFetcher fetches pending thin events every interval until ctx is
// done; wake, when it receives, starts a round at once (the webhook signals
// it after queueing one). Errors are logged and retried next round.
func (s *Syncer) RunThinFetcher(ctx context.Context, interval time.Duration, wake <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		res, err := s.FetchThin(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.logger().ErrorContext(ctx, "thin-event fetcher failed; retrying", "err", err, "retry_in", interval.String())
		case res.Fetched+res.Failed+res.Nothing > 0:
			s.logger().InfoContext(ctx, "thin events fetched", "fetched", res.Fetched, "appended", res.Appended,
				"failed", res.Failed, "nothing_to_fetch", res.Nothing)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
	}
}
