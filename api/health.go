package api

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// readyTimeout bounds the checks /readyz runs.
const readyTimeout = 2 * time.Second

func (s *Server) handleHealthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

type readiness struct {
	Status      string          `json:"status"` // ok | degraded
	Database    string          `json:"database"`
	DeadLetters int64           `json:"dead_letters"` // over every projection
	Projections []ProjectionLag `json:"projections"`
}

// handleReadyz answers 200 when the database is reachable (projection lag is
// reported, not judged: a rebuilding projection is not a reason to stop
// taking webhooks) and 503 "degraded" when it is not. Status is "degraded"
// with a 200 when the projections' progress cannot be read or a projection
// has dead letters (events it could not apply: an operator must look).
func (s *Server) handleReadyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), readyTimeout)
	defer cancel()
	r := readiness{Status: "ok", Database: "ok", Projections: []ProjectionLag{}}
	if err := s.cfg.ReadModel.Ping(ctx); err != nil {
		s.cfg.Logger.Warn("readiness: database unreachable", "err", err)
		r.Status, r.Database = "degraded", "unreachable"
		return c.JSON(http.StatusServiceUnavailable, r)
	}
	if s.cfg.Projections != nil {
		// Projection progress is reported, never a reason to stop taking
		// webhooks: when it cannot be read, the answer is degraded but 200.
		lags, err := s.cfg.Projections(ctx)
		if err != nil {
			s.cfg.Logger.Warn("readiness: projection status", "err", err)
			r.Status = "degraded"
		}
		r.Projections = append(r.Projections, lags...)
		for _, l := range lags {
			r.DeadLetters += l.DeadLetters
		}
		if r.DeadLetters > 0 {
			r.Status = "degraded"
		}
	}
	return c.JSON(http.StatusOK, r)
}
