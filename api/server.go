// Package api is the ledger's HTTP edge, built on Echo: the Stripe webhook,
// liveness/readiness, Prometheus metrics and the authenticated /v1 read API.
// Handlers return errors; one error handler turns them into the JSON error
// shape of DESIGN §5 and the matching status.
package api

import (
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// ReadModel is what the read routes and /readyz need of the read model
// (projections.Queries is the ledger's). Its errors carry domain codes:
// ENOTFOUND for an unknown customer or subscription, EUNAVAILABLE when it
// cannot answer right now.
type ReadModel interface {
	// Customer is a customer's state with its subscriptions.
	Customer(ctx context.Context, key domain.CustomerKey) (*domain.CustomerState, error)
	// Subscription is one subscription.
	Subscription(ctx context.Context, account, id string) (domain.Subscription, error)
	// CustomerStreams are the streams of a customer's history: its own
	// first, then its linked objects' (DESIGN §8).
	CustomerStreams(ctx context.Context, account, customerID string) ([]string, error)
	// Ping checks that the read model's database answers.
	Ping(ctx context.Context) error
}

// Config holds the server's dependencies. Log, ReadModel, EnqueueThin and
// WebhookSecrets are required.
type Config struct {
	Log       eventlog.Log
	ReadModel ReadModel
	// EnqueueThin records, before the webhook answers 200, that a stored
	// thin event awaits the fetch of what it announces (DESIGN §10).
	EnqueueThin    func(ctx context.Context, env domain.Envelope) error
	WebhookSecrets []string     // STRIPE_WEBHOOK_SECRET, every secret accepted during rotation
	APIToken       string       // LEDGER_API_TOKEN; empty disables /v1 with a 503
	Plans          domain.Plans // LEDGER_PLANS, for folding events into state (GET /v1/customers/{id}/state) when LivePlans has none
	// LivePlans returns the plan mapping the live read model was folded with,
	// which state folds use so that they agree with it; nil, or ok false: Plans.
	LivePlans func(ctx context.Context) (plans domain.Plans, ok bool, err error)
	Logger    *slog.Logger
	Registry  *prometheus.Registry // metrics are registered here and served at /metrics
	// MaxInflightWebhooks caps the webhook requests served at once; beyond
	// it the webhook answers 503. 0: DefaultMaxInflightWebhooks.
	MaxInflightWebhooks int
	// Projections reports each projection's progress for /readyz; nil reports none.
	Projections func(ctx context.Context) ([]ProjectionLag, error)
	// Stored, when set, is told of each newly stored webhook event after it
	// is durable (serve wakes the thin-event fetcher and the reconciler); it
	// must not block.
	Stored func(env domain.Envelope)
	// Notifications serves GET /v1/notifications; nil answers 503.
	Notifications NotificationFeed
}

// ProjectionLag is one projection's progress as /readyz reports it.
type ProjectionLag struct {
	Name     string            `json:"name"`
	Position eventlog.Position `json:"position"` // "commit/prepare", as everywhere
	Head     eventlog.Position `json:"head"`
	Lag      int64             `json:"lag"`
	// DeadLetters counts the events the live version could not apply; any
	// makes /readyz "degraded" (still 200: webhooks are still taken).
	DeadLetters int64 `json:"dead_letters"`
}

// Server is the HTTP server. Create it with New; it is an http.Handler.
type Server struct {
	cfg     Config
	echo    *echo.Echo
	metrics *metrics
}

// New builds the server and its routes.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil || cfg.ReadModel == nil || cfg.EnqueueThin == nil {
		return nil, errors.New("api: Log, ReadModel and EnqueueThin are required")
	}
	if len(cfg.WebhookSecrets) == 0 {
		return nil, errors.New("api: at least one webhook secret is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, echo: echo.New()}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	e := s.echo
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError

	e.POST("/stripe/webhook", s.handleWebhook, s.limitInflight(cmp.Or(cfg.MaxInflightWebhooks, DefaultMaxInflightWebhooks)))
	e.GET("/healthz", s.handleHealthz)
	e.GET("/readyz", s.handleReadyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{})))

	// The token guards each route rather than the group: a group middleware
	// makes Echo route every method under /v1, so a POST would not be a 405.
	v1 := e.Group("/v1")
	v1.GET("/customers/:id", s.handleCustomer, s.requireToken, validateIDs)
	v1.GET("/subscriptions/:id", s.handleSubscription, s.requireToken, validateIDs)
	v1.GET("/customers/:id/events", s.handleEvents, s.requireToken, validateIDs)
	v1.GET("/customers/:id/events.csv", s.handleEventsCSV, s.requireToken, validateIDs)
	v1.GET("/customers/:id/state", s.handleState, s.requireToken, validateIDs)
	v1.GET("/notifications", s.handleNotifications, s.requireToken)
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.echo.ServeHTTP(w, r) }

