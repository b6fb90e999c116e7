package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
)

// customerJSON is the customer shape of DESIGN §5.
type customerJSON struct {
	Account       string             `json:"account"` // the Connect account, "" for the platform
	CustomerID    string             `json:"customer_id"`
	Email         string             `json:"email"`
	Name          string             `json:"name"`
	Deleted       bool               `json:"deleted"`
	Plan          string             `json:"plan"`
	Entitled      bool               `json:"entitled"`
	AccessUntil   *time.Time         `json:"access_until"`
	UpdatedAt     time.Time          `json:"updated_at,omitzero"` // zero in a state before the customer's first event
	Subscriptions []subscriptionJSON `json:"subscriptions"`
}

// subscriptionJSON is the subscription shape of DESIGN §5.
type subscriptionJSON struct {
	Account            string     `json:"account"`
	SubscriptionID     string     `json:"subscription_id"`
	CustomerID         string     `json:"customer_id"`
	Status             string     `json:"status"`
	PriceID            string     `json:"price_id"`
	ProductID          string     `json:"product_id"`
	Plan               string     `json:"plan"`
	Quantity           int64      `json:"quantity"`
	CurrentPeriodStart *time.Time `json:"current_period_start"`
	CurrentPeriodEnd   *time.Time `json:"current_period_end"`
	CancelAtPeriodEnd  bool       `json:"cancel_at_period_end"`
	CancelAt           *time.Time `json:"cancel_at"`
	CanceledAt         *time.Time `json:"canceled_at"`
	EndedAt            *time.Time `json:"ended_at"`
	TrialEnd           *time.Time `json:"trial_end"`
	Deleted            bool       `json:"deleted"`
}

const subscriptionColumns = `account, subscription_id, customer_id, status, price_id, product_id, plan, quantity,
	current_period_start, current_period_end, cancel_at_period_end, cancel_at, canceled_at, ended_at, trial_end, deleted`

func scanSubscription(row pgx.Row) (subscriptionJSON, error) {
	var s subscriptionJSON
	err := row.Scan(&s.Account, &s.SubscriptionID, &s.CustomerID, &s.Status, &s.PriceID, &s.ProductID, &s.Plan, &s.Quantity,
		&s.CurrentPeriodStart, &s.CurrentPeriodEnd, &s.CancelAtPeriodEnd, &s.CancelAt, &s.CanceledAt, &s.EndedAt, &s.TrialEnd, &s.Deleted)
	for _, t := range []**time.Time{&s.CurrentPeriodStart, &s.CurrentPeriodEnd, &s.CancelAt, &s.CanceledAt, &s.EndedAt, &s.TrialEnd} {
		*t = utc(*t)
	}
	return s, err
}

// accountParam is the Connect account a read route names with ?account=,
// "" (the platform's) without one.
func accountParam(c echo.Context) string { return strings.TrimSpace(c.QueryParam("account")) }

// ofAccount names an object for messages: "sub_x", or "sub_x of acct_y".
func ofAccount(id, account string) string {
	if account == "" {
		return id
	}
	return id + " of " + account
}

func (s *Server) handleCustomer(c echo.Context) error {
	ctx, id := c.Request().Context(), c.Param("id")
	cust, err := s.loadCustomer(ctx, accountParam(c), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cust)
}

// loadCustomer reads a customer and its subscriptions in one snapshot, so a
// concurrent projection batch or version swap is seen whole or not at all.
func (s *Server) loadCustomer(ctx context.Context, account, id string) (customerJSON, error) {
	var cust customerJSON
	err := pgx.BeginTxFunc(ctx, s.cfg.DB, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT account, customer_id, email, name, deleted, plan, entitled, access_until, updated_at
			FROM readmodel.customers WHERE account = $1 AND customer_id = $2`, account, id).
			Scan(&cust.Account, &cust.CustomerID, &cust.Email, &cust.Name, &cust.Deleted, &cust.Plan, &cust.Entitled, &cust.AccessUntil, &cust.UpdatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.Errorf(domain.ENOTFOUND, "customer %s not found", ofAccount(id, account))
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+subscriptionColumns+` FROM readmodel.subscriptions
			WHERE account = $1 AND customer_id = $2 ORDER BY current_period_end DESC NULLS LAST, subscription_id`, account, id)
		if err != nil {
			return err
		}
		cust.Subscriptions, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (subscriptionJSON, error) { return scanSubscription(r) })
		return err
	})
	if err != nil {
		return customerJSON{}, readError(fmt.Sprintf("customer %s", id), err)
	}
	cust.AccessUntil, cust.UpdatedAt = utc(cust.AccessUntil), cust.UpdatedAt.UTC()
	return cust, nil
}

func (s *Server) handleSubscription(c echo.Context) error {
	ctx, id, account := c.Request().Context(), c.Param("id"), accountParam(c)
	sub, err := scanSubscription(s.cfg.DB.QueryRow(ctx, `SELECT `+subscriptionColumns+`
		FROM readmodel.subscriptions WHERE account = $1 AND subscription_id = $2`, account, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Errorf(domain.ENOTFOUND, "subscription %s not found", ofAccount(id, account))
	}
	if err != nil {
		return readError("subscription "+id, err)
	}
	return c.JSON(http.StatusOK, sub)
}

// readError classifies a read-model failure: domain errors pass through,
// an unreachable or overloaded database is EUNAVAILABLE (retry later),
// anything else is internal (and its text, which may hold SQL, stays in the
// log).
func readError(what string, err error) error {
	var de *domain.Error
	if errors.As(err, &de) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: no projection version is live yet
		return domain.Errorf(domain.EUNAVAILABLE, "the read model has not been built yet; retry later")
	}
	if errors.Is(err, eventlog.ErrUnavailable) || postgres.IsUnavailable(err) {
		return fmt.Errorf("read %s: %w", what, errors.Join(err, domain.Errorf(domain.EUNAVAILABLE, "the database is unavailable; retry later")))
	}
	return fmt.Errorf("read %s: %w", what, err)
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
