package api

import (
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// DefaultMaxInflightWebhooks is how many webhook requests are served at
// once when Config.MaxInflightWebhooks is 0: a few times the database pool,
// so a burst queues briefly for connections instead of exhausting them.
const DefaultMaxInflightWebhooks = 64

// limitInflight answers 503 (Stripe retries) to a webhook request that
// arrives while max others are in flight, slow senders included.
func (s *Server) limitInflight(max int) echo.MiddlewareFunc {
	slots := make(chan struct{}, max)
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			select {
			case slots <- struct{}{}:
				s.metrics.inflight.Inc()
				defer func() { s.metrics.inflight.Dec(); <-slots }()
				return next(c)
			default:
				c.Response().Header().Set("Retry-After", "1")
				return s.reject(c, nil, domain.Errorf(domain.EUNAVAILABLE, "over %d webhook deliveries in flight; retry later", max), "overloaded")
			}
		}
	}
}

// validateIDs refuses, with a 400 naming it, a path id or ?account= that is
// not a Stripe id (domain.ValidID), before it reaches a query.
func validateIDs(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if strings.Contains(c.Path(), ":id") {
			what := "customer id"
			if strings.HasPrefix(c.Path(), "/v1/subscriptions/") {
				what = "subscription id"
			}
			if err := domain.ValidID(what, c.Param("id")); err != nil {
				return err
			}
		}
		if account := c.QueryParam("account"); account != "" {
			if err := domain.ValidID("account", strings.TrimSpace(account)); err != nil {
				return err
			}
		}
		return next(c)
	}
}
