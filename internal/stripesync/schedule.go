package stripesync

import (
	"context"
	"fmt"
	"time"

	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// EventGenerationFailureResolved is the event Stripe sends when it could not
// generate some events and has recovered: the lost events never appear
// anywhere, so the ledger reconciles.
const EventGenerationFailureResolved = "v2.core.health.event_generation_failure.resolved"

// reconcileLockClass is the first key of the advisory lock that keeps
// scheduled reconciles to one replica at a time ('LREC').
const reconcileLockClass int32 = 0x4c524543

// RunReconciler reconciles the platform account every interval (never
// when interval is 0) and once each time trigger receives, until ctx is
// done. A round runs only on the replica that takes the reconcile advisory
// lock; the others skip it. Drift is logged; errors are logged and the next
// round tries again.
func (s *Syncer) RunReconciler(ctx context.Context, interval time.Duration, trigger <-chan struct{}) {
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		case <-trigger:
		}
		ran, rep, err := s.reconcileLocked(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.logger().ErrorContext(ctx, "scheduled reconcile failed", "err", err)
		case ran && len(rep.Drift) > 0:
			for _, d := range rep.Drift {
				s.logger().WarnContext(ctx, "reconcile: drift from Stripe repaired", "object", d.Object, "id", d.ID,
					"customer", d.Customer, "field", d.Field, "ledger", d.Ledger, "stripe", d.Stripe)
			}
			s.logger().InfoContext(ctx, "reconcile", "drift", len(rep.Drift), "appended", rep.Appended)
		case ran:
			s.logger().InfoContext(ctx, "reconcile: no drift", "customers", rep.Customers,
				"subscriptions", rep.Subscriptions, "invoices", rep.Invoices)
		}
	}
}

// reconcileLocked runs one Reconcile under the reconcile lock; ran is false
// when another session holds it.
func (s *Syncer) reconcileLocked(ctx context.Context) (ran bool, rep report.Reconciliation, err error) {
	conn, err := s.DB.Acquire(ctx)
	if err != nil {
		return false, rep, fmt.Errorf("acquire a connection for the reconcile lock: %w", err)
	}
	defer conn.Release()
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, 0)`, reconcileLockClass).Scan(&ok); err != nil {
		return false, rep, fmt.Errorf("take the reconcile lock: %w", err)
	}
	if !ok {
		return false, rep, nil
	}
	defer func() {
		unlockCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(unlockCtx, `SELECT pg_advisory_unlock($1, 0)`, reconcileLockClass); err != nil {
			_ = conn.Conn().Close(unlockCtx) // ending the session releases the lock
		}
	}()
	rep, err = s.Reconcile(ctx, ReconcileOptions{})
	return true, rep, err
}
