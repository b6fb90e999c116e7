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
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// ReconcileOptions configures Reconcile.
type ReconcileOptions struct {
	Customer string // only this customer (cus_…); empty: every customer of the account
	Account  string // the Connect account to reconcile (acct_…); empty: the platform
	DryRun   bool   // report the drift, append nothing
}

// Drift is one field on which the read model and Stripe disagree.
type Drift struct {
	Object   string `json:"object"` // customer, subscription or invoice
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Account  string `json:"account,omitempty"`
	Field    string `json:"field"` // a read-model column, or "exists" for an object the ledger has never seen
	Ledger   string `json:"ledger"`
	Stripe   string `json:"stripe"`
}

// ReconcileReport is what Reconcile found and did.
type ReconcileReport struct {
	Customers     int     `json:"customers"`
	Subscriptions int     `json:"subscriptions"`
	Invoices      int     `json:"invoices"`
	Drift         []Drift `json:"drift"`
	Appended      int     `json:"appended"` // observed snapshots added to the log (none with DryRun)
	DryRun        bool    `json:"dry_run"`
}

// Reconcile lists the account's customers, subscriptions (status=all) and
// invoices from Stripe (or one customer's), compares each with the read
// model, and, unless DryRun, appends every object that differs as an
// observed snapshot (ledger.observed.*, provenance reconcile, created = when
// it was fetched), which the projection folds like a Stripe snapshot: the
// read model converges to what Stripe said, and a rebuild reproduces it.
// Objects that agree are not appended, so a ledger in step with Stripe does
// not grow. The projection applies the snapshots asynchronously.
func (s *Syncer) Reconcile(ctx context.Context, opts ReconcileOptions) (ReconcileReport, error) {
	rep := ReconcileReport{Drift: []Drift{}, DryRun: opts.DryRun}
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
func (s *Syncer) reconcileGoneCustomers(ctx context.Context, opts ReconcileOptions, listed map[string]bool, rep *ReconcileReport) error {
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
func (s *Syncer) reconcileObject(ctx context.Context, opts ReconcileOptions, obj json.RawMessage, rep *ReconcileReport) error {
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
	var drift []Drift
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

// field is one compared value: the read model's and Stripe's, as text.
type field struct{ name, ledger, stripe string }

func diff(fields []field) []Drift {
	var out []Drift
	for _, f := range fields {
		if f.ledger != f.stripe {
			out = append(out, Drift{Field: f.name, Ledger: f.ledger, Stripe: f.stripe})
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
func missing(err error) ([]Drift, error) {
	if notHeld(err) {
		return []Drift{{Field: "exists", Ledger: "false", Stripe: "true"}}, nil
	}
	return nil, fmt.Errorf("read the read model: %w", err)
}

func (s *Syncer) customerDrift(ctx context.Context, account string, c *domain.Customer) ([]Drift, error) {
	st, err := projections.NewQueries(s.DB).Customer(ctx, domain.CustomerKey{Account: account, ID: c.ID})
	if err != nil {
		if c.Deleted && notHeld(err) {
			return nil, nil // deleted before the ledger ever heard of it
		}
		return missing(err)
	}
	email, name, deleted := st.Customer.Email, st.Customer.Name, st.Customer.Deleted
	if c.Deleted {
		return diff([]field{{"deleted", fmtBool(deleted), "true"}}), nil
	}
	return diff([]field{
		{"email", email, c.Email},
		{"name", name, c.Name},
		{"deleted", fmtBool(deleted), "false"},
	}), nil
}

func (s *Syncer) subscriptionDrift(ctx context.Context, account string, sub *domain.Subscription) ([]Drift, error) {
	l, err := projections.NewQueries(s.DB).Subscription(ctx, account, sub.ID)
	if err != nil {
		return missing(err)
	}
	return diff([]field{
		{"status", l.Status, sub.Status},
		{"price_id", l.PriceID, sub.PriceID},
		{"product_id", l.ProductID, sub.ProductID},
		{"plan", l.Plan, sub.Plan},
		{"quantity", strconv.FormatInt(l.Quantity, 10), strconv.FormatInt(sub.Quantity, 10)},
		{"current_period_start", fmtTime(l.CurrentPeriodStart), fmtTime(sub.CurrentPeriodStart)},
		{"current_period_end", fmtTime(l.CurrentPeriodEnd), fmtTime(sub.CurrentPeriodEnd)},
		{"cancel_at_period_end", fmtBool(l.CancelAtPeriodEnd), fmtBool(sub.CancelAtPeriodEnd)},
		{"canceled_at", fmtTime(l.CanceledAt), fmtTime(sub.CanceledAt)},
		{"ended_at", fmtTime(l.EndedAt), fmtTime(sub.EndedAt)},
		{"trial_end", fmtTime(l.TrialEnd), fmtTime(sub.TrialEnd)},
		{"deleted", fmtBool(l.Deleted), fmtBool(sub.Deleted)},
	}), nil
}

func (s *Syncer) invoiceDrift(ctx context.Context, account string, inv *domain.Invoice) ([]Drift, error) {
	l, err := projections.NewQueries(s.DB).Invoice(ctx, account, inv.ID)
	if err != nil {
		return missing(err)
	}
	return diff([]field{
		{"subscription_id", l.SubscriptionID, inv.SubscriptionID},
		{"status", l.Status, inv.Status},
		{"amount_due", strconv.FormatInt(l.AmountDue, 10), strconv.FormatInt(inv.AmountDue, 10)},
		{"amount_paid", strconv.FormatInt(l.AmountPaid, 10), strconv.FormatInt(inv.AmountPaid, 10)},
		{"currency", l.Currency, inv.Currency},
		{"paid_at", fmtTime(l.PaidAt), fmtTime(inv.PaidAt)},
		// The ledger keeps the highest attempt count any snapshot reported.
		{"attempt_count", strconv.FormatInt(l.AttemptCount, 10), strconv.FormatInt(max(l.AttemptCount, inv.AttemptCount), 10)},
	}), nil
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "null"
	}
	return t.UTC().Format(time.RFC3339)
}

func fmtBool(b bool) string { return strconv.FormatBool(b) }