// errorBody is the JSON error shape of DESIGN §5.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// statuses maps error codes to HTTP statuses: the one place that does, read
// both ways (statusOf, codeOfStatus). Where two codes share a status, the
// first is the one a status maps back to.
var statuses = []struct {
	code   string
	status int
}{
	{domain.EINVALID, http.StatusBadRequest},
	{domain.EUNAUTHORIZED, http.StatusUnauthorized},
	{domain.ENOTFOUND, http.StatusNotFound},
	{codeMethodNotAllowed, http.StatusMethodNotAllowed},
	{domain.ETOOLARGE, http.StatusRequestEntityTooLarge},
	{domain.EUNAVAILABLE, http.StatusServiceUnavailable},
	{domain.ENOTCONFIGURED, http.StatusServiceUnavailable},
}

// codeMethodNotAllowed is the error code of a known route asked with a
// method it does not answer; the only code that is HTTP's alone.
const codeMethodNotAllowed = "method_not_allowed"

// statusOf is the HTTP status of an error code; 500 for EINTERNAL and unknown codes.
func statusOf(code string) int {
	for _, s := range statuses {
		if s.code == code {
			return s.status
		}
	}
	return http.StatusInternalServerError
}

// codeOfStatus is the error code of one of Echo's own error statuses: the
// code mapped to it, else EINVALID for other 4xx and EINTERNAL for the rest.
func codeOfStatus(status int) string {
	for _, s := range statuses {
		if s.status == status {
			return s.code
		}
	}
	if status >= 400 && status < 500 {
		return domain.EINVALID
	}
	return domain.EINTERNAL
}

// httpError is the one place an error becomes an HTTP answer: its status,
// code and the message the client may see. A *domain.Error anywhere in the
// chain carries its code; the event log's typed errors (eventlog.ErrUnavailable,
// eventlog.ErrTooLarge) are mapped here; Echo's own errors (unknown route,
// wrong method) keep their status; anything else is a 500 whose text, which
// may hold SQL, stays in the log.
func httpError(err error) (status int, code, message string) {
	if he, ok := errors.AsType[*echo.HTTPError](err); ok {
		return he.Code, codeOfStatus(he.Code), http.StatusText(he.Code)
	}
	if de, ok := errors.AsType[*domain.Error](err); ok {
		return statusOf(de.Code), de.Code, de.Message
	}
	switch {
	case errors.Is(err, eventlog.ErrUnavailable):
		return http.StatusServiceUnavailable, domain.EUNAVAILABLE, "the event log is unavailable; retry later"
	case errors.Is(err, eventlog.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, domain.ETOOLARGE, "the event is too large for the event log"
	}
	return http.StatusInternalServerError, domain.EINTERNAL, domain.ErrorMessage(err)
}

func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, code, message := httpError(err)
	if code == domain.EINTERNAL {
		s.cfg.Logger.Error("request failed", "method", c.Request().Method, "path", c.Path(), "err", err)
	}
	var body errorBody
	body.Error.Code, body.Error.Message = code, message
	if err := c.JSON(status, body); err != nil {
		s.cfg.Logger.Warn("write error response", "err", err)
	}
}

// requireToken guards /v1 with the bearer token of LEDGER_API_TOKEN.
func (s *Server) requireToken(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.cfg.APIToken == "" {
			return domain.Errorf(domain.ENOTCONFIGURED, "the read API is disabled: set LEDGER_API_TOKEN to enable it")
		}
		scheme, got, _ := strings.Cut(c.Request().Header.Get("Authorization"), " ")
		got = strings.TrimLeft(got, " ")
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.APIToken)) != 1 {
			return domain.Errorf(domain.EUNAUTHORIZED, "missing or wrong bearer token")
		}
		return next(c)
	}
}
