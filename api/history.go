package api

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
)

// The auditor's routes read a customer's stream straight from the event log,
// not from the read model. A Connect customer's stream (acct_…/customer-cus_…)
// is addressed with the optional query parameter account=acct_….

// Page sizes of GET /v1/customers/{id}/events.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

type streamHead struct {
	StreamVersion int64  `json:"stream_version"`
	Hash          string `json:"hash"`
}

// pageTrailer is everything in an events page after its "events" array,
// which is written by hand so that payloads stay byte for byte.
type pageTrailer struct {
	HasMore bool       `json:"has_more"`
	Next    string     `json:"next"`    // the last event's position, for ?after=; empty on the last page
	Head    streamHead `json:"head"`    // the customer stream's last record when the page was read
	Streams []string   `json:"streams"` // the streams merged: the customer's, then its linked objects' (DESIGN §8)
}

// handleEvents answers one page of a customer's history: its stream merged
// with its linked objects' streams, in global order, each event naming its
// stream. The cursor is a log position ("commit/prepare"): positions never
// change and new records come after every stored one, so paging is stable
// while events are appended.
func (s *Server) handleEvents(c echo.Context) error {
	streams, err := s.historyStreams(c)
	if err != nil {
		return err
	}
	after, limit, err := parsePage(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	own := streams[0]
	recs, err := audit.ReadStreams(ctx, s.cfg.Log, streams, after, limit+1)
	if err != nil {
		return readError("events of "+own, err)
	}
	page := pageTrailer{Streams: streams}
	if len(recs) > limit {
		page.HasMore = true
		recs = recs[:limit]
		page.Next = recs[limit-1].Position.String()
	}
	head, ok, err := s.cfg.Log.StreamHead(ctx, own)
	if err != nil {
		return readError("events of "+own, err)
	}
	if !ok {
		return customerNotFound(c)
	}
	page.Head = streamHead{StreamVersion: head.StreamVersion, Hash: hex.EncodeToString(head.Hash)}

	body := []byte(`{"events":[`)
	for i, r := range recs {
		if i > 0 {
			body = append(body, ',')
		}
		if body, err = audit.AppendJSON(body, r); err != nil {
			return err
		}
	}
	trailer, err := json.Marshal(page)
	if err != nil {
		return err
	}
	body = append(append(body, "],"...), trailer[1:]...) // trailer without its opening brace
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, body)
}

// parseLimit reads ?limit=, defaultPageSize when absent.
func parseLimit(c echo.Context) (int, error) {
	v := c.QueryParam("limit")
	if v == "" {
		return defaultPageSize, nil
	}
	limit, err := strconv.Atoi(v)
	if err != nil || limit < 1 || limit > maxPageSize {
		return 0, domain.Errorf(domain.EINVALID, "limit must be an integer from 1 to %d", maxPageSize)
	}
	return limit, nil
}

// parsePage reads ?after= (a cursor: a previous page's next) and ?limit=.
func parsePage(c echo.Context) (after eventlog.Position, limit int, err error) {
	if limit, err = parseLimit(c); err != nil {
		return after, 0, err
	}
	if v := c.QueryParam("after"); v != "" {
		if err := after.UnmarshalText([]byte(v)); err != nil {
			return after, 0, domain.Errorf(domain.EINVALID, "after %q is not a cursor from a previous page's next", v)
		}
	}
	return after, limit, nil
}

// historyStreams are the streams of the customer the request names: its own
// first, then its linked objects'.
func (s *Server) historyStreams(c echo.Context) ([]string, error) {
	account := accountParam(c)
	if _, err := domain.CustomerStreamOf(account, c.Param("id")); err != nil {
		return nil, err
	}
	streams, err := s.cfg.ReadModel.CustomerStreams(c.Request().Context(), account, c.Param("id"))
	if err != nil {
		return nil, readError("streams of customer "+c.Param("id"), err)
	}
	return streams, nil
}

