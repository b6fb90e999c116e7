package projections

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// The read model's tables, declared once. Each build's schema is created
// from these declarations (createSchemaSQL), and every statement that reads
// or writes a table takes its columns from them: the fold's loads and
// upserts, the fill's COPY, the links, Queries, Diff and the views. Adding a
// column is one column and one field in its table below (and the domain
// field it holds). Its migration is a BillingVersion bump: the read model's
// tables are not in migrations/, because a new version is built from the
// log into a fresh schema beside the live one and swapped in (doc.go), so
// no table is ever altered in place. TestReadModelCatalog compares the
// schema these declarations create with testdata/readmodel_catalog.txt,
// where the change shows as the lines it adds.
//
// Every *_event_* column is what the convergence rules (DESIGN §4) compare,
// and subscriptions.snapshots holds the snapshots the current one was chosen
// from, so a state loaded from these rows folds exactly like one kept in
// memory. Every object is keyed by (account, id): account is the Connect
// account, '' for the platform (DESIGN §4).

// column is one column of a read-model table: its name and its definition
// as CREATE TABLE takes it ("text NOT NULL", "timestamptz"). The
// definition's first word is the column's type, which array parameters
// are cast to.
type column struct{ name, def string }

func (c column) sqlType() string {
	t, _, _ := strings.Cut(c.def, " ")
	return t
}

// table maps the rows of one read-model table to T: fields gives the
// addresses of a T's values in columns' order, for Scan, COPY and the
// arrays of an insert.
type table[T any] struct {
	name    string
	columns []column
	key     int        // the primary key: the first key columns
	indexes [][]string // the table's other indexes, each on these columns
	fields  func(*T) []any
}

// schemaTable is what createSchemaSQL, the views and Diff need of a table[T].
type schemaTable interface {
	tableName() string
	keyColumn() string
	createSQL(schema string) string
	bareSQL(schema string) string
	keysSQL(schema string) string
}

func (t table[T]) tableName() string { return t.name }

// keyColumn is the object's id in a table keyed by (account, id).
func (t table[T]) keyColumn() string { return t.columns[1].name }

// createSQL creates t and its indexes in schema.
func (t table[T]) createSQL(schema string) string { return t.bareSQL(schema) + t.keysSQL(schema) }

