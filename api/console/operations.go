package console

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
)

// Rebuilder rebuilds a projection blue/green and swaps it live, as ledger
// projections rebuild does.
type Rebuilder interface {
	// Rebuildable names the projections Rebuild takes.
	Rebuildable() []string
	// Rebuild builds projection from the whole log beside the live version and
	// swaps it in; projections.ErrBuildInProgress when another build holds its lock.
	Rebuild(ctx context.Context, projection string) error
}

// Reconciler compares one customer with Stripe without appending anything,
// as ledger reconcile --customer --dry-run does.
type Reconciler interface {
	ReconcileDryRun(ctx context.Context, customer, account string) (report.Reconciliation, error)
}

// rebuildWait is how long a rebuild's POST waits for the rebuild before it
// answers that it is running.
const rebuildWait = 2 * time.Second

// RebuildRun is a rebuild started from this process's console.
type RebuildRun struct {
	Projection string
	Started    time.Time
	Finished   time.Time // zero while it runs
	Err        string    // why it failed; empty when it succeeded or runs
	Refused    bool      // another build held the projection's lock
	done       chan struct{}
}

// Running tells whether the rebuild has not finished.
func (r RebuildRun) Running() bool { return r.Finished.IsZero() }

// rebuilds owns the rebuilds started from the console: each runs in the
// background under ctx, which Close cancels before it waits for them.
type rebuilds struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	last   map[string]*RebuildRun // the latest run of each projection
}

func newRebuilds() *rebuilds {
	ctx, cancel := context.WithCancel(context.Background())
	return &rebuilds{ctx: ctx, cancel: cancel, last: map[string]*RebuildRun{}}
}

// errRebuildRunning refuses a second rebuild of a projection while this
// process runs one.
var errRebuildRunning = errors.New("a rebuild of this projection started here is still running")

// start runs rebuild of projection in the background unless one started here runs.
func (r *rebuilds) start(projection string, now time.Time, rebuild func(context.Context, string) error, logger func(string, ...any)) (*RebuildRun, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev := r.last[projection]; prev != nil && prev.Running() {
		return prev, errRebuildRunning
	}
	if r.ctx.Err() != nil {
		return nil, &pageError{http.StatusServiceUnavailable, "The ledger is shutting down; no rebuild starts."}
	}
	run := &RebuildRun{Projection: projection, Started: now, done: make(chan struct{})}
	r.last[projection] = run
	r.wg.Go(func() {
		err := rebuild(r.ctx, projection)
		r.mu.Lock()
		run.Finished = time.Now()
		if err != nil {
			run.Err, run.Refused = err.Error(), errors.Is(err, report.ErrBuildInProgress)
			logger("console rebuild failed", "projection", projection, "err", err)
		}
		r.mu.Unlock()
		close(run.done)
	})
	return run, nil
}

// snapshot copies the latest runs.
func (r *rebuilds) snapshot() map[string]RebuildRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]RebuildRun, len(r.last))
	for name, run := range r.last {
		out[name] = *run
	}
	return out
}

// Close stops the rebuilds started from the console and waits for them:
// a rebuild stopped before its swap leaves the live version as it was.
// ledger serve calls it when it stops.
func (c *Console) Close() {
	c.rebuilds.cancel()
	c.rebuilds.wg.Wait()
}

func (c *Console) handleRebuild(ec echo.Context) error {
	if c.cfg.Rebuilder == nil {
		return &pageError{http.StatusNotFound, "This console cannot rebuild projections."}
	}
	name := strings.TrimSpace(ec.FormValue("projection"))
	if !slices.Contains(c.cfg.Rebuilder.Rebuildable(), name) {
		return c.projectionsPage(ec, http.StatusNotFound, map[string]any{"RebuildError": "No projection named " + name + " can be rebuilt here."})
	}
	run, err := c.rebuilds.start(name, c.cfg.Now(), c.cfg.Rebuilder.Rebuild, c.cfg.Logger.Warn)
	if errors.Is(err, errRebuildRunning) {
		return c.projectionsPage(ec, http.StatusConflict, map[string]any{
			"RebuildError": "A rebuild of " + name + " started at " + run.Started.UTC().Format(time.RFC3339) + " is still running; wait for it to finish."})
	}
	if err != nil {
		return err
	}
	select {
	case <-run.done:
	case <-time.After(rebuildWait):
	case <-ec.Request().Context().Done():
	}
	now := c.rebuilds.snapshot()[name]
	switch {
	case now.Refused:
		return c.projectionsPage(ec, http.StatusConflict, map[string]any{"RebuildError": "Refused: another build of " + name +
			" (a rebuild, a diff or a new version, from this or another replica or from ledger projections) holds its lock; try again once it is done."})
	case now.Running():
		return c.projectionsPage(ec, http.StatusAccepted, map[string]any{})
	}
	return c.projectionsPage(ec, http.StatusOK, map[string]any{})
}

func (c *Console) handleReconcile(ec echo.Context) error {
	data := map[string]any{"Title": "Reconcile", "Configured": c.cfg.Reconciler != nil}
	customer, account := strings.TrimSpace(ec.QueryParam("customer")), strings.TrimSpace(ec.QueryParam("account"))
	data["Customer"], data["Account"] = customer, account
	if c.cfg.Reconciler == nil || customer == "" {
		return c.render(ec, http.StatusOK, "reconcile", data)
	}
	err := domain.ValidID("customer", customer)
	if err == nil && account != "" {
		err = domain.ValidID("account", account)
	}
	if err != nil {
		data["Error"] = err.Error()
		return c.render(ec, http.StatusBadRequest, "reconcile", data)
	}
	rep, err := c.cfg.Reconciler.ReconcileDryRun(ec.Request().Context(), customer, account)
	if stripeapi.IsKind(err, stripeapi.KindNotFound) {
		data["Error"] = "Stripe has no customer " + customer + where(account) + "."
		return c.render(ec, http.StatusNotFound, "reconcile", data)
	}
	if err != nil {
		c.cfg.Logger.Warn("console reconcile failed", "customer", customer, "account", account, "err", err)
		data["Error"] = "Reconcile failed: " + err.Error()
		return c.render(ec, http.StatusBadGateway, "reconcile", data)
	}
	data["Report"] = rep
	return c.render(ec, http.StatusOK, "reconcile", data)
}

// where names the account a reconcile looked in.
func where(account string) string {
	if account == "" {
		return " in the platform account"
	}
	return " in account " + account
}
