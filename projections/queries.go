package projections

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// live is the schema of views over the live version's tables.
const live = "readmodel"

// Queries reads the live read model (the readmodel views), with the fold's
// own row mappings (store.go): the one place outside the fold that selects
// from the read model's tables. Its errors carry domain codes: ENOTFOUND for
// an unknown object, ErrNotBuilt before any version is live, EUNAVAILABLE
// when the database cannot serve the read right now.
type Queries struct{ pool *pgxpool.Pool }

// NewQueries reads the read model of pool's database.
func NewQueries(pool *pgxpool.Pool) *Queries { return &Queries{pool: pool} }

// ErrNotBuilt is the error of a read before any projection version is live.
var ErrNotBuilt = &domain.Error{Code: domain.EUNAVAILABLE, Message: "the read model has not been built yet; retry later"}

// Ping checks that the read model's database answers.
func (q *Queries) Ping(ctx context.Context) error {
	if err := q.pool.Ping(ctx); err != nil {
		return readError("the read model", err)
	}
	return nil
}

// Customer reads a customer's state in one read-only snapshot, so that a
// concurrent batch or version swap is seen whole or not at all: the
// customer, its subscriptions, invoices, charges and disputes.
func (q *Queries) Customer(ctx context.Context, key domain.CustomerKey) (*domain.CustomerState, error) {
	var st *domain.CustomerState
	err := pgx.BeginTxFunc(ctx, q.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		states, _, err := loadStates(ctx, tx, live, []domain.CustomerKey{key})
		st = states[key]
		return err
	})
	if err != nil {
		return nil, readError("customer "+ofAccount(key.ID, key.Account), err)
	}
	if st.Customer.ID == "" {
		return nil, domain.Errorf(domain.ENOTFOUND, "customer %s not found", ofAccount(key.ID, key.Account))
	}
	return st, nil
}

// Subscription reads one subscription.
func (q *Queries) Subscription(ctx context.Context, account, id string) (domain.Subscription, error) {
	return getLive(ctx, q, subscriptionsTable, "subscription", account, id)
}

// Invoice reads one invoice.
func (q *Queries) Invoice(ctx context.Context, account, id string) (domain.Invoice, error) {
	return getLive(ctx, q, invoicesTable, "invoice", account, id)
}

func getLive[T any](ctx context.Context, q *Queries, t table[T], what, account, id string) (T, error) {
	v, found, err := t.get(ctx, q.pool, live, account, id)
	if err != nil {
		return v, readError(what+" "+ofAccount(id, account), err)
	}
	if !found {
		return v, domain.Errorf(domain.ENOTFOUND, "%s %s not found", what, ofAccount(id, account))
	}
	return v, nil
}

// LiveCustomerIDs are the ids of account's customers that are not deleted, in order.
func (q *Queries) LiveCustomerIDs(ctx context.Context, account string) ([]string, error) {
	rows, err := customersTable.list(ctx, q.pool, live, "WHERE account = $1 AND NOT deleted ORDER BY customer_id", account)
	if err != nil {
		return nil, readError("the customers of "+accountName(account), err)
	}
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	return ids, nil
}

// FindCustomers finds up to limit customers of the live read model whose id
// is query, or whose email is query (case-insensitively), platform first,
// then by account and id. Without a live version yet it finds none.
func (q *Queries) FindCustomers(ctx context.Context, query string, limit int) ([]report.CustomerMatch, error) {
	rows, err := customersTable.list(ctx, q.pool, live,
		"WHERE customer_id = $1 OR (email <> '' AND lower(email) = lower($1)) ORDER BY account, customer_id LIMIT $2", query, limit)
	if undefinedTable(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find customers %q: %w", query, err)
	}
	found := make([]report.CustomerMatch, len(rows))
	for i, r := range rows {
		found[i] = report.CustomerMatch{Account: r.Account, CustomerID: r.ID, Email: r.Email, Name: r.Name, Deleted: r.Deleted,
			Plan: r.Plan, Entitled: r.Entitled, AccessUntil: r.AccessUntil, UpdatedAt: r.UpdatedAt}
	}
	return found, nil
}

// CustomerStreams are the streams of a customer's history (DESIGN §8): the
// customer's own stream first, then every stream linked to one of its
// objects, as the live billing projection knows them. A stream linked by an
// event the projection has not applied yet appears once it has.
func (q *Queries) CustomerStreams(ctx context.Context, account, customerID string) ([]string, error) {
	own := domain.Envelope{CustomerID: customerID, Account: account}.Stream()
	streams := []string{own}
	linked, err := linkedStreams(ctx, q.pool, "readmodel", domain.CustomerKey{Account: account, ID: customerID})
	if undefinedTable(err) {
		// The live version predates links (a rebuild to this one is under
		// way), or none is live: the customer's own stream until it is.
		return streams, nil
	}
	if err != nil {
		return nil, readError("linked streams of "+own, err)
	}
	return append(streams, linked...), nil // never a customer's stream: only events that name none are linked
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

// rowsQuerier is what pools and transactions have in common to query rows.
type rowsQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// linkedStreams are the streams of schema's stream_links linked to an
// object of customer key through its links.
func linkedStreams(ctx context.Context, q rowsQuerier, schema string, key domain.CustomerKey) ([]string, error) {
	s := ident(schema)
	rows, err := q.Query(ctx, `SELECT DISTINCT s.stream FROM `+s+`.links l
  JOIN `+s+`.stream_links s ON s.account = l.account AND s.object_id = l.object_id
 WHERE l.account = $1 AND l.customer_id = $2 ORDER BY 1`, key.Account, key.ID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// list reads the rows of t in schema that the clause after FROM selects.
func (t table[T]) list(ctx context.Context, pool *pgxpool.Pool, schema, clause string, args ...any) ([]T, error) {
	rows, err := pool.Query(ctx, fmt.Sprintf("SELECT %s FROM %s.%s %s", t.columnList(""), ident(schema), t.name, clause), args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (T, error) {
		var v T
		err := r.Scan(t.fields(&v)...)
		return v, err
	})
}

// readError classifies a failed read of what: a missing table is
// ErrNotBuilt (no version is live yet), an unreachable or overloaded
// database is EUNAVAILABLE (retry later), anything else keeps its text,
// which may hold SQL, for the log alone (domain.ErrorMessage hides it).
func readError(what string, err error) error {
	if err == nil {
		return nil
	}
	if undefinedTable(err) {
		return ErrNotBuilt
	}
	if postgres.IsUnavailable(err) {
		return fmt.Errorf("read %s: %w", what, errors.Join(err, domain.Errorf(domain.EUNAVAILABLE, "the database is unavailable; retry later")))
	}
	return fmt.Errorf("read %s: %w", what, err)
}

// undefinedTable reports PostgreSQL's undefined_table: the read model has
// no live version yet (or the live one predates the table).
func undefinedTable(err error) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && pgErr.Code == "42P01"
}

// ofAccount names an object for messages: "sub_x", or "sub_x of acct_y".
func ofAccount(id, account string) string {
	if account == "" {
		return id
	}
	return id + " of " + account
}

// accountName names an account for messages, the platform's included.
func accountName(account string) string {
	if account == "" {
		return "the platform"
	}
	return account
}
