// Package stripesync brings what Stripe's API knows into the event log
// (DESIGN §10): backfill from the Events API, reconcile the read model
// against Stripe's objects, and fetch what thin events announce.
//
// Everything fetched goes through the event log's dedup append, like a
// webhook delivery, with its provenance (eventlog.Source) and without a
// Stripe-Signature, so a rebuild stays a pure function of the log. The
// bookkeeping (thin events awaiting a fetch, backfill cursors) lives in the
// PostgreSQL tables of migrations/009_stripe_sync.sql, whatever the log's
// backend.
package stripesync

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
)

// Syncer reads Stripe's API into the log. API may be nil (no STRIPE_API_KEY):
// then only the bookkeeping works (thin events are queued and counted).
type Syncer struct {
	API    *stripeapi.Client
	Log    eventlog.Log
	DB     *pgxpool.Pool
	Plans  domain.Plans // LEDGER_PLANS, for comparing plans in reconcile
	Logger *slog.Logger // nil discards
	Now    func() time.Time
}

func (s *Syncer) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Syncer) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

// ErrNoAPIKey is returned by the operations that need Stripe's API when the
// Syncer has no client.
var ErrNoAPIKey = fmt.Errorf("%w: backfill, reconcile and thin-event fetches read Stripe's API", stripeapi.ErrNoKey)

// store appends a Stripe event payload fetched from the API, with its
// provenance, through the log's dedup: an event already stored (delivered
// by webhook, or fetched before) is reported as a duplicate.
func (s *Syncer) store(ctx context.Context, payload []byte, source eventlog.Source) (domain.Envelope, bool, error) {
	env, err := domain.ParseEnvelope(payload)
	if err != nil {
		return env, false, err
	}
	res, err := s.Log.Append(ctx, eventlog.Event{
		ID:         env.ID,
		Stream:     env.Stream(),
		Type:       env.Type,
		APIVersion: env.APIVersion,
		Created:    env.Created,
		Account:    env.Account,
		Payload:    payload,
		Source:     source,
	})
	if err != nil {
		return env, false, err
	}
	return env, res.Duplicate, nil
}
