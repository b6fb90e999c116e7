// Package console is the ledger's browser console under /console/ (DESIGN
// §11): server-rendered html/template pages for auditors (find a customer, its
// state and whole timeline, one event and what it changed, the state at an
// instant, verify, export) and engineers (projections, dead letters and their
// retry, a rebuild and its diff, a dry-run reconcile's drift). Assets are
// embedded; nothing is loaded from elsewhere. It reads the event log itself (eventlog/audit) and gets the rest
// through the small interfaces below, which cmd/ledger implements.
package console

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// Prefix is where the console is mounted.
const Prefix = "/console"

// ReadModel is what the console reads from the live read model.
type ReadModel interface {
	// FindCustomers finds customers by id or email, at most limit.
	FindCustomers(ctx context.Context, query string, limit int) ([]report.CustomerMatch, error)
	// Customer reads a customer's current state; found is false when the read model has no such customer.
	Customer(ctx context.Context, account, customerID string) (st *domain.CustomerState, found bool, err error)
	// CustomerStreams are the streams of a customer's history: its own first, then its linked objects' (DESIGN §8).
	CustomerStreams(ctx context.Context, account, customerID string) ([]string, error)
}

// Auditor folds and verifies a customer's history.
type Auditor interface {
	// StateAt folds the history's events created at or before at.
	StateAt(ctx context.Context, account, customerID string, streams []string, at time.Time) (audit.Folded, error)
	// VerifyCustomer checks the customer's history: chains, digests, signatures and seals;
	// ErrNothingToVerify when the history holds no event and no seal covers it.
	VerifyCustomer(ctx context.Context, account, customerID string) (Verification, error)
}

// ErrNothingToVerify is VerifyCustomer's answer for a customer with no
// events that no seal covers: the ledger never saw it.
var ErrNothingToVerify = errors.New("nothing to verify")

// Verification is what VerifyCustomer found.
type Verification struct {
	OK               bool
	Streams, Events  int64
	SignaturesTested bool
	UnsignedByDesign int64
	Seals            int64
	ProblemCount     int64
	Problems         []string // the first ones
}

// Engineer is the projections side: status, dead letters, retry and diff.
type Engineer interface {
	Status(ctx context.Context) ([]report.Status, error)
	DeadLetters(ctx context.Context) ([]report.DeadLetter, error)
	// Receivers are the push receivers' delivery progress and failures (ledger notifications status).
	Receivers(ctx context.Context) ([]report.ReceiverStatus, error)
	// Retry applies the dead letters of eventIDs again (none: all).
	Retry(ctx context.Context, eventIDs ...string) (report.RetryResult, error)
	// Diff builds the projection into a scratch schema and compares it with the live version.
	Diff(ctx context.Context) (*report.Diff, error)
}

// Revocations are the sessions logged out before their expiry, shared by
// every replica.
type Revocations interface {
	// Revoke records that session id is logged out; it would expire at expires.
	Revoke(ctx context.Context, id string, expires time.Time) error
	// Revoked tells whether session id was logged out.
	Revoked(ctx context.Context, id string) (bool, error)
}

// Config holds the console's dependencies; Log, ReadModel, Auditor, Engineer and Revocations are required.
type Config struct {
	Token          string // LEDGER_API_TOKEN: what login takes; empty: the console says it is disabled
	SecureCookie   bool   // set Secure on the cookies even over plain HTTP (behind a TLS proxy)
	WebhookSecrets []string
	Log            eventlog.Log
	ReadModel      ReadModel
	Auditor        Auditor
	Engineer       Engineer
	Revocations    Revocations
	// Rebuilder rebuilds projections from /console/projections; nil: no rebuild form.
	Rebuilder Rebuilder
	// Reconciler runs a dry-run reconcile from /console/reconcile; nil: the page says reconcile is not configured (no STRIPE_API_KEY).
	Reconciler Reconciler
	Logger     *slog.Logger
	// SessionTTL is how long a login lasts; 0: DefaultSessionTTL.
	SessionTTL time.Duration
	// LoginDelay is how long a wrong token waits before the form comes back; 0: DefaultLoginDelay.
	LoginDelay time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultSessionTTL = 12 * time.Hour
	DefaultLoginDelay = time.Second
)

// maxDelayedLogins bounds the wrong logins waiting out LoginDelay at once.
const maxDelayedLogins = 16

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console is the console's HTTP handler; create it with New.
type Console struct {
	cfg   Config
	echo  *echo.Echo
	pages map[string]*template.Template
	keys  sessionKeys
	// delayed holds a slot for each wrong login waiting out LoginDelay.
	delayed chan struct{}
	// rebuilds are the rebuilds started from the console.
	rebuilds *rebuilds
}

