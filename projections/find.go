package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// CustomerMatch is a customer of the live read model found by FindCustomers.
type CustomerMatch struct {
	Account     string // the Connect account, "" for the platform
	CustomerID  string
	Email       string
	Name        string
	Deleted     bool
	Plan        string
	Entitled    bool
	AccessUntil *time.Time
	UpdatedAt   time.Time
}

// FindCustomers finds up to limit customers of the live read model whose id
// is query, or whose email is query (case-insensitively), platform first,
// then by account and id. Without a live version yet it finds none.
func FindCustomers(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, query string, limit int) ([]CustomerMatch, error) {
	rows, err := q.Query(ctx, `SELECT account, customer_id, email, name, deleted, plan, entitled, access_until, updated_at
  FROM readmodel.customers WHERE customer_id = $1 OR (email <> '' AND lower(email) = lower($1))
 ORDER BY account, customer_id LIMIT $2`, query, limit)
	var found []CustomerMatch
	if err == nil {
		found, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (CustomerMatch, error) {
			var m CustomerMatch
			err := r.Scan(&m.Account, &m.CustomerID, &m.Email, &m.Name, &m.Deleted, &m.Plan, &m.Entitled, &m.AccessUntil, &m.UpdatedAt)
			return m, err
		})
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: no live version yet
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find customers %q: %w", query, err)
	}
	return found, nil
}

// LoadCustomer reads a customer's state from the live read model (the
// readmodel views) in one read-only snapshot: the customer, its
// subscriptions, invoices, charges and disputes. found is false when the
// read model has no row for the customer (or no live version yet).
func LoadCustomer(ctx context.Context, pool *pgxpool.Pool, key domain.CustomerKey) (st *domain.CustomerState, found bool, err error) {
	err = pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		states, err := loadStates(ctx, tx, "readmodel", []domain.CustomerKey{key})
		st = states[key]
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: no live version yet
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("customer %s: %w", key.ID, err)
	}
	return st, st.Customer.ID != "", nil
}
