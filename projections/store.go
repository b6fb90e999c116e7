package projections

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// table maps the rows of one read-model table to T. Every table is keyed by
// (account, id) and has an indexed (account, customer_id), which loads
// select on.
type table[T any] struct {
	name    string
	columns []column // the primary key first: account, then the object's id
	fields  func(*T) []any
}

type column struct{ name, sqlType string }

// readModelTable is what the views and Diff need of a table[T].
type readModelTable interface {
	tableName() string
	keyColumn() string
}

func (t table[T]) tableName() string { return t.name }
func (t table[T]) keyColumn() string { return t.columns[1].name }

// tables are the read model's tables, one view each in the readmodel schema.
var tables = []readModelTable{customersTable, subscriptionsTable, invoicesTable, chargesTable, disputesTable}

// selectSQL selects the rows of the customers whose accounts and ids are in
// $1 and $2. A join on unnest, not customer_id = ANY($1): a generic plan of
// the latter may scan the whole table comparing every row with every id.
func (t table[T]) selectSQL(schema string) string {
	return fmt.Sprintf("SELECT %s FROM unnest($1::text[], $2::text[]) AS c(account, id) JOIN %s.%s t ON t.account = c.account AND t.customer_id = c.id",
		t.columnList("t."), ident(schema), t.name)
}

// columnList is the table's columns, in fields' order, each after prefix.
func (t table[T]) columnList(prefix string) string {
	names := make([]string, len(t.columns))
	for i, c := range t.columns {
		names[i] = prefix + c.name
	}
	return strings.Join(names, ", ")
}

// get reads the row of (account, id) from schema; found is false when there is none.
func (t table[T]) get(ctx context.Context, q pgxQuerier, schema, account, id string) (v T, found bool, err error) {
	err = q.QueryRow(ctx, fmt.Sprintf("SELECT %s FROM %s.%s WHERE account = $1 AND %s = $2",
		t.columnList(""), ident(schema), t.name, t.keyColumn()), account, id).Scan(t.fields(&v)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return v, false, nil
	}
	return v, err == nil, err
}

// upsertSQL inserts or replaces rows given as one array per column.
func (t table[T]) upsertSQL(schema string) string {
	arrays := make([]string, len(t.columns))
	for i, c := range t.columns {
		arrays[i] = fmt.Sprintf("$%d::%s[]", i+1, c.sqlType)
	}
	return t.insertSQL(schema, "unnest("+strings.Join(arrays, ", ")+")")
}

// insertSQL inserts or replaces the rows selected from source, whose
// columns are t's, in t's order.
func (t table[T]) insertSQL(schema, source string) string {
	sets := make([]string, 0, len(t.columns)-2)
	for _, c := range t.columns[2:] {
		sets = append(sets, c.name+" = EXCLUDED."+c.name)
	}
	return fmt.Sprintf("INSERT INTO %s.%s (%s) SELECT * FROM %s ON CONFLICT (account, %s) DO UPDATE SET %s",
		ident(schema), t.name, strings.Join(t.columnNames(), ", "), source, t.keyColumn(), strings.Join(sets, ", "))
}

func (t table[T]) columnNames() []string {
	names := make([]string, len(t.columns))
	for i, c := range t.columns {
		names[i] = c.name
	}
	return names
}

