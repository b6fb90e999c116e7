package api

import (
	"context"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// NotificationFeed is the outbox as GET /v1/notifications reads it;
// projections.Notifications implements it.
type NotificationFeed interface {
	// Wait returns up to limit notifications after position after, in
	// order, waiting up to wait for one when there is none yet.
	Wait(ctx context.Context, after int64, limit int, wait time.Duration) ([]notify.Notification, error)
}

// maxNotificationWait caps ?wait=, below the usual proxies' idle timeouts.
const maxNotificationWait = 60 * time.Second

// notificationsPage is the answer of GET /v1/notifications.
type notificationsPage struct {
	Notifications []notify.Notification `json:"notifications"`
	HasMore       bool                  `json:"has_more"` // a full page: ask again at once
	Next          string                `json:"next"`     // ?after= of the next request: the last position, or the given cursor
}

// handleNotifications answers GET /v1/notifications?after=&limit=&wait=:
// the outbox in position order after the cursor, long-polling up to wait.
func (s *Server) handleNotifications(c echo.Context) error {
	if s.cfg.Notifications == nil {
		return domain.Errorf(domain.ENOTCONFIGURED, "notifications are not served by this process")
	}
	var after int64
	if v := c.QueryParam("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return domain.Errorf(domain.EINVALID, "after %q is not a cursor from a previous page's next", v)
		}
		after = n
	}
	limit, err := parseLimit(c)
	if err != nil {
		return err
	}
	var wait time.Duration
	if v := c.QueryParam("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxNotificationWait {
			return domain.Errorf(domain.EINVALID, "wait must be a duration from 0s to %s, like 30s", maxNotificationWait)
		}
		wait = d
	}
	page, err := s.cfg.Notifications.Wait(c.Request().Context(), after, limit, wait)
	if err != nil {
		return err
	}
	out := notificationsPage{Notifications: page, HasMore: len(page) == limit, Next: strconv.FormatInt(after, 10)}
	if len(page) > 0 {
		out.Next = strconv.FormatInt(page[len(page)-1].Position, 10)
	} else {
		out.Notifications = []notify.Notification{}
	}
	return c.JSON(200, out)
}
