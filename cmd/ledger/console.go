package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/stripe-ledger/stripe-ledger/api/console"
	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/internal/stripesync"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// consoleBackend gives the console (api/console) the read model, the
// audit folds and checks, and the billing projection's operations.
type consoleBackend struct {
	svc     *Service
	billing projections.Projection
}

func (b consoleBackend) FindCustomers(ctx context.Context, query string, limit int) ([]report.CustomerMatch, error) {
	return b.svc.ReadModel.FindCustomers(ctx, query, limit)
}

func (b consoleBackend) Customer(ctx context.Context, account, customerID string) (*domain.CustomerState, bool, error) {
	st, err := b.svc.ReadModel.Customer(ctx, domain.CustomerKey{Account: account, ID: customerID})
	if domain.ErrorCode(err) == domain.ENOTFOUND || errors.Is(err, projections.ErrNotBuilt) {
		return nil, false, nil
	}
	return st, err == nil, err
}

func (b consoleBackend) CustomerStreams(ctx context.Context, account, customerID string) ([]string, error) {
	return b.svc.ReadModel.CustomerStreams(ctx, account, customerID)
}

// StateAt folds with the plan mapping the live read model was folded with
// (else LEDGER_PLANS), as GET /v1/customers/{id}/state does.
func (b consoleBackend) StateAt(ctx context.Context, account, customerID string, streams []string, at time.Time) (audit.Folded, error) {
	plans, ok, err := projections.LivePlans(ctx, b.svc.Pool, b.billing.Name)
	if err != nil {
		return audit.Folded{}, err
	}
	if !ok {
		plans = b.svc.cfg.Plans
	}
	return audit.FoldState(ctx, b.svc.Log, streams, domain.CustomerKey{Account: account, ID: customerID}, plans,
		func(r eventlog.Record) bool { return !r.Created.After(at) })
}

// VerifyCustomer is ledger verify --customer.
func (b consoleBackend) VerifyCustomer(ctx context.Context, account, customerID string) (console.Verification, error) {
	streams, err := b.svc.ReadModel.CustomerStreams(ctx, account, customerID)
	if err != nil {
		return console.Verification{}, err
	}
	res, err := verifyLog(ctx, b.svc.Backends, streams, b.svc.cfg.WebhookSecrets, "", nil)
	if errors.Is(err, errNothingToVerify) {
		return console.Verification{}, console.ErrNothingToVerify
	}
	if err != nil {
		return console.Verification{}, err
	}
	v := console.Verification{OK: res.OK, Streams: res.Streams, Events: res.Events, SignaturesTested: res.SignaturesTested,
		UnsignedByDesign: res.UnsignedByDesign, ProblemCount: res.ProblemCount}
	if res.Seals != nil {
		v.Seals = res.Seals.Count
	}
	for _, p := range res.Problems {
		v.Problems = append(v.Problems, p.String())
	}
	return v, nil
}

func (b consoleBackend) Status(ctx context.Context) ([]report.Status, error) {
	return projections.ReadStatus(ctx, b.svc.Pool, b.svc.Log)
}

func (b consoleBackend) DeadLetters(ctx context.Context) ([]report.DeadLetter, error) {
	return projections.ReadDeadLetters(ctx, b.svc.Pool)
}

func (b consoleBackend) Receivers(ctx context.Context) ([]report.ReceiverStatus, error) {
	return projections.ReceiverStatuses(ctx, b.svc.Pool)
}

func (b consoleBackend) Retry(ctx context.Context, eventIDs ...string) (report.RetryResult, error) {
	return projections.Retry(ctx, b.svc.Pool, b.svc.Log, b.billing, b.svc.logger, eventIDs...)
}

func (b consoleBackend) Diff(ctx context.Context) (*report.Diff, error) {
	return projections.Diff(ctx, b.svc.Pool, b.svc.Log, b.billing, projections.Options{Logger: b.svc.logger})
}

// Rebuildable is the one projection serve runs.
func (b consoleBackend) Rebuildable() []string { return []string{b.billing.Name} }

// Rebuild is ledger projections rebuild of the billing projection: it
// fails with projections.ErrBuildInProgress when another build holds the lock.
func (b consoleBackend) Rebuild(ctx context.Context, projection string) error {
	if projection != b.billing.Name {
		return fmt.Errorf("unknown projection %q", projection)
	}
	_, err := projections.Rebuild(ctx, b.svc.Pool, b.svc.Log, b.billing, projections.Options{Logger: b.svc.logger})
	return err
}

// ReconcileDryRun is ledger reconcile --customer --account --dry-run.
func (b consoleBackend) ReconcileDryRun(ctx context.Context, customer, account string) (report.Reconciliation, error) {
	return b.svc.sync.Reconcile(ctx, stripesync.ReconcileOptions{Customer: customer, Account: account, DryRun: true})
}

// Revoke records a logged-out console session (migration 014) and drops the
// ones past their expiry.
func (b consoleBackend) Revoke(ctx context.Context, id string, expires time.Time) error {
	_, err := b.svc.Pool.Exec(ctx, `WITH gone AS (DELETE FROM console_revoked_sessions WHERE expires_at < now())
		INSERT INTO console_revoked_sessions (session_id, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, expires)
	if err != nil {
		return fmt.Errorf("revoke console session: %w", err)
	}
	return nil
}

// Revoked tells whether a console session was logged out.
func (b consoleBackend) Revoked(ctx context.Context, id string) (bool, error) {
	var revoked bool
	err := b.svc.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM console_revoked_sessions WHERE session_id = $1)`, id).Scan(&revoked)
	if err != nil {
		return false, fmt.Errorf("read console session revocations: %w", err)
	}
	return revoked, nil
}

// newConsole builds the console on the service's backends.
func newConsole(svc *Service, billing projections.Projection) (*console.Console, error) {
	b := consoleBackend{svc: svc, billing: billing}
	cfg := console.Config{
		Token: svc.cfg.APIToken, SecureCookie: svc.cfg.ConsoleSecureCookie, WebhookSecrets: svc.cfg.WebhookSecrets,
		Log: svc.Log, ReadModel: b, Auditor: b, Engineer: b, Revocations: b, Rebuilder: b, Logger: svc.logger,
	}
	if svc.sync.API != nil {
		cfg.Reconciler = b
	}
	return console.New(cfg)
}

// routeConsole sends /console and everything under it to the console, the
// rest to the API.
func routeConsole(apiHandler, consoleHandler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == console.Prefix || strings.HasPrefix(r.URL.Path, console.Prefix+"/") {
			consoleHandler.ServeHTTP(w, r)
			return
		}
		apiHandler.ServeHTTP(w, r)
	})
}