// queueLoad queues the select of the rows of customers, handing each to each.
func (t table[T]) queueLoad(b *pgx.Batch, schema string, customers []domain.CustomerKey, each func(T)) {
	accounts, ids := make([]string, len(customers)), make([]string, len(customers))
	for i, k := range customers {
		accounts[i], ids[i] = k.Account, k.ID
	}
	b.Queue(t.selectSQL(schema), accounts, ids).Query(func(rows pgx.Rows) error {
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
	Account          string
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
		Account: s.Account, ID: s.Customer.ID, Email: s.Customer.Email, Name: s.Customer.Name, Deleted: s.Customer.Deleted,
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
		Account: r.Account,
		Customer: domain.Customer{
			Account: r.Account, ID: r.ID, Email: r.Email, Name: r.Name, Deleted: r.Deleted, LastEventID: r.LastEventID,
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
		columns: []column{{"account", "text"}, {"customer_id", "text"}, {"email", "text"}, {"name", "text"}, {"deleted", "boolean"},
			{"plan", "text"}, {"entitled", "boolean"}, {"access_until", "timestamptz"}, {"updated_at", "timestamptz"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(r *customerRow) []any {
			return []any{&r.Account, &r.ID, &r.Email, &r.Name, &r.Deleted, &r.Plan, &r.Entitled, &r.AccessUntil, &r.UpdatedAt,
				&r.LastEventID, &r.LastEventCreated}
		},
	}
	subscriptionsTable = table[domain.Subscription]{
		name: "subscriptions",
		columns: []column{{"account", "text"}, {"subscription_id", "text"}, {"customer_id", "text"}, {"status", "text"},
			{"price_id", "text"}, {"product_id", "text"}, {"lookup_key", "text"}, {"plan", "text"}, {"quantity", "bigint"},
			{"current_period_start", "timestamptz"}, {"current_period_end", "timestamptz"}, {"cancel_at_period_end", "boolean"},
			{"cancel_at", "timestamptz"}, {"canceled_at", "timestamptz"}, {"ended_at", "timestamptz"}, {"trial_end", "timestamptz"},
			{"latest_invoice_id", "text"}, {"items", "text"}, {"deleted", "boolean"}, {"previous_attributes", "jsonb"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}, {"snapshots", "jsonb"}},
		fields: func(s *domain.Subscription) []any {
			return []any{&s.Account, &s.ID, &s.CustomerID, &s.Status, &s.PriceID, &s.ProductID, &s.LookupKey, &s.Plan, &s.Quantity,
				&s.CurrentPeriodStart, &s.CurrentPeriodEnd, &s.CancelAtPeriodEnd, &s.CancelAt, &s.CanceledAt, &s.EndedAt, &s.TrialEnd,
				&s.LatestInvoiceID, &s.Items, &s.Deleted, &s.Previous, &s.LastEventID, &s.LastEventCreated, &s.Snapshots}
		},
	}
	invoicesTable = table[domain.Invoice]{
		name: "invoices",
		columns: []column{{"account", "text"}, {"invoice_id", "text"}, {"customer_id", "text"}, {"subscription_id", "text"}, {"status", "text"},
			{"snapshot_status", "text"}, {"amount_due", "bigint"}, {"amount_paid", "bigint"}, {"currency", "text"}, {"period_start", "timestamptz"},
			{"period_end", "timestamptz"}, {"paid_at", "timestamptz"}, {"attempt_count", "bigint"},
			{"paid_period_start", "timestamptz"}, {"paid_period_end", "timestamptz"}, {"payment", "jsonb"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(i *domain.Invoice) []any {
			return []any{&i.Account, &i.ID, &i.CustomerID, &i.SubscriptionID, &i.Status, &i.SnapshotStatus, &i.AmountDue, &i.AmountPaid, &i.Currency,
				&i.PeriodStart, &i.PeriodEnd, &i.PaidAt, &i.AttemptCount, &i.PaidPeriodStart, &i.PaidPeriodEnd, &i.Payment,
				&i.LastEventID, &i.LastEventCreated}
		},
	}
	chargesTable = table[domain.Charge]{
		name: "charges",
		columns: []column{{"account", "text"}, {"charge_id", "text"}, {"customer_id", "text"}, {"invoice_id", "text"}, {"currency", "text"},
			{"amount", "bigint"}, {"amount_refunded", "bigint"}, {"refunded", "boolean"},
			{"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(c *domain.Charge) []any {
			return []any{&c.Account, &c.ID, &c.CustomerID, &c.InvoiceID, &c.Currency, &c.Amount, &c.AmountRefunded, &c.Refunded,
				&c.LastEventID, &c.LastEventCreated}
		},
	}
	disputesTable = table[domain.Dispute]{
		name: "disputes",
		columns: []column{{"account", "text"}, {"dispute_id", "text"}, {"customer_id", "text"}, {"charge_id", "text"}, {"status", "text"},
			{"currency", "text"}, {"amount", "bigint"}, {"last_event_id", "text"}, {"last_event_created", "timestamptz"}},
		fields: func(d *domain.Dispute) []any {
			return []any{&d.Account, &d.ID, &d.CustomerID, &d.ChargeID, &d.Status, &d.Currency, &d.Amount, &d.LastEventID, &d.LastEventCreated}
		},
	}
)

// fold applies b to the read model in schema, within tx: it records b's
// links (which may resolve disputes and invoice payments to their customers), loads the
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
		notes         []notify.Notification
		eventType     = b.eventTypes()
	)
	for _, id := range ids {
		s := states[id]
		before := *s
		before.Subscriptions, before.Invoices = maps.Clone(s.Subscriptions), maps.Clone(s.Invoices)
		before.Charges, before.Disputes = maps.Clone(s.Charges), maps.Clone(s.Disputes)
		for _, f := range b.facts[id] {
			notes = applyNoting(notes, s, f, eventType)
		}
		customers = append(customers, newCustomerRow(s))
		subscriptions = appendChanged(subscriptions, before.Subscriptions, s.Subscriptions, subscriptionChanged)
		invoices = appendChanged(invoices, before.Invoices, s.Invoices,
			func(a, b domain.Invoice) bool {
				return a.LastEventID != b.LastEventID || a.AttemptCount != b.AttemptCount || !reflect.DeepEqual(a.Payment, b.Payment)
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
	queueAPIVersions(&w, schema, b.apiVersions)
	if !p.scratch {
		queueNotifications(&w, notes) // last: its lock is held until the commit
	}
	if err := tx.SendBatch(ctx, &w).Close(); err != nil {
		return fmt.Errorf("write read model %s: %w", schema, err)
	}
	return nil
}

// loadStates reads the stored state of customers from schema; customers
// without rows get an empty state.
func loadStates(ctx context.Context, tx pgx.Tx, schema string, customers []domain.CustomerKey) (map[domain.CustomerKey]*domain.CustomerState, error) {
	states := make(map[domain.CustomerKey]*domain.CustomerState, len(customers))
	for _, k := range customers {
		states[k] = &domain.CustomerState{}
	}
	key := func(account, id string) domain.CustomerKey { return domain.CustomerKey{Account: account, ID: id} }
	var b pgx.Batch
	customersTable.queueLoad(&b, schema, customers, func(r customerRow) { states[key(r.Account, r.ID)] = r.state() })
	subscriptionsTable.queueLoad(&b, schema, customers, func(s domain.Subscription) {
		objects(states[key(s.Account, s.CustomerID)]).Subscriptions[s.ID] = s
	})
	invoicesTable.queueLoad(&b, schema, customers, func(i domain.Invoice) {
		objects(states[key(i.Account, i.CustomerID)]).Invoices[i.ID] = i
	})
	chargesTable.queueLoad(&b, schema, customers, func(c domain.Charge) {
		objects(states[key(c.Account, c.CustomerID)]).Charges[c.ID] = c
	})
	disputesTable.queueLoad(&b, schema, customers, func(d domain.Dispute) {
		objects(states[key(d.Account, d.CustomerID)]).Disputes[d.ID] = d
	})
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

// subscriptionChanged reports whether the row of a subscription must be
// written: its current snapshot or the snapshots it was chosen from changed
// (a same-second snapshot that did not win must still be stored). The sets
// only grow or are replaced by another second's, so lengths and heads tell.
func subscriptionChanged(a, b domain.Subscription) bool {
	sa, sb := a.Snapshots, b.Snapshots
	return a.LastEventID != b.LastEventID || len(sa.Latest) != len(sb.Latest) || len(sa.Before) != len(sb.Before) ||
		(len(sa.Before) > 0 && sa.Before[0].LastEventID != sb.Before[0].LastEventID)
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

// queueAPIVersions records the API versions of b's events in schema's
// api_versions (ledger projections status lists them), each with the least
// event id seen: idempotent and order independent, like the fold.
func queueAPIVersions(b *pgx.Batch, schema string, versions map[string]versionSeen) {
	if len(versions) == 0 {
		return
	}
	var names, ids []string
	var tested []bool
	for v, seen := range versions {
		names, ids, tested = append(names, v), append(ids, seen.firstEventID), append(tested, domain.TestedAPIVersion(v))
	}
	b.Queue(fmt.Sprintf(`INSERT INTO %s.api_versions (api_version, tested, first_event_id)
SELECT * FROM unnest($1::text[], $2::boolean[], $3::text[])
ON CONFLICT (api_version) DO UPDATE SET first_event_id = least(api_versions.first_event_id, EXCLUDED.first_event_id)`, ident(schema)),
		names, tested, ids)
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
