package stripesync

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
)

// DefaultBackfillWindow is how far back a backfill reaches by default:
// Stripe keeps events for 30 days.
const DefaultBackfillWindow = 720 * time.Hour

// BackfillOptions configures Backfill.
type BackfillOptions struct {
	Since    time.Duration // how far back; DefaultBackfillWindow when 0
	Types    []string      // event types to ask Stripe for (at most 20); empty: every type
	Workers  int           // concurrent appends; 64 when 0
	Progress func(BackfillProgress)
}

// BackfillProgress is reported after each page.
type BackfillProgress struct {
	Seen, Appended, AlreadyStored int64
	Covered                       float64 // the share of the window paged through, 0 to 1 (Stripe lists newest first)
}

// BackfillSummary is what a backfill did.
type BackfillSummary struct {
	Run                           int64 // the backfill_runs row
	Resumed                       bool  // the run continued an interrupted one
	From                          time.Time
	Seen, Appended, AlreadyStored int64 // over the whole run, an interrupted part included
	Thin                          ThinResult
}

// pageSize is Stripe's largest list page.
const pageSize = 100

// Backfill pages /v1/events, newest first, from now back to the window's
// start, and appends every event not stored yet with provenance backfill.
// The cursor is saved after each page whose events are all durable, so a
// run that was interrupted resumes after the last saved page (a run with
// the same types that did not finish), and no event is appended twice
// (dedup). Then it fetches what pending thin events announce.
func (s *Syncer) Backfill(ctx context.Context, opts BackfillOptions) (BackfillSummary, error) {
	if s.API == nil {
		return BackfillSummary{}, ErrNoAPIKey
	}
	if len(opts.Types) > 20 {
		return BackfillSummary{}, fmt.Errorf("backfill: at most 20 event types can be asked for at once, not %d", len(opts.Types))
	}
	types := slices.Clone(opts.Types)
	slices.Sort(types)
	types = slices.Compact(types)
	from := s.now().Add(-cmp.Or(opts.Since, DefaultBackfillWindow)).Truncate(time.Second)
	run, err := s.startRun(ctx, strings.Join(types, ","), from)
	if err != nil {
		return BackfillSummary{}, err
	}
	sum := run.BackfillSummary
	s.logger().InfoContext(ctx, "backfill", "run", sum.Run, "resumed", sum.Resumed, "from", sum.From, "types", strings.Join(types, ","))

	q := url.Values{"limit": {strconv.Itoa(pageSize)}, "created[gte]": {strconv.FormatInt(sum.From.Unix(), 10)}}
	if len(types) > 0 {
		q["types[]"] = types
	}
	// The next pages are fetched while this one is appended. A failed list
	// request ends the listing; the pages fetched before it are still stored
	// and saved, so that a rerun resumes after them.
	pages := make(chan stripeapi.Page, 2)
	listCtx, stopListing := context.WithCancel(ctx)
	defer stopListing()
	var listErr error
	go func() {
		defer close(pages)
		cursor := run.cursor
		for {
			if cursor != "" {
				q.Set("starting_after", cursor)
			}
			page, err := s.API.ListPage(listCtx, "/v1/events", q, "")
			if err != nil {
				listErr = fmt.Errorf("backfill: list events: %w", err)
				return
			}
			select {
			case pages <- page:
			case <-listCtx.Done():
				return
			}
			if !page.HasMore || len(page.Data) == 0 {
				return
			}
			if cursor, err = stripeapi.ItemID(page.Data[len(page.Data)-1]); err != nil {
				listErr = fmt.Errorf("backfill: %w", err)
				return
			}
		}
	}()
	for page := range pages {
		err := s.appendPage(ctx, page, opts.Workers, &sum)
		if err == nil {
			err = s.saveRun(ctx, sum, page)
		}
		if err != nil {
			stopListing()
			for range pages { // let the lister end
			}
			return sum, err
		}
		if opts.Progress != nil {
			opts.Progress(BackfillProgress{Seen: sum.Seen, Appended: sum.Appended, AlreadyStored: sum.AlreadyStored,
				Covered: s.covered(sum.From, page)})
		}
	}
	if listErr != nil { // read after the lister closed pages
		return sum, listErr
	}
	if err := s.finishRun(ctx, sum.Run); err != nil {
		return sum, err
	}
	sum.Thin, err = s.FetchThin(ctx)
	if err != nil {
		return sum, fmt.Errorf("backfill: fetch pending thin events: %w", err)
	}
	return sum, nil
}