// New builds the console and its routes, all under Prefix.
func New(cfg Config) (*Console, error) {
	if cfg.Log == nil || cfg.ReadModel == nil || cfg.Auditor == nil || cfg.Engineer == nil || cfg.Revocations == nil {
		return nil, errors.New("console: Log, ReadModel, Auditor, Engineer and Revocations are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.LoginDelay <= 0 {
		cfg.LoginDelay = DefaultLoginDelay
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, echo: echo.New(), pages: pages, keys: newSessionKeys(cfg.Token),
		delayed: make(chan struct{}, maxDelayedLogins), rebuilds: newRebuilds()}
	e := c.echo
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = c.handleError
	e.Use(securityHeaders, limitForm)

	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	e.GET(Prefix+"/static/*", echo.WrapHandler(http.StripPrefix(Prefix+"/static/", http.FileServer(http.FS(static)))))
	e.GET(Prefix, func(ec echo.Context) error { return ec.Redirect(http.StatusMovedPermanently, Prefix+"/") })
	e.GET(Prefix+"/login", c.handleLoginForm)
	e.POST(Prefix+"/login", c.handleLogin)

	g := e.Group(Prefix, c.requireSession)
	g.POST("/logout", c.handleLogout)
	g.GET("/", c.handleFind)
	// An engineer's pages.
	g.GET("/projections", c.handleProjections)
	g.POST("/projections/retry", c.handleRetry)
	g.POST("/projections/diff", c.handleDiff)
	g.POST("/projections/rebuild", c.handleRebuild)
	g.GET("/reconcile", c.handleReconcile)
	// An auditor's pages of one customer.
	const customer = "/customers/:id"
	g.GET(customer, c.handleCustomer)
	g.GET(customer+"/state", c.handleState)
	g.POST(customer+"/verify", c.handleVerify)
	g.GET(customer+"/events/:event_id", c.handleEvent)
	g.GET(customer+"/events.csv", c.handleExport)
	g.GET(customer+"/events.jsonl", c.handleExport)
	return c, nil
}

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.echo.ServeHTTP(w, r) }

// contentSecurityPolicy allows only the console's own scripts, styles and
// forms: no inline script runs, whatever a payload holds.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(ec echo.Context) error {
		h := ec.Response().Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		return next(ec)
	}
}

// maxFormBytes bounds a console form's body: a CSRF token, a login token,
// an event id.
const maxFormBytes = 16 << 10

// limitForm parses a POST's body before anything reads it: an urlencoded
// form of at most maxFormBytes (413 beyond), nothing else (415), so that no
// request, with or without a session, makes net/http buffer a big body or
// spill a multipart one to temporary files.
func limitForm(next echo.HandlerFunc) echo.HandlerFunc {
	return func(ec echo.Context) error {
		r := ec.Request()
		if r.Method != http.MethodPost {
			return next(ec)
		}
		if mt, _, _ := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType)); mt != echo.MIMEApplicationForm {
			return &pageError{http.StatusUnsupportedMediaType, "The console takes forms as application/x-www-form-urlencoded only."}
		}
		r.Body = http.MaxBytesReader(ec.Response(), r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
				return &pageError{http.StatusRequestEntityTooLarge, "This form is too large."}
			}
			return &pageError{http.StatusBadRequest, "This form does not parse."}
		}
		return next(ec)
	}
}

// pageError is an error shown as a page with its status.
type pageError struct {
	status  int
	message string
}

func (e *pageError) Error() string { return e.message }

func (c *Console) handleError(err error, ec echo.Context) {
	if ec.Response().Committed {
		return
	}
	status, message := http.StatusInternalServerError, "Something went wrong; the ledger's log says what."
	var pe *pageError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &pe):
		status, message = pe.status, pe.message
	case errors.As(err, &he):
		status, message = he.Code, http.StatusText(he.Code)
	case errors.Is(err, eventlog.ErrUnavailable):
		status, message = http.StatusServiceUnavailable, "The database is unavailable; retry later."
	default:
		c.cfg.Logger.Error("console request failed", "method", ec.Request().Method, "path", ec.Path(), "err", err)
	}
	if err := c.render(ec, status, "error", map[string]any{"Title": http.StatusText(status), "Message": message}); err != nil {
		c.cfg.Logger.Warn("write console error page", "err", err)
	}
}
