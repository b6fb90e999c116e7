package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
)

func (c *Console) handleFind(ec echo.Context) error {
	q := strings.TrimSpace(ec.QueryParam("q"))
	data := map[string]any{"Title": "Find a customer", "Query": q}
	if q != "" {
		found, err := c.cfg.ReadModel.FindCustomers(ec.Request().Context(), q, 50)
		if err != nil {
			return err
		}
		if len(found) == 1 {
			return ec.Redirect(http.StatusSeeOther, customerURL(found[0].Account, found[0].CustomerID))
		}
		data["Found"], data["Searched"] = found, true
	}
	return c.render(ec, http.StatusOK, "find", data)
}

func customerURL(account, id string) string {
	u := Prefix + "/customers/" + pathEscape(id)
	if account != "" {
		u += "?account=" + account
	}
	return u
}

// customerRef is the customer a request names, and its history's streams.
type customerRef struct {
	Account, ID string
	Streams     []string
}

// Query is the ?account= part of the customer's links.
func (r customerRef) Query() string {
	if r.Account == "" {
		return ""
	}
	return "?account=" + r.Account
}

func (c *Console) customer(ec echo.Context) (customerRef, error) {
	ref := customerRef{Account: strings.TrimSpace(ec.QueryParam("account")), ID: ec.Param("id")}
	if _, err := domain.CustomerStreamOf(ref.Account, ref.ID); err != nil {
		return ref, &pageError{http.StatusBadRequest, err.Error()}
	}
	streams, err := c.cfg.ReadModel.CustomerStreams(ec.Request().Context(), ref.Account, ref.ID)
	ref.Streams = streams
	return ref, err
}

// timelineEntry is one row of a customer's timeline.
type timelineEntry struct {
	eventlog.Record
	Signature string // audit.SignatureStatus
}

// Timeline page sizes (?limit=).
const (
	defaultPageSize = 50
	maxPageSize     = 500
)

func (c *Console) handleCustomer(ec echo.Context) error {
	ref, err := c.customer(ec)
	if err != nil {
		return err
	}
	ctx := ec.Request().Context()
	limit := defaultPageSize
	if v := ec.QueryParam("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxPageSize {
			return &pageError{http.StatusBadRequest, fmt.Sprintf("limit must be an integer from 1 to %d", maxPageSize)}
		}
	}
	var before *eventlog.Position
	if v := ec.QueryParam("before"); v != "" {
		var p eventlog.Position
		if err := p.UnmarshalText([]byte(v)); err != nil {
			return &pageError{http.StatusBadRequest, "before is not a cursor from a previous page"}
		}
		before = &p
	}
	page, total, older, err := c.timelinePage(ctx, ref.Streams, before, limit)
	if err != nil {
		return err
	}
	if total == 0 {
		return &pageError{http.StatusNotFound, fmt.Sprintf("Customer %s has no events in the ledger.", ref.ID)}
	}
	current, inReadModel, err := c.cfg.ReadModel.Customer(ctx, ref.Account, ref.ID)
	if err != nil {
		return err
	}
	now := c.cfg.Now().UTC()
	data := map[string]any{
		"Title": "Customer " + ref.ID, "Ref": ref, "State": current, "InReadModel": inReadModel, "Timeline": page, "Total": total, "Limit": limit,
		"AtInput": now.Format("2006-01-02T15:04:05"),
	}
	if older != nil {
		data["Older"] = older.String()
	}
	if before != nil {
		data["Newest"] = true
	}
	return c.render(ec, http.StatusOK, "customer", data)
}

// timelinePage reads the history newest first: the limit records positioned
// before `before` (nil: the newest), how many records the history holds,
// and the cursor of the next older page (nil: none).
func (c *Console) timelinePage(ctx context.Context, streams []string, before *eventlog.Position, limit int) ([]timelineEntry, int64, *eventlog.Position, error) {
	recs, total, err := audit.ReadStreamsBefore(ctx, c.cfg.Log, streams, before, limit+1)
	if err != nil {
		return nil, 0, nil, err
	}
	var older *eventlog.Position
	if len(recs) > limit {
		recs = recs[1:]
		p := recs[0].Position
		older = &p
	}
	page := make([]timelineEntry, 0, len(recs))
	for i := len(recs) - 1; i >= 0; i-- {
		page = append(page, timelineEntry{Record: recs[i], Signature: audit.SignatureStatus(recs[i], c.cfg.WebhookSecrets)})
	}
	return page, total, older, nil
}

var errFound = errors.New("found")

