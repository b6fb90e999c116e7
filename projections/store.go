package projections

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// table maps the rows of one read-model table to T. Every table has an
// indexed customer_id column, which loads select on.
type table[T any] struct {
	name    string
	columns []column // the primary key first
	fields  func(*T) []any
}

type column struct{ name, sqlType string }

// readModelTable is what the views and Diff need of a table[T].
type readModelTable interface {
	tableName() string
	keyColumn() string
}

func (t table[T]) tableName() string { return t.name }
func (t table[T]) keyColumn() string { return t.columns[0].name }

// tables are the read model's tables, one view each in the readmodel schema.
var tables = []readModelTable{customersTable, subscriptionsTable, invoicesTable, chargesTable, disputesTable}

// selectSQL selects the rows of the customers in $1. A join on unnest, not
// customer_id = ANY($1): a generic plan of the latter may scan the whole
// table comparing every row with every id.
func (t table[T]) selectSQL(schema string) string {
	names := make([]string, len(t.columns))
	for i, c := range t.columns {
		names[i] = "t." + c.name
	}
	return fmt.Sprintf("SELECT %s FROM unnest($1::text[]) AS c(id) JOIN %s.%s t ON t.customer_id = c.id",
		strings.Join(names, ", "), ident(schema), t.name)
}

// upsertSQL inserts or replaces rows given as one array per column.
func (t table[T]) upsertSQL(schema string) string {
	names, arrays, sets := make([]string, len(t.columns)), make([]string, len(t.columns)), make([]string, 0, len(t.columns)-1)
	for i, c := range t.columns {
		names[i] = c.name
		arrays[i] = fmt.Sprintf("$%d::%s[]", i+1, c.sqlType)
		if i > 0 {
			sets = append(sets, c.name+" = EXCLUDED."+c.name)
		}
	}
	return fmt.Sprintf("INSERT INTO %s.%s (%s) SELECT * FROM unnest(%s) ON CONFLICT (%s) DO UPDATE SET %s",
		ident(schema), t.name, strings.Join(names, ", "), strings.Join(arrays, ", "), t.columns[0].name, strings.Join(sets, ", "))
}

// queueLoad queues the select of the rows of customers, handing each to each.
func (t table[T]) queueLoad(b *pgx.Batch, schema string, customers []string, each func(T)) {
	b.Queue(t.selectSQL(schema), customers).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var v T
			if err := rows.Scan(t.fields(&v)...); err != nil {
				return fmt.Errorf("scan %s: %w", t.name, err)
			}
			each(v)
		}
		return rows.Err()
	})
}

// queueUpsert queues the upsert of rows, if any.
func (t table[T]) queueUpsert(b *pgx.Batch, schema string, rows []T) {
	if len(rows) == 0 {
		return
	}
	arrays := make([][]any, len(t.columns))
	for i := range rows {
		for j, f := range t.fields(&rows[i]) {
			arrays[j] = append(arrays[j], f)
		}
	}
	args := make([]any, len(arrays))
	for i, a := range arrays {
		args[i] = a
	}
	b.Queue(t.upsertSQL(schema), args...)
}

// customerRow is a row of customers: the customer's snapshot and the
// entitlement derived for it.
type customerRow struct {
	ID, Email, Name  string
	Deleted          bool
	Plan             string
	Entitled         bool
	AccessUntil      *time.Time
	UpdatedAt        time.Time
	LastEventID      string
	LastEventCreated *time.Time // NULL until a customer.* event is seen
}

func newCustomerRow(s *domain.CustomerState) customerRow {
	r := customerRow{
		ID: s.Customer.ID, Email: s.Customer.Email, Name: s.Customer.Name, Deleted: s.Customer.Deleted,
		Plan: s.Plan, Entitled: s.Entitled, AccessUntil: s.AccessUntil, UpdatedAt: s.UpdatedAt,
		LastEventID: s.Customer.LastEventID,
	}
	if !s.Customer.LastEventCreated.IsZero() {
		r.LastEventCreated = &s.Customer.LastEventCreated
	}
	return r
}

// state is the customer's state as stored, without its objects.
func (r customerRow) state() *domain.CustomerState {
	s := &domain.CustomerState{
		Customer: domain.Customer{
			ID: r.ID, Email: r.Email, Name: r.Name, Deleted: r.Deleted, LastEventID: r.LastEventID,
		},
		Plan: r.Plan, Entitled: r.Entitled, AccessUntil: r.AccessUntil, UpdatedAt: r.UpdatedAt,
	}
	if r.LastEventCreated != nil {
		s.Customer.LastEventCreated = *r.LastEventCreated
	}
	return s
}

