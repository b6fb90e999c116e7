package console

import (
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

func (c *Console) handleProjections(ec echo.Context) error {
	return c.projectionsPage(ec, http.StatusOK, map[string]any{})
}

func (c *Console) projectionsPage(ec echo.Context, status int, data map[string]any) error {
	ctx := ec.Request().Context()
	statuses, err := c.cfg.Engineer.Status(ctx)
	if err != nil {
		return err
	}
	letters, err := c.cfg.Engineer.DeadLetters(ctx)
	if err != nil {
		return err
	}
	receivers, err := c.cfg.Engineer.Receivers(ctx)
	if err != nil {
		return err
	}
	data["Title"], data["Statuses"], data["DeadLetters"], data["Receivers"] = "Projections", statuses, letters, receivers
	data["Rebuilds"] = c.rebuilds.snapshot()
	if c.cfg.Rebuilder != nil {
		data["Rebuildable"] = c.cfg.Rebuilder.Rebuildable()
	}
	return c.render(ec, status, "projections", data)
}

func (c *Console) handleRetry(ec echo.Context) error {
	var ids []string
	if id := strings.TrimSpace(ec.FormValue("event_id")); id != "" {
		ids = append(ids, id)
	}
	res, err := c.cfg.Engineer.Retry(ec.Request().Context(), ids...)
	if errors.Is(err, report.ErrNoDeadLetter) {
		return c.projectionsPage(ec, http.StatusNotFound, map[string]any{"RetryError": err.Error()})
	}
	if err != nil {
		return err
	}
	return c.projectionsPage(ec, http.StatusOK, map[string]any{"Retry": res})
}

func (c *Console) handleDiff(ec echo.Context) error {
	diff, err := c.cfg.Engineer.Diff(ec.Request().Context())
	if errors.Is(err, report.ErrBuildInProgress) {
		return c.projectionsPage(ec, http.StatusConflict, map[string]any{"DiffError": "A build of the projection is in progress; try again once it is done."})
	}
	if err != nil {
		return err
	}
	return c.projectionsPage(ec, http.StatusOK, map[string]any{"Diff": diff})
}
