package api

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
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
	CollectionMethod   string     `json:"collection_method"` // charge_automatically or send_invoice
	Deleted            bool       `json:"deleted"`
}

// newCustomerJSON is st in the customer shape, its subscriptions in the
// order GET /v1/customers/{id} lists them: latest period end first.
func newCustomerJSON(st *domain.CustomerState) customerJSON {
	cust := customerJSON{
		Account: st.Account, CustomerID: st.Customer.ID, Email: st.Customer.Email, Name: st.Customer.Name, Deleted: st.Customer.Deleted,
		Plan: st.Plan, Entitled: st.Entitled, AccessUntil: utc(st.AccessUntil), UpdatedAt: st.UpdatedAt.UTC(),
		Subscriptions: []subscriptionJSON{},
	}
	for _, sub := range st.Subscriptions {
		cust.Subscriptions = append(cust.Subscriptions, newSubscriptionJSON(sub))
	}
	slices.SortFunc(cust.Subscriptions, func(x, y subscriptionJSON) int {
		return cmp.Or(latestFirst(x.CurrentPeriodEnd, y.CurrentPeriodEnd), cmp.Compare(x.SubscriptionID, y.SubscriptionID))
	})
	return cust
}

// newSubscriptionJSON is sub in the subscription shape.
func newSubscriptionJSON(sub domain.Subscription) subscriptionJSON {
	return subscriptionJSON{
		Account: sub.Account, SubscriptionID: sub.ID, CustomerID: sub.CustomerID, Status: sub.Status, PriceID: sub.PriceID,
		ProductID: sub.ProductID, Plan: sub.Plan, Quantity: sub.Quantity,
		CurrentPeriodStart: utc(sub.CurrentPeriodStart), CurrentPeriodEnd: utc(sub.CurrentPeriodEnd),
		CancelAtPeriodEnd: sub.CancelAtPeriodEnd, CancelAt: utc(sub.CancelAt), CanceledAt: utc(sub.CanceledAt), EndedAt: utc(sub.EndedAt),
		TrialEnd: utc(sub.TrialEnd), CollectionMethod: sub.CollectionMethod, Deleted: sub.Deleted,
	}
}

// accountParam is the Connect account a read route names with ?account=,
// "" (the platform's) without one.
func accountParam(c echo.Context) string { return strings.TrimSpace(c.QueryParam("account")) }

func (s *Server) handleCustomer(c echo.Context) error {
	key := domain.CustomerKey{Account: accountParam(c), ID: c.Param("id")}
	st, err := s.cfg.ReadModel.Customer(c.Request().Context(), key)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, newCustomerJSON(st))
}

func (s *Server) handleSubscription(c echo.Context) error {
	sub, err := s.cfg.ReadModel.Subscription(c.Request().Context(), accountParam(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, newSubscriptionJSON(sub))
}

// readError says what a failed read was reading; httpError classifies it.
func readError(what string, err error) error { return fmt.Errorf("read %s: %w", what, err) }

// latestFirst orders period ends descending, nil (no period) last.
func latestFirst(a, b *time.Time) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return b.Compare(*a)
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
