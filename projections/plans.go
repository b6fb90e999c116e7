package projections

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// The plan mapping a projection folds with is part of its identity, like
// its version: the live version records it (projection_checkpoints.plans,
// in canonical form), a Runner whose mapping differs rebuilds blue/green,
// and Rebuild of the live version refuses to swap in another mapping (a new
// version may bring a new mapping: its runners fold with it). Every
// change of mapping is a new schema, and a runner folds into a schema only
// by compare-and-set on it, so no schema ever holds rows of two mappings.

// canonicalPlans renders plans as LEDGER_PLANS text without spaces, in
// LEDGER_PLANS order: the order is part of the mapping (it picks the plan
// of a subscription with several mapped items, DESIGN §4).
func canonicalPlans(plans domain.Plans) string {
	entries := make([]string, 0, len(plans))
	for _, e := range plans {
		entries = append(entries, e.PriceID+"="+e.Plan)
	}
	return strings.Join(entries, ",")
}

// ErrPlansChanged reports a build whose plan mapping is not the live one's.
var ErrPlansChanged = errors.New("LEDGER_PLANS differs from the mapping the live read model was folded with")

// foldedWith reports whether cp's version was folded with p's plan mapping;
// false when it predates recorded mappings.
func (cp checkpoint) foldedWith(p Projection) bool {
	return cp.Plans.Valid && cp.Plans.String == canonicalPlans(p.Plans)
}

// plansChanged is ErrPlansChanged naming both mappings.
func plansChanged(cp checkpoint, p Projection) error {
	return fmt.Errorf("%w: live %s version %d has LEDGER_PLANS=%q, this process LEDGER_PLANS=%q",
		ErrPlansChanged, p.Name, cp.Version, cp.Plans.String, canonicalPlans(p.Plans))
}

// LivePlans returns the plan mapping the live version of the projection
// named name was folded with; ok is false when none is live or it predates
// recorded mappings. Folds outside the projection (state at an instant) use
// it, so that they agree with the read model.
func LivePlans(ctx context.Context, pool *pgxpool.Pool, name string) (plans domain.Plans, ok bool, err error) {
	cp, ok, err := loadCheckpoint(ctx, pool, name, "")
	if err != nil || !ok || !cp.Plans.Valid {
		return nil, false, err
	}
	if plans, err = domain.ParsePlans(cp.Plans.String); err != nil {
		return nil, false, fmt.Errorf("live plan mapping of %s: %v", name, err) // stored by us: a bug, not bad input
	}
	return plans, true, nil
}