// handleEventsCSV streams a customer's whole history as CSV, a batch at a
// time, in constant memory.
func (s *Server) handleEventsCSV(c echo.Context) error {
	for _, param := range []string{"after", "limit"} {
		if c.QueryParams().Has(param) {
			return domain.Errorf(domain.EINVALID, "events.csv exports the whole history and takes no ?%s= (page with /events?after=&limit=)", param)
		}
	}
	streams, err := s.historyStreams(c)
	if err != nil {
		return err
	}
	res := c.Response()
	w := audit.NewCSVWriter(res)
	err = audit.EachInStreams(c.Request().Context(), s.cfg.Log, streams, eventlog.Start, audit.BatchSize, func(batch []eventlog.Record) error {
		if !res.Committed {
			res.Header().Set(echo.HeaderContentType, "text/csv; charset=utf-8")
			res.Header().Set(echo.HeaderContentDisposition, fmt.Sprintf("attachment; filename=%q", c.Param("id")+"-events.csv"))
			res.WriteHeader(http.StatusOK)
		}
		for _, r := range batch {
			if err := w.Write(r); err != nil {
				return err
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
		res.Flush()
		return nil
	})
	switch {
	case err != nil && res.Committed:
		// Too late for an error response: cut the connection so that the
		// client sees a failed download rather than a complete-looking file.
		s.cfg.Logger.Error("events CSV aborted", "stream", streams[0], "err", err)
		panic(http.ErrAbortHandler)
	case err != nil:
		return readError("events of "+streams[0], err)
	case !res.Committed:
		return customerNotFound(c)
	}
	return nil
}

// Clocks of GET /v1/customers/{id}/state.
const (
	clockCreated    = "created"     // Stripe's event time: when the billing change happened
	clockReceivedAt = "received_at" // when the ledger stored the event: what it believed then
)

// stateBody is a customer's state as of an instant: the customer shape of
// DESIGN §5 (as GET /v1/customers/{id} answers it) plus invoices, charges
// and disputes.
type stateBody struct {
	customerJSON
	Invoices []invoiceBody `json:"invoices"`
	Charges  []chargeBody  `json:"charges"`
	Disputes []disputeBody `json:"disputes"`
	AsOf     time.Time     `json:"as_of"`
	Clock    string        `json:"clock"`
	Events   int           `json:"events"` // the history's events at or before as_of, folded
}

type disputeBody struct {
	DisputeID   string `json:"dispute_id"`
	CustomerID  string `json:"customer_id"`
	ChargeID    string `json:"charge_id"`
	Status      string `json:"status"`
	Currency    string `json:"currency"`
	Amount      int64  `json:"amount"`
	LastEventID string `json:"last_event_id"`
}

type invoiceBody struct {
	InvoiceID       string     `json:"invoice_id"`
	CustomerID      string     `json:"customer_id"`
	SubscriptionID  string     `json:"subscription_id"`
	Status          string     `json:"status"`
	AmountDue       int64      `json:"amount_due"`
	AmountPaid      int64      `json:"amount_paid"`
	Currency        string     `json:"currency"`
	PeriodStart     *time.Time `json:"period_start"`
	PeriodEnd       *time.Time `json:"period_end"`
	PaidPeriodStart *time.Time `json:"paid_period_start"`
	PaidPeriodEnd   *time.Time `json:"paid_period_end"`
	PaidAt          *time.Time `json:"paid_at"`
	AttemptCount    int64      `json:"attempt_count"`
	LastEventID     string     `json:"last_event_id"`
}

type chargeBody struct {
	ChargeID       string `json:"charge_id"`
	InvoiceID      string `json:"invoice_id"`
	Currency       string `json:"currency"`
	Amount         int64  `json:"amount"`
	AmountRefunded int64  `json:"amount_refunded"`
	Refunded       bool   `json:"refunded"`
	LastEventID    string `json:"last_event_id"`
}

// handleState folds the customer's events up to ?at= (inclusive) with
// audit.FoldState (domain.ParseFact and CustomerState.Apply, the fold the
// projections use). The default clock is Stripe's
// created: it is when the billing change happened and what the convergence
// rules order by, so the answer is what the customer's billing was at that
// instant however late the webhooks arrived. clock=received_at instead
// answers what the ledger believed at that instant.
func (s *Server) handleState(c echo.Context) error {
	customerID := c.Param("id")
	streams, err := s.historyStreams(c)
	if err != nil {
		return err
	}
	stream := streams[0]
	at, err := time.Parse(time.RFC3339, c.QueryParam("at"))
	if err != nil {
		return domain.Errorf(domain.EINVALID, "at must be an RFC 3339 time, such as 2024-03-01T00:00:00Z")
	}
	clock := cmp.Or(c.QueryParam("clock"), clockCreated)
	if clock != clockCreated && clock != clockReceivedAt {
		return domain.Errorf(domain.EINVALID, "clock must be %q or %q", clockCreated, clockReceivedAt)
	}
	key := domain.CustomerKey{Account: accountParam(c), ID: customerID}
	plans, err := s.statePlans(c.Request().Context())
	if err != nil {
		return readError("the live plan mapping", err)
	}
	res, err := audit.FoldState(c.Request().Context(), s.cfg.Log, streams, key, plans, func(r eventlog.Record) bool {
		if clock == clockReceivedAt {
			return !r.ReceivedAt.After(at)
		}
		return !r.Created.After(at)
	})
	if err != nil {
		return readError("events of "+stream, err)
	}
	st, total, folded, undecodable := res.State, res.Total, res.Folded, res.Undecodable
	if total == 0 {
		return customerNotFound(c)
	}
	if undecodable > 0 {
		s.cfg.Logger.Warn("state: events that do not decode were skipped", "stream", stream, "events", undecodable)
	}
	return c.JSON(http.StatusOK, newStateBody(st, at.UTC(), clock, folded))
}

// statePlans is the plan mapping state folds use: the live read model's,
// else the configured one.
func (s *Server) statePlans(ctx context.Context) (domain.Plans, error) {
	if s.cfg.LivePlans == nil {
		return s.cfg.Plans, nil
	}
	plans, ok, err := s.cfg.LivePlans(ctx)
	if err != nil || !ok {
		return s.cfg.Plans, err
	}
	return plans, nil
}

func newStateBody(st *domain.CustomerState, at time.Time, clock string, events int) stateBody {
	b := stateBody{
		customerJSON: newCustomerJSON(st),
		AsOf:         at, Clock: clock, Events: events, Invoices: []invoiceBody{}, Charges: []chargeBody{}, Disputes: []disputeBody{},
	}
	for _, id := range sortedKeys(st.Invoices) {
		inv := st.Invoices[id]
		b.Invoices = append(b.Invoices, invoiceBody{
			InvoiceID: inv.ID, CustomerID: inv.CustomerID, SubscriptionID: inv.SubscriptionID, Status: inv.Status,
			AmountDue: inv.AmountDue, AmountPaid: inv.AmountPaid, Currency: inv.Currency,
			PeriodStart: inv.PeriodStart, PeriodEnd: inv.PeriodEnd,
			PaidPeriodStart: inv.PaidPeriodStart, PaidPeriodEnd: inv.PaidPeriodEnd,
			PaidAt: inv.PaidAt, AttemptCount: inv.AttemptCount, LastEventID: inv.LastEventID,
		})
	}
	for _, id := range sortedKeys(st.Charges) {
		ch := st.Charges[id]
		b.Charges = append(b.Charges, chargeBody{
			ChargeID: ch.ID, InvoiceID: ch.InvoiceID, Currency: ch.Currency, Amount: ch.Amount,
			AmountRefunded: ch.AmountRefunded, Refunded: ch.Refunded, LastEventID: ch.LastEventID,
		})
	}
	for _, id := range sortedKeys(st.Disputes) {
		d := st.Disputes[id]
		b.Disputes = append(b.Disputes, disputeBody{
			DisputeID: d.ID, CustomerID: d.CustomerID, ChargeID: d.ChargeID, Status: d.Status,
			Currency: d.Currency, Amount: d.Amount, LastEventID: d.LastEventID,
		})
	}
	return b
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func customerNotFound(c echo.Context) error {
	return domain.Errorf(domain.ENOTFOUND, "customer %s has no events", c.Param("id"))
}