var (
	customersTable = table[customerRow]{
		name: "customers",
		columns: []column{{"customer_id", "text"}, {"email", "text"}, {"name", "text"}, {"deleted", "boolean"},
			{"plan", "text"}, {"entitled", "boolean"}, {"access_until", "timestamptz"}, {"updated_at", "timestamptz"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(r *customerRow) []any {
			return []any{&r.ID, &r.Email, &r.Name, &r.Deleted, &r.Plan, &r.Entitled, &r.AccessUntil, &r.UpdatedAt,
				&r.LastEventID, &r.LastEventCreated}
		},
	}
	subscriptionsTable = table[domain.Subscription]{
		name: "subscriptions",
		columns: []column{{"subscription_id", "text"}, {"customer_id", "text"}, {"status", "text"}, {"price_id", "text"},
			{"product_id", "text"}, {"lookup_key", "text"}, {"plan", "text"}, {"quantity", "bigint"},
			{"current_period_start", "timestamptz"}, {"current_period_end", "timestamptz"}, {"cancel_at_period_end", "boolean"},
			{"canceled_at", "timestamptz"}, {"ended_at", "timestamptz"}, {"trial_end", "timestamptz"}, {"deleted", "boolean"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(s *domain.Subscription) []any {
			return []any{&s.ID, &s.CustomerID, &s.Status, &s.PriceID, &s.ProductID, &s.LookupKey, &s.Plan, &s.Quantity,
				&s.CurrentPeriodStart, &s.CurrentPeriodEnd, &s.CancelAtPeriodEnd, &s.CanceledAt, &s.EndedAt, &s.TrialEnd,
				&s.Deleted, &s.LastEventID, &s.LastEventCreated}
		},
	}
	invoicesTable = table[domain.Invoice]{
		name: "invoices",
		columns: []column{{"invoice_id", "text"}, {"customer_id", "text"}, {"subscription_id", "text"}, {"status", "text"},
			{"amount_due", "bigint"}, {"amount_paid", "bigint"}, {"currency", "text"}, {"period_start", "timestamptz"},
			{"period_end", "timestamptz"}, {"paid_at", "timestamptz"}, {"attempt_count", "bigint"},
			{"paid_period_start", "timestamptz"}, {"paid_period_end", "timestamptz"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(i *domain.Invoice) []any {
			return []any{&i.ID, &i.CustomerID, &i.SubscriptionID, &i.Status, &i.AmountDue, &i.AmountPaid, &i.Currency,
				&i.PeriodStart, &i.PeriodEnd, &i.PaidAt, &i.AttemptCount, &i.PaidPeriodStart, &i.PaidPeriodEnd,
				&i.LastEventID, &i.LastEventCreated}
		},
	}
	chargesTable = table[domain.Charge]{
		name: "charges",
		columns: []column{{"charge_id", "text"}, {"customer_id", "text"}, {"invoice_id", "text"}, {"currency", "text"},
			{"amount", "bigint"}, {"amount_refunded", "bigint"}, {"refunded", "boolean"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(c *domain.Charge) []any {
			return []any{&c.ID, &c.CustomerID, &c.InvoiceID, &c.Currency, &c.Amount, &c.AmountRefunded, &c.Refunded,
				&c.LastEventID, &c.LastEventCreated}
		},
	}
	disputesTable = table[domain.Dispute]{
		name: "disputes",
		columns: []column{{"dispute_id", "text"}, {"customer_id", "text"}, {"charge_id", "text"}, {"status", "text"},
			{"currency", "text"}, {"amount", "bigint"}, {"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(d *domain.Dispute) []any {
			return []any{&d.ID, &d.CustomerID, &d.ChargeID, &d.Status, &d.Currency, &d.Amount, &d.LastEventID, &d.LastEventCreated}
		},
	}
)

// fold applies b to the read model in schema, within tx: it records b's
// links (which may resolve disputes to their customers), loads the
// stored state of every customer b names, applies b's facts to it in memory,
// writes back the rows that changed and records b's dead letters.
func fold(ctx context.Context, tx pgx.Tx, p Projection, schema string, b *batch) error {
	if err := link(ctx, tx, schema, b); err != nil {
		return err
	}
	ids := b.customers()
	states, err := loadStates(ctx, tx, schema, ids)
	if err != nil {
		return err
	}
	var (
		w             pgx.Batch
		customers     []customerRow
		subscriptions []domain.Subscription
		invoices      []domain.Invoice
		charges       []domain.Charge
		disputes      []domain.Dispute
	)
	for _, id := range ids {
		s := states[id]
		before := *s
		before.Subscriptions, before.Invoices = maps.Clone(s.Subscriptions), maps.Clone(s.Invoices)
		before.Charges, before.Disputes = maps.Clone(s.Charges), maps.Clone(s.Disputes)
		for _, f := range b.facts[id] {
			s.Apply(f)
		}
		customers = append(customers, newCustomerRow(s))
		subscriptions = appendChanged(subscriptions, before.Subscriptions, s.Subscriptions,
			func(a, b domain.Subscription) bool { return a.LastEventID != b.LastEventID })
		invoices = appendChanged(invoices, before.Invoices, s.Invoices,
			func(a, b domain.Invoice) bool {
				return a.LastEventID != b.LastEventID || a.AttemptCount != b.AttemptCount
			})
		charges = appendChanged(charges, before.Charges, s.Charges,
			func(a, b domain.Charge) bool { return a.LastEventID != b.LastEventID })
		disputes = appendChanged(disputes, before.Disputes, s.Disputes,
			func(a, b domain.Dispute) bool { return a.LastEventID != b.LastEventID })
	}
	customersTable.queueUpsert(&w, schema, customers)
	subscriptionsTable.queueUpsert(&w, schema, subscriptions)
	invoicesTable.queueUpsert(&w, schema, invoices)
	chargesTable.queueUpsert(&w, schema, charges)
	disputesTable.queueUpsert(&w, schema, disputes)
	queueDeadLetters(&w, p, schema, b.deadLetters)
	if err := tx.SendBatch(ctx, &w).Close(); err != nil {
		return fmt.Errorf("write read model %s: %w", schema, err)
	}
	return nil
}

// loadStates reads the stored state of customers from schema; customers
// without rows get an empty state.
func loadStates(ctx context.Context, tx pgx.Tx, schema string, customers []string) (map[string]*domain.CustomerState, error) {
	states := make(map[string]*domain.CustomerState, len(customers))
	for _, id := range customers {
		states[id] = &domain.CustomerState{}
	}
	var b pgx.Batch
	customersTable.queueLoad(&b, schema, customers, func(r customerRow) { states[r.ID] = r.state() })
	subscriptionsTable.queueLoad(&b, schema, customers, func(s domain.Subscription) {
		objects(states[s.CustomerID]).Subscriptions[s.ID] = s
	})
	invoicesTable.queueLoad(&b, schema, customers, func(i domain.Invoice) { objects(states[i.CustomerID]).Invoices[i.ID] = i })
	chargesTable.queueLoad(&b, schema, customers, func(c domain.Charge) { objects(states[c.CustomerID]).Charges[c.ID] = c })
	disputesTable.queueLoad(&b, schema, customers, func(d domain.Dispute) { objects(states[d.CustomerID]).Disputes[d.ID] = d })
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, fmt.Errorf("load read model %s: %w", schema, err)
	}
	return states, nil
}

// objects readies the object maps of s, which the customers row left nil.
// The customers row is selected first, so s is never replaced afterwards.
func objects(s *domain.CustomerState) *domain.CustomerState {
	if s.Subscriptions == nil {
		s.Subscriptions = map[string]domain.Subscription{}
		s.Invoices = map[string]domain.Invoice{}
		s.Charges = map[string]domain.Charge{}
		s.Disputes = map[string]domain.Dispute{}
	}
	return s
}

// appendChanged appends to rows the objects of after that are new or differ
// from their counterpart in before.
func appendChanged[T any](rows []T, before, after map[string]T, differ func(a, b T) bool) []T {
	for id, v := range after {
		if old, ok := before[id]; !ok || differ(old, v) {
			rows = append(rows, v)
		}
	}
	return rows
}

func queueDeadLetters(b *pgx.Batch, p Projection, schema string, letters []deadLetter) {
	if len(letters) == 0 {
		return
	}
	var (
		ids, types, errs, streams   []string
		commits, prepares, versions []int64
	)
	for _, l := range letters {
		ids, types, errs = append(ids, l.eventID), append(types, l.eventType), append(errs, l.err)
		commits, prepares = append(commits, int64(l.position.Commit)), append(prepares, int64(l.position.Prepare))
		streams, versions = append(streams, l.stream), append(versions, l.streamVersion)
	}
	b.Queue(`INSERT INTO projection_dead_letters
       (projection, version, schema_name, event_id, position, prepare, event_type, error, stream, stream_version)
SELECT $1, $2, $3, * FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[])
ON CONFLICT (schema_name, event_id) DO NOTHING`, p.Name, p.Version, schema, ids, commits, prepares, types, errs, streams, versions)
}