func (c *Console) handleEvent(ec echo.Context) error {
	ref, err := c.customer(ec)
	if err != nil {
		return err
	}
	eventID := ec.Param("event_id")
	var rec, prev *eventlog.Record
	var prevObj objectRef
	lastOf := map[objectRef]eventlog.Record{} // each object's latest snapshot so far
	err = audit.EachInStreams(ec.Request().Context(), c.cfg.Log, ref.Streams, eventlog.Start, audit.BatchSize, func(batch []eventlog.Record) error {
		for _, r := range batch {
			obj := objectOf(r.Payload)
			if r.ID == eventID {
				rec, prevObj = &r, obj
				if p, ok := lastOf[obj]; ok && obj.ID != "" {
					prev = &p
				}
				return errFound
			}
			if obj.ID != "" {
				lastOf[obj] = r
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errFound) {
		return err
	}
	if rec == nil {
		return &pageError{http.StatusNotFound, fmt.Sprintf("Event %s is not in the history of customer %s.", eventID, ref.ID)}
	}
	changes, source := fieldChanges(rec.Payload, prev)
	data := map[string]any{
		"Title": "Event " + rec.ID, "Ref": ref, "Event": timelineEntry{Record: *rec, Signature: audit.SignatureStatus(*rec, c.cfg.WebhookSecrets)},
		"Object": prevObj, "Previous": prev, "Changes": changes, "ChangeSource": source, "Payload": prettyJSON(rec.Payload),
	}
	return c.render(ec, http.StatusOK, "event", data)
}

// Formats ?at= accepts besides RFC 3339: a datetime-local input's, read as UTC.
var localFormats = []string{"2006-01-02T15:04", "2006-01-02T15:04:05"}

func parseAt(v string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	for _, f := range localFormats {
		if t, err := time.Parse(f, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, &pageError{http.StatusBadRequest, "at must be an RFC 3339 time, such as 2024-03-01T00:00:00Z"}
}

func (c *Console) handleState(ec echo.Context) error {
	ref, err := c.customer(ec)
	if err != nil {
		return err
	}
	at, err := parseAt(ec.QueryParam("at"))
	if err != nil {
		return err
	}
	folded, err := c.cfg.Auditor.StateAt(ec.Request().Context(), ref.Account, ref.ID, ref.Streams, at)
	if err != nil {
		return err
	}
	if folded.Total == 0 {
		return &pageError{http.StatusNotFound, fmt.Sprintf("Customer %s has no events in the ledger.", ref.ID)}
	}
	return c.render(ec, http.StatusOK, "state", map[string]any{
		"Title": "State of " + ref.ID + " at " + at.UTC().Format(time.RFC3339), "Ref": ref, "At": at.UTC(),
		"AtInput": at.UTC().Format("2006-01-02T15:04:05"), "State": folded.State, "Folded": folded,
	})
}

func (c *Console) handleVerify(ec echo.Context) error {
	ref, err := c.customer(ec)
	if err != nil {
		return err
	}
	v, err := c.cfg.Auditor.VerifyCustomer(ec.Request().Context(), ref.Account, ref.ID)
	if errors.Is(err, ErrNothingToVerify) {
		return &pageError{http.StatusNotFound, fmt.Sprintf("Customer %s has no events in the ledger and no seal covers its stream: nothing to verify.", ref.ID)}
	}
	if err != nil {
		return err
	}
	return c.render(ec, http.StatusOK, "verify", map[string]any{"Title": "Verification of " + ref.ID, "Ref": ref, "V": v})
}

// handleExport streams the customer's whole history as CSV or JSONL, the
// formats of GET /v1/customers/{id}/events.csv and ledger history --format jsonl.
func (c *Console) handleExport(ec echo.Context) error {
	ref, err := c.customer(ec)
	if err != nil {
		return err
	}
	res := ec.Response()
	ext, mime := "csv", "text/csv; charset=utf-8"
	var write func(eventlog.Record) error
	flush := func() error { return nil }
	if strings.HasSuffix(ec.Path(), ".jsonl") {
		ext, mime = "jsonl", "application/x-ndjson"
		write = audit.NewJSONLWriter(res).Write
	} else {
		w := audit.NewCSVWriter(res)
		write, flush = w.Write, w.Flush
	}
	err = audit.EachInStreams(ec.Request().Context(), c.cfg.Log, ref.Streams, eventlog.Start, audit.BatchSize, func(batch []eventlog.Record) error {
		if !res.Committed {
			res.Header().Set(echo.HeaderContentType, mime)
			res.Header().Set(echo.HeaderContentDisposition, fmt.Sprintf("attachment; filename=%q", ref.ID+"-events."+ext))
			res.WriteHeader(http.StatusOK)
		}
		for _, r := range batch {
			if err := write(r); err != nil {
				return err
			}
		}
		return flush()
	})
	switch {
	case err != nil && res.Committed:
		c.cfg.Logger.Error("console export aborted", "stream", ref.Streams[0], "err", err)
		panic(http.ErrAbortHandler)
	case err != nil:
		return err
	case !res.Committed:
		return &pageError{http.StatusNotFound, fmt.Sprintf("Customer %s has no events in the ledger.", ref.ID)}
	}
	return nil
}
