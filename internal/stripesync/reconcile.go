package stripesync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// ReconcileOptions configures Reconcile.
type ReconcileOptions struct {
	Customer string // only this customer (cus_…); empty: every customer of the account
	Account  string // the Connect account to reconcile (acct_…); empty: the platform
	DryRun   bool   // report the drift, append nothing
}

// Reconcile lists the account's customers, subscriptions (status=all) and
// invoices from Stripe (or one customer's), compares each with the read
// model, and, unless DryRun, appends every object that differs as an
// observed snapshot (ledger.observed.*, provenance reconcile, created = when
// it was fetched), which the projection folds like a Stripe snapshot: the
// read model converges to what Stripe said, and a rebuild reproduces it.
// Objects that agree are not appended, so a ledger in step with Stripe does
// not grow. The projection applies the snapshots asynchronously.
func (s *Syncer) Reconcile(ctx context.Context, opts ReconcileOptions) (report.Reconciliation, error) {
	rep := report.Reconciliation{Drift: []report.Drift{}, DryRun: opts.DryRun}
	if s.API == nil {
		return rep, ErrNoAPIKey
	}
	seen := map[string]bool{}
	customers := func(obj json.RawMessage) error {
		rep.Customers++
		id, _ := stripeapi.ItemID(obj)
		seen[id] = true
		return s.reconcileObject(ctx, opts, obj, &rep)
	}
	var err error
	if opts.Customer != "" {
		var body []byte
		if body, err = s.API.Get(ctx, "/v1/customers/"+url.PathEscape(opts.Customer), nil, opts.Account); err == nil {
			err = customers(body)
		}
	} else {
		err = s.API.List(ctx, "/v1/customers", nil, opts.Account, customers)
		if err == nil {
			err = s.reconcileGoneCustomers(ctx, opts, seen, &rep)
		}
	}
	if err != nil {
		return rep, fmt.Errorf("reconcile customers: %w", err)
	}
	for _, list := range []struct {
		path  string
		query url.Values
		count *int
	}{
		{"/v1/subscriptions", url.Values{"status": {"all"}}, &rep.Subscriptions},
		{"/v1/invoices", url.Values{}, &rep.Invoices},
	} {
		if opts.Customer != "" {
			list.query.Set("customer", opts.Customer)
		}
		err := s.API.List(ctx, list.path, list.query, opts.Account, func(obj json.RawMessage) error {
			*list.count++
			return s.reconcileObject(ctx, opts, obj, &rep)
		})
		if err != nil {
			return rep, fmt.Errorf("reconcile %s: %w", list.path, err)
		}
	}
	return rep, nil
}

// reconcileGoneCustomers looks up, one by one, the customers the read model
// holds as live that Stripe's list left out: Stripe lists no deleted
// customer, but retrieving one answers {"deleted": true}.
func (s *Syncer) reconcileGoneCustomers(ctx context.Context, opts ReconcileOptions, listed map[string]bool, rep *report.Reconciliation) error {
	ids, err := projections.NewQueries(s.DB).LiveCustomerIDs(ctx, opts.Account)
	if errors.Is(err, projections.ErrNotBuilt) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the ledger's customers: %w", err)
	}
	for _, id := range ids {
		if listed[id] {
			continue
		}
		body, err := s.API.Get(ctx, "/v1/customers/"+url.PathEscape(id), nil, opts.Account)
		if stripeapi.IsKind(err, stripeapi.KindNotFound) {
			continue // not this account's (another Connect account), or never Stripe's: nothing to observe
		}
		if err != nil {
			return err
		}
		rep.Customers++
		if err := s.reconcileObject(ctx, opts, body, rep); err != nil {
			return err
		}
	}
	return nil
}

// reconcileObject compares one fetched object with the read model and, on
// drift, appends it as an observed snapshot.
func (s *Syncer) reconcileObject(ctx context.Context, opts ReconcileOptions, obj json.RawMessage, rep *report.Reconciliation) error {
	payload, env, err := domain.ObservedEvent(domain.Observation{
		Object: obj, Account: opts.Account, APIVersion: stripeapi.APIVersion, FetchedAt: s.now(), Source: string(eventlog.SourceReconcile),
	})
	if err != nil {
		return err
	}
	f, err := domain.Decode(env, payload, s.Plans)
	if err != nil {
		return fmt.Errorf("read %s %s as the ledger would: %w", env.ObjectType, env.ObjectID, err)
	}
	if f == nil {
		return nil
	}
	var drift []report.Drift
	switch {
	case f.Customer != nil:
		drift, err = s.customerDrift(ctx, opts.Account, f.Customer)
	case f.Subscription != nil:
		drift, err = s.subscriptionDrift(ctx, opts.Account, f.Subscription)
	case f.Invoice != nil:
		drift, err = s.invoiceDrift(ctx, opts.Account, f.Invoice)
	}
	if err != nil || len(drift) == 0 {
		return err
	}
	for i := range drift {
		drift[i].Object, drift[i].ID, drift[i].Customer, drift[i].Account = env.ObjectType, env.ObjectID, f.CustomerID, opts.Account
	}
	rep.Drift = append(rep.Drift, drift...)
	if opts.DryRun {
		return nil
	}
	_, dup, err := s.store(ctx, payload, eventlog.SourceReconcile)
	if err != nil {
		return fmt.Errorf("append the observed %s %s: %w", env.ObjectType, env.ObjectID, err)
	}
	if !dup {
		rep.Appended++
	}
	return nil
}