// bareSQL creates t in schema without its primary key and indexes.
func (t table[T]) bareSQL(schema string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE %s.%s (\n", ident(schema), t.name)
	for i, c := range t.columns {
		fmt.Fprintf(&b, "    %s %s", c.name, c.def)
		if i < len(t.columns)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString(");\n")
	return b.String()
}

// keysSQL adds t's primary key and indexes in schema: building them once
// the rows are in costs a COPY about half of what updating them row by row
// does.
func (t table[T]) keysSQL(schema string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ALTER TABLE %s.%s ADD PRIMARY KEY (%s);\n", ident(schema), t.name, strings.Join(t.columnNames()[:t.key], ", "))
	for _, on := range t.indexes {
		fmt.Fprintf(&b, "CREATE INDEX ON %s.%s (%s);\n", ident(schema), t.name, strings.Join(on, ", "))
	}
	return b.String()
}

// createSchemaSQL creates schema and the read model's tables in it.
func createSchemaSQL(schema string) string {
	var b strings.Builder
	b.WriteString("CREATE SCHEMA " + ident(schema) + ";\n")
	for _, t := range schemaTables() {
		b.WriteString(t.createSQL(schema))
	}
	return b.String()
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// columnList is the table's columns, in fields' order, each after prefix.
func (t table[T]) columnList(prefix string) string {
	names := t.columnNames()
	for i := range names {
		names[i] = prefix + names[i]
	}
	return strings.Join(names, ", ")
}

func (t table[T]) columnNames() []string {
	names := make([]string, len(t.columns))
	for i, c := range t.columns {
		names[i] = c.name
	}
	return names
}

// selectSQL selects the rows of the customers whose accounts and ids are in
// $1 and $2. A join on unnest, not customer_id = ANY($1): a generic plan of
// the latter may scan the whole table comparing every row with every id.
func (t table[T]) selectSQL(schema string) string {
	return fmt.Sprintf("SELECT %s FROM unnest($1::text[], $2::text[]) AS c(account, id) JOIN %s.%s t ON t.account = c.account AND t.customer_id = c.id",
		t.columnList("t."), ident(schema), t.name)
}

// insertSQL inserts the rows selected from source, whose columns are t's in
// t's order; conflict says what becomes of a row whose key is stored
// (upsert, keepStored, or a clause of the table's own).
func (t table[T]) insertSQL(schema, source, conflict string) string {
	return fmt.Sprintf("INSERT INTO %s.%s (%s) SELECT * FROM %s %s", ident(schema), t.name, t.columnList(""), source, conflict)
}

// keepStored keeps the row stored when one with the same key is inserted.
const keepStored = "ON CONFLICT DO NOTHING"

// upsert replaces the row stored when one with the same key is inserted.
func (t table[T]) upsert() string {
	sets := make([]string, 0, len(t.columns)-t.key)
	for _, c := range t.columns[t.key:] {
		sets = append(sets, c.name+" = EXCLUDED."+c.name)
	}
	return fmt.Sprintf("ON CONFLICT (%s) DO UPDATE SET %s", strings.Join(t.columnNames()[:t.key], ", "), strings.Join(sets, ", "))
}

// queueLoad queues the select of the rows of customers, handing each to
// each; with no customers, none.
func (t table[T]) queueLoad(b *pgx.Batch, schema string, customers []domain.CustomerKey, each func(T)) {
	if len(customers) == 0 {
		return
	}
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

// queueCustomPlans queues the statements that queue queues, which look
// rows up by the keys of their array parameters, each planned for its own
// arguments. A prepared statement's generic plan, which PostgreSQL settles
// on after five executions, is kept until the table is analyzed again: one
// planned while the table was small (a schema made live empty, at first
// start, fills as the runner folds, and autovacuum analyzes it a minute or
// more later) scans the whole table and hashes it, for a dozen keys: the
// live runner's selects took 0.5-0.9 ms each for 7-19 rows under ingest,
// where an index scan takes about 0.1 ms. Planning each costs about 0.1 ms.
func queueCustomPlans(b *pgx.Batch, queue func()) {
	b.Queue(`SET LOCAL plan_cache_mode = force_custom_plan`)
	queue()
	b.Queue(`RESET plan_cache_mode`)
}

// queueUpsert queues the upsert of rows, if any.
func (t table[T]) queueUpsert(b *pgx.Batch, schema string, rows []T) {
	t.queueInsert(b, schema, rows, t.upsert())
}

// queueInsert queues the insert of rows, if any, given as one array per
// column; conflict is as insertSQL's.
func (t table[T]) queueInsert(b *pgx.Batch, schema string, rows []T, conflict string) {
	if len(rows) == 0 {
		return
	}
	source, args := t.unnest(rows)
	b.Queue(t.insertSQL(schema, source, conflict), args...)
}

// unnest returns the unnest of one array parameter per column that selects
// rows, and those arrays.
func (t table[T]) unnest(rows []T) (source string, args []any) {
	arrays := make([]columnArray, len(t.columns))
	for i := range rows {
		for j, f := range t.fields(&rows[i]) {
			if arrays[j] == nil {
				arrays[j] = newColumnArray(f, t.columns[j], len(rows))
			}
			arrays[j].add(f)
		}
	}
	args = make([]any, len(arrays))
	params := make([]string, len(arrays))
	for i, a := range arrays {
		if a != nil {
			args[i] = a.value()
		}
		params[i] = fmt.Sprintf("$%d::%s[]", i+1, t.columns[i].sqlType())
	}
	return "unnest(" + strings.Join(params, ", ") + ")", args
}

// columnArray collects one column's values, given as the addresses that a
// table's fields returns, into the array parameter of an unnest.
type columnArray interface {
	add(field any)
	value() any
}

// newColumnArray returns the columnArray for fields like field, of column
// c, made for n values. Strings, integers, booleans and times go into
// slices of their type, nullable times into pgtype.Timestamptz, and JSON
// into its encoding, made here (json.Marshal, the NULL of a nil pointer):
// pgx encodes all of them without reflection, on the writer's goroutine
// (chunkWriter), whose encoding the server waits for. A catch-up batch
// writes thousands of rows: encoded as []any of pointers, element by
// element through reflection, they cost a sixth of its Go CPU, and the
// nullable times and JSON still took the writer half of its encoding.
func newColumnArray(field any, c column, n int) columnArray {
	switch field.(type) {
	case *string:
		return &valueArray[string]{values: make([]string, 0, n)}
	case *int64:
		return &valueArray[int64]{values: make([]int64, 0, n)}
	case *bool:
		return &valueArray[bool]{values: make([]bool, 0, n)}
	case *time.Time:
		return &valueArray[time.Time]{values: make([]time.Time, 0, n)}
	case **time.Time:
		return &nullTimeArray{values: make(pgtype.FlatArray[pgtype.Timestamptz], 0, n)}
	}
	if c.sqlType() == "jsonb" {
		return &jsonArray{values: make(pgtype.FlatArray[[]byte], 0, n)}
	}
	panic(fmt.Sprintf("column %s: no array for fields of type %T", c.name, field))
}

// valueArray holds the values of fields of type *T.
type valueArray[T any] struct{ values []T }

func (a *valueArray[T]) add(field any) { a.values = append(a.values, *field.(*T)) }
func (a *valueArray[T]) value() any    { return a.values }

// nullTimeArray holds the values of fields of type **time.Time.
type nullTimeArray struct {
	values pgtype.FlatArray[pgtype.Timestamptz]
}

func (a *nullTimeArray) add(field any) {
	var v pgtype.Timestamptz
	if t := *field.(**time.Time); t != nil {
		v = pgtype.Timestamptz{Time: *t, Valid: true}
	}
	a.values = append(a.values, v)
}
func (a *nullTimeArray) value() any { return a.values }

// jsonArray holds the JSON of fields (jsonOf).
type jsonArray struct{ values pgtype.FlatArray[[]byte] }

func (a *jsonArray) add(field any) { a.values = append(a.values, jsonOf(field)) }

// jsonOf is the JSON of field, the address of a jsonb column's value, as
// pgx's JSON codec would encode it: nil (NULL) for a nil pointer, anything
// else what json.Marshal makes of it (a nil map is the JSON null).
func jsonOf(field any) []byte {
	if v := reflect.ValueOf(field).Elem(); v.Kind() == reflect.Pointer && v.IsNil() {
		return nil
	}
	raw, _ := json.Marshal(field) // the read model's plain structs and maps, which never fail
	return raw
}
func (a *jsonArray) value() any { return a.values }

// customerTables are the tables of customers and their objects: each has a
// customer_id, which loads select on and Diff compares by.
var customerTables = []schemaTable{customersTable, subscriptionsTable, invoicesTable, chargesTable, disputesTable}

// linkTables are the tables of links (links.go). They have no customer_id,
// so Diff does not compare them; what they change (disputes, histories) it
// does.
var linkTables = []schemaTable{linksTable, streamLinksTable, pendingDisputesTable, pendingInvoicePaymentsTable}

// schemaTables are every table of a build's schema. The customer and link
// tables are seen by readers through the views of the readmodel schema;
// api_versions only by ReadStatus.
func schemaTables() []schemaTable {
	return slices.Concat(customerTables, []schemaTable{apiVersionsTable}, linkTables)
}

// viewedTables are the tables of a build, each seen by readers through a
// view: the customer tables and the links.
func viewedTables() []string { return tableNames(slices.Concat(customerTables, linkTables)) }

// tableNames are the names of tables.
func tableNames(tables []schemaTable) []string {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.tableName()
	}
	return names
}

// Column definitions, by what a column holds.
const (
	text        = "text NOT NULL"
	boolean     = "boolean NOT NULL"
	bigint      = "bigint NOT NULL"
	timestamptz = "timestamptz NOT NULL"
	nullTime    = "timestamptz" // NULL: no such time
	jsonb       = "jsonb NOT NULL"
	nullJSON    = "jsonb" // NULL: none
)

var (
	// objectIndexes index a customer's objects by their customer.
	objectIndexes = [][]string{{"account", "customer_id"}}

	customersTable = table[customerRow]{
		name: "customers", key: 2,
		columns: []column{{"account", text}, {"customer_id", text}, {"email", text + " DEFAULT ''"}, {"name", text + " DEFAULT ''"},
			{"deleted", boolean + " DEFAULT false"}, {"plan", text}, {"entitled", boolean}, {"access_until", nullTime},
			{"updated_at", timestamptz}, {"last_event_id", text + " DEFAULT ''"}, {"last_event_created", nullTime},
			{"entitlement_timeline", jsonb + " DEFAULT '[]'"}}, // the entitlement's transitions in time (timeline.go)
		fields: func(r *customerRow) []any {
			return []any{&r.Account, &r.ID, &r.Email, &r.Name, &r.Deleted, &r.Plan, &r.Entitled, &r.AccessUntil, &r.UpdatedAt,
				&r.LastEventID, &r.LastEventCreated, &r.Timeline}
		},
	}
	subscriptionsTable = table[domain.Subscription]{
		name: "subscriptions", key: 2, indexes: objectIndexes,
		columns: []column{{"account", text}, {"subscription_id", text}, {"customer_id", text}, {"status", text},
			{"price_id", text}, {"product_id", text}, {"lookup_key", text}, {"plan", text}, {"quantity", bigint},
			{"current_period_start", nullTime}, {"current_period_end", nullTime}, {"cancel_at_period_end", boolean},
			{"cancel_at", nullTime}, {"canceled_at", nullTime}, {"ended_at", nullTime}, {"trial_end", nullTime},
			{"collection_method", text}, {"latest_invoice_id", text}, {"items", text}, {"deleted", boolean}, {"previous_attributes", nullJSON},
			{"last_event_id", text}, {"last_event_created", timestamptz}, {"snapshots", jsonb}},
		fields: func(s *domain.Subscription) []any {
			return []any{&s.Account, &s.ID, &s.CustomerID, &s.Status, &s.PriceID, &s.ProductID, &s.LookupKey, &s.Plan, &s.Quantity,
				&s.CurrentPeriodStart, &s.CurrentPeriodEnd, &s.CancelAtPeriodEnd, &s.CancelAt, &s.CanceledAt, &s.EndedAt, &s.TrialEnd,
				&s.CollectionMethod, &s.LatestInvoiceID, &s.Items, &s.Deleted, &s.Previous, &s.LastEventID, &s.LastEventCreated, &s.Snapshots}
		},
	}
	invoicesTable = table[domain.Invoice]{
		name: "invoices", key: 2, indexes: objectIndexes,
		columns: []column{{"account", text}, {"invoice_id", text}, {"customer_id", text}, {"subscription_id", text}, {"status", text},
			{"snapshot_status", text}, // once a payment marked it paid: its own snapshot's status; else ''
			{"amount_due", bigint}, {"amount_paid", bigint}, {"currency", text}, {"period_start", nullTime},
			{"period_end", nullTime}, {"paid_at", nullTime}, {"attempt_count", bigint},
			{"paid_period_start", nullTime}, {"paid_period_end", nullTime},
			{"payment", nullJSON}, // the invoice_payment.paid events merged (domain.InvoicePayment); NULL when none
			{"last_event_id", text}, {"last_event_created", timestamptz}},
		fields: func(i *domain.Invoice) []any {
			return []any{&i.Account, &i.ID, &i.CustomerID, &i.SubscriptionID, &i.Status, &i.SnapshotStatus, &i.AmountDue, &i.AmountPaid, &i.Currency,
				&i.PeriodStart, &i.PeriodEnd, &i.PaidAt, &i.AttemptCount, &i.PaidPeriodStart, &i.PaidPeriodEnd, &i.Payment,
				&i.LastEventID, &i.LastEventCreated}
		},
	}
	chargesTable = table[domain.Charge]{
		name: "charges", key: 2, indexes: objectIndexes,
		columns: []column{{"account", text}, {"charge_id", text}, {"customer_id", text}, {"invoice_id", text}, {"currency", text},
			{"amount", bigint}, {"amount_refunded", bigint}, {"refunded", boolean},
			{"last_event_id", text}, {"last_event_created", timestamptz}},
		fields: func(c *domain.Charge) []any {
			return []any{&c.Account, &c.ID, &c.CustomerID, &c.InvoiceID, &c.Currency, &c.Amount, &c.AmountRefunded, &c.Refunded,
				&c.LastEventID, &c.LastEventCreated}
		},
	}
	disputesTable = table[domain.Dispute]{
		name: "disputes", key: 2, indexes: objectIndexes,
		columns: []column{{"account", text}, {"dispute_id", text}, {"customer_id", text}, {"charge_id", text}, {"status", text},
			{"currency", text}, {"amount", bigint}, {"last_event_id", text}, {"last_event_created", timestamptz}},
		fields: func(d *domain.Dispute) []any {
			return []any{&d.Account, &d.ID, &d.CustomerID, &d.ChargeID, &d.Status, &d.Currency, &d.Amount, &d.LastEventID, &d.LastEventCreated}
		},
	}

	// apiVersionsTable holds the Stripe API versions of the events folded
	// (ledger projections status lists those the decoder was not tested
	// with), each with its least event id.
	apiVersionsTable = table[report.APIVersion]{
		name: "api_versions", key: 1,
		columns: []column{{"api_version", text}, {"tested", boolean}, {"first_event_id", text}},
		fields:  func(v *report.APIVersion) []any { return []any{&v.Version, &v.Tested, &v.FirstEventID} },
	}

	// The tables of links (DESIGN §8; links.go): object -> customer from
	// the events that name both; object -> stream for the streams of
	// events that name no customer; dispute snapshots waiting for their
	// charge's link, and invoice payments (API 2025-03-31+) waiting for
	// their invoice's.
	linksTable = table[objectLink]{
		name: "links", key: 2, indexes: objectIndexes,
		columns: []column{{"account", text}, {"object_id", text}, {"customer_id", text}},
		fields:  func(l *objectLink) []any { return []any{&l.account, &l.object, &l.customer} },
	}
	streamLinksTable = table[streamLink]{
		name: "stream_links", key: 3,
		columns: []column{{"account", text}, {"object_id", text}, {"stream", text}},
		fields:  func(l *streamLink) []any { return []any{&l.account, &l.object, &l.stream} },
	}
	pendingDisputesTable = table[pendingDispute]{
		name: "pending_disputes", key: 2, indexes: [][]string{{"account", "charge_id"}},
		columns: []column{{"account", text}, {"event_id", text}, {"charge_id", text}, {"dispute_id", text}, {"status", text},
			{"currency", text}, {"amount", bigint}, {"last_event_created", timestamptz}},
		fields: func(p *pendingDispute) []any {
			if p.fact.Dispute == nil { // a row to scan into
				p.fact.Dispute = &domain.Dispute{}
			}
			d := p.fact.Dispute
			return []any{&p.account, &p.fact.EventID, &d.ChargeID, &d.ID, &d.Status, &d.Currency, &d.Amount, &d.LastEventCreated}
		},
	}
	pendingInvoicePaymentsTable = table[pendingPayment]{
		name: "pending_invoice_payments", key: 2, indexes: [][]string{{"account", "invoice_id"}},
		columns: []column{{"account", text}, {"event_id", text}, {"invoice_id", text}, {"invoice_payment_id", text},
			{"amount_paid", bigint}, {"currency", text}, {"paid_at", nullTime}, {"last_event_created", timestamptz}},
		fields: func(p *pendingPayment) []any {
			if p.fact.InvoicePayment == nil { // a row to scan into
				p.fact.InvoicePayment = &domain.InvoicePayment{}
			}
			ip := p.fact.InvoicePayment
			return []any{&p.account, &p.fact.EventID, &ip.InvoiceID, &ip.ID, &ip.AmountPaid, &ip.Currency, &ip.PaidAt, &ip.LastEventCreated}
		},
	}
)