// appendPage appends a page's events on up to workers goroutines.
func (s *Syncer) appendPage(ctx context.Context, page stripeapi.Page, workers int, sum *BackfillSummary) error {
	var appended, stored atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cmp.Or(workers, 64))
	for _, item := range page.Data {
		g.Go(func() error {
			env, dup, err := s.store(gctx, item, eventlog.SourceBackfill)
			if err != nil {
				return fmt.Errorf("backfill: store event %s: %w", env.ID, err)
			}
			if dup {
				stored.Add(1)
			} else {
				appended.Add(1)
			}
			return nil
		})
	}
	err := g.Wait()
	sum.Seen += appended.Load() + stored.Load()
	sum.Appended += appended.Load()
	sum.AlreadyStored += stored.Load()
	return err
}

// covered is the share of the window [from, now] a page reaches back to.
func (s *Syncer) covered(from time.Time, page stripeapi.Page) float64 {
	if !page.HasMore || len(page.Data) == 0 {
		return 1
	}
	var last struct {
		Created int64 `json:"created"`
	}
	if json.Unmarshal(page.Data[len(page.Data)-1], &last) != nil {
		return 0
	}
	now := s.now()
	window := now.Sub(from).Seconds()
	if window <= 0 {
		return 1
	}
	return min(1, max(0, now.Sub(time.Unix(last.Created, 0)).Seconds()/window))
}

type backfillRun struct {
	BackfillSummary
	cursor string
}

// startRun resumes the unfinished run of the same types, or starts one. A
// resumed run keeps its cursor and reaches back to the earlier of the two
// windows' starts.
func (s *Syncer) startRun(ctx context.Context, types string, from time.Time) (backfillRun, error) {
	var r backfillRun
	err := s.DB.QueryRow(ctx, `UPDATE backfill_runs SET created_gte = least(created_gte, $2), updated_at = clock_timestamp()
 WHERE id = (SELECT id FROM backfill_runs WHERE account = '' AND types = $1 AND finished_at IS NULL ORDER BY id DESC LIMIT 1)
 RETURNING id, created_gte, starting_after, seen, appended`, types, from).
		Scan(&r.Run, &r.From, &r.cursor, &r.Seen, &r.Appended)
	if err == nil {
		r.Resumed, r.AlreadyStored = true, r.Seen-r.Appended
		r.From = r.From.UTC()
		return r, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("backfill: look for an interrupted run: %w", err)
	}
	r.From = from.UTC()
	if err := s.DB.QueryRow(ctx, `INSERT INTO backfill_runs (types, created_gte) VALUES ($1, $2) RETURNING id`, types, from).Scan(&r.Run); err != nil {
		return r, fmt.Errorf("backfill: record the run: %w", err)
	}
	return r, nil
}

// saveRun moves the run's cursor past a page whose events are all stored.
func (s *Syncer) saveRun(ctx context.Context, sum BackfillSummary, page stripeapi.Page) error {
	if len(page.Data) == 0 {
		return nil
	}
	last, err := stripeapi.ItemID(page.Data[len(page.Data)-1])
	if err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	if _, err := s.DB.Exec(ctx, `UPDATE backfill_runs SET starting_after = $2, seen = $3, appended = $4, updated_at = clock_timestamp()
 WHERE id = $1`, sum.Run, last, sum.Seen, sum.Appended); err != nil {
		return fmt.Errorf("backfill: save progress: %w", err)
	}
	return nil
}

func (s *Syncer) finishRun(ctx context.Context, run int64) error {
	if _, err := s.DB.Exec(ctx, `UPDATE backfill_runs SET finished_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1`, run); err != nil {
		return fmt.Errorf("backfill: record the end of the run: %w", err)
	}
	return nil
}