// value is one compared field of an object, as text.
type value struct{ name, text string }

// diff compares the read model's values of an object with Stripe's: the
// same fields, in the same order, each side made by the same function.
func diff(ledger, stripe []value) []report.Drift {
	var out []report.Drift
	for i, l := range ledger {
		if l.text != stripe[i].text {
			out = append(out, report.Drift{Field: l.name, Ledger: l.text, Stripe: stripe[i].text})
		}
	}
	return out
}

// notHeld reports an error of a read of an object the read model does not
// hold: it has no such row, or it has not been built yet (no projection has
// run).
func notHeld(err error) bool {
	return domain.ErrorCode(err) == domain.ENOTFOUND || errors.Is(err, projections.ErrNotBuilt)
}

// missing is the drift of an object the read model does not hold.
func missing(err error) ([]report.Drift, error) {
	if notHeld(err) {
		return []report.Drift{{Field: "exists", Ledger: "false", Stripe: "true"}}, nil
	}
	return nil, fmt.Errorf("read the read model: %w", err)
}

func (s *Syncer) customerDrift(ctx context.Context, account string, c *domain.Customer) ([]report.Drift, error) {
	st, err := projections.NewQueries(s.DB).Customer(ctx, domain.CustomerKey{Account: account, ID: c.ID})
	if err != nil {
		if c.Deleted && notHeld(err) {
			return nil, nil // deleted before the ledger ever heard of it
		}
		return missing(err)
	}
	if c.Deleted { // Stripe keeps neither email nor name of a deleted customer
		return diff([]value{{"deleted", fmtBool(st.Customer.Deleted)}}, []value{{"deleted", "true"}}), nil
	}
	return diff(customerValues(st.Customer), customerValues(*c)), nil
}

func customerValues(c domain.Customer) []value {
	return []value{{"email", c.Email}, {"name", c.Name}, {"deleted", fmtBool(c.Deleted)}}
}

func (s *Syncer) subscriptionDrift(ctx context.Context, account string, sub *domain.Subscription) ([]report.Drift, error) {
	l, err := projections.NewQueries(s.DB).Subscription(ctx, account, sub.ID)
	if err != nil {
		return missing(err)
	}
	return diff(subscriptionValues(l), subscriptionValues(*sub)), nil
}

func subscriptionValues(s domain.Subscription) []value {
	return []value{
		{"status", s.Status},
		{"price_id", s.PriceID},
		{"product_id", s.ProductID},
		{"plan", s.Plan},
		{"quantity", strconv.FormatInt(s.Quantity, 10)},
		{"current_period_start", fmtTime(s.CurrentPeriodStart)},
		{"current_period_end", fmtTime(s.CurrentPeriodEnd)},
		{"cancel_at_period_end", fmtBool(s.CancelAtPeriodEnd)},
		{"canceled_at", fmtTime(s.CanceledAt)},
		{"ended_at", fmtTime(s.EndedAt)},
		{"trial_end", fmtTime(s.TrialEnd)},
		{"collection_method", s.CollectionMethod},
		{"deleted", fmtBool(s.Deleted)},
	}
}

func (s *Syncer) invoiceDrift(ctx context.Context, account string, inv *domain.Invoice) ([]report.Drift, error) {
	l, err := projections.NewQueries(s.DB).Invoice(ctx, account, inv.ID)
	if err != nil {
		return missing(err)
	}
	want := *inv
	want.AttemptCount = max(l.AttemptCount, inv.AttemptCount) // the ledger keeps the highest any snapshot reported
	return diff(invoiceValues(l), invoiceValues(want)), nil
}

func invoiceValues(inv domain.Invoice) []value {
	return []value{
		{"subscription_id", inv.SubscriptionID},
		{"status", inv.Status},
		{"amount_due", strconv.FormatInt(inv.AmountDue, 10)},
		{"amount_paid", strconv.FormatInt(inv.AmountPaid, 10)},
		{"currency", inv.Currency},
		{"paid_at", fmtTime(inv.PaidAt)},
		{"attempt_count", strconv.FormatInt(inv.AttemptCount, 10)},
	}
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "null"
	}
	return t.UTC().Format(time.RFC3339)
}

func fmtBool(b bool) string { return strconv.FormatBool(b) }
