package api

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
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
	Next    string     `json:"next"` // the last event's stream_version, for ?after=; empty on the last page
	Head    streamHead `json:"head"` // the stream's last record when the page was read
}

// handleEvents answers one page of a customer's stream in version order.
// The cursor is a stream version: versions are dense and never change, so
// paging is stable while events are being appended.
func (s *Server) handleEvents(c echo.Context) error {
	stream, err := customerStream(c)
	if err != nil {
		return err
	}
	from, limit, err := parsePage(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	recs, err := s.cfg.Log.ReadStream(ctx, stream, from, limit+1)
	if err != nil {
		return readError("events of "+stream, err)
	}
	var page pageTrailer
	var head eventlog.Record
	switch {
	case len(recs) > limit:
		page.HasMore = true
		head, err = audit.Head(ctx, s.cfg.Log, stream, recs[limit])
		recs = recs[:limit]
		page.Next = strconv.FormatInt(recs[limit-1].StreamVersion, 10)
	case len(recs) > 0:
		head = recs[len(recs)-1]
	default: // past the end of the stream, or no such stream
		var first []eventlog.Record
		first, err = s.cfg.Log.ReadStream(ctx, stream, 0, 1)
		switch {
		case err != nil:
		case len(first) == 0:
			return customerNotFound(c)
		default:
			head, err = audit.Head(ctx, s.cfg.Log, stream, first[0])
		}
	}
	if err != nil {
		return readError("events of "+stream, err)
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

// parsePage reads ?after= (a cursor: the last stream version seen) and ?limit=.
func parsePage(c echo.Context) (from int64, limit int, err error) {
	limit = defaultPageSize
	if v := c.QueryParam("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxPageSize {
			return 0, 0, domain.Errorf(domain.EINVALID, "limit must be an integer from 1 to %d", maxPageSize)
		}
	}
	if v := c.QueryParam("after"); v != "" {
		after, err := strconv.ParseInt(v, 10, 64)
		if err != nil || after < 0 || after == math.MaxInt64 {
			return 0, 0, domain.Errorf(domain.EINVALID, "after %q is not a cursor from a previous page's next", v)
		}
		from = after + 1
	}
	return from, limit, nil
}

// handleEventsCSV streams a customer's whole stream as CSV, a batch at a
// time, in constant memory.
func (s *Server) handleEventsCSV(c echo.Context) error {
	stream, err := customerStream(c)
	if err != nil {
		return err
	}
	for _, param := range []string{"after", "limit"} {
		if c.QueryParams().Has(param) {
			return domain.Errorf(domain.EINVALID, "events.csv exports the whole stream and takes no ?%s= (page with /events?after=&limit=)", param)
		}
	}
	res := c.Response()
	w := audit.NewCSVWriter(res)
	err = audit.EachInStream(c.Request().Context(), s.cfg.Log, stream, 0, func(batch []eventlog.Record) error {
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
		s.cfg.Logger.Error("events CSV aborted", "stream", stream, "err", err)
		panic(http.ErrAbortHandler)
	case err != nil:
		return readError("events of "+stream, err)
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
// DESIGN §5 (as GET /v1/customers/{id} answers it) plus invoices and charges.
type stateBody struct {
	customerJSON
	Invoices []invoiceBody `json:"invoices"`
	Charges  []chargeBody  `json:"charges"`
	AsOf     time.Time     `json:"as_of"`
	Clock    string        `json:"clock"`
	Events   int           `json:"events"` // the stream's events at or before as_of, folded
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
// domain.Replay, the fold the projections use. The default clock is Stripe's
// created: it is when the billing change happened and what the convergence
// rules order by, so the answer is what the customer's billing was at that
// instant however late the webhooks arrived. clock=received_at instead
// answers what the ledger believed at that instant.
func (s *Server) handleState(c echo.Context) error {
	customerID := c.Param("id")
	stream, err := customerStream(c)
	if err != nil {
		return err
	}
	at, err := time.Parse(time.RFC3339, c.QueryParam("at"))
	if err != nil {
		return domain.Errorf(domain.EINVALID, "at must be an RFC 3339 time, such as 2024-03-01T00:00:00Z")
	}
	clock := cmp.Or(c.QueryParam("clock"), clockCreated)
	if clock != clockCreated && clock != clockReceivedAt {
		return domain.Errorf(domain.EINVALID, "clock must be %q or %q", clockCreated, clockReceivedAt)
	}
	// Folded batch by batch: memory is the customer's state, not its history.
	st := &domain.CustomerState{Customer: domain.Customer{ID: customerID}}
	st.Derive()
	plans, err := s.statePlans(c.Request().Context())
	if err != nil {
		return readError("the live plan mapping", err)
	}
	total, folded, undecodable := 0, 0, 0
	err = audit.EachInStream(c.Request().Context(), s.cfg.Log, stream, 0, func(batch []eventlog.Record) error {
		for _, r := range batch {
			total++
			t := r.Created
			if clock == clockReceivedAt {
				t = r.ReceivedAt
			}
			if t.After(at) {
				continue
			}
			folded++
			facts, err := domain.Facts(r.Payload, plans)
			if err != nil {
				undecodable++ // the projections skip such events too (dead letters)
				continue
			}
			for _, f := range facts {
				if f.CustomerID == customerID {
					st.Apply(f)
				}
			}
		}
		return nil
	})
	if err != nil {
		return readError("events of "+stream, err)
	}
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
		customerJSON: customerJSON{
			CustomerID: st.Customer.ID, Email: st.Customer.Email, Name: st.Customer.Name, Deleted: st.Customer.Deleted,
			Plan: st.Plan, Entitled: st.Entitled, AccessUntil: st.AccessUntil, UpdatedAt: st.UpdatedAt,
			Subscriptions: []subscriptionJSON{},
		},
		AsOf: at, Clock: clock, Events: events, Invoices: []invoiceBody{}, Charges: []chargeBody{},
	}
	for _, sub := range st.Subscriptions {
		b.Subscriptions = append(b.Subscriptions, subscriptionJSON{
			SubscriptionID: sub.ID, CustomerID: sub.CustomerID, Status: sub.Status, PriceID: sub.PriceID,
			ProductID: sub.ProductID, Plan: sub.Plan, Quantity: sub.Quantity,
			CurrentPeriodStart: sub.CurrentPeriodStart, CurrentPeriodEnd: sub.CurrentPeriodEnd,
			CancelAtPeriodEnd: sub.CancelAtPeriodEnd, CanceledAt: sub.CanceledAt, EndedAt: sub.EndedAt,
			TrialEnd: sub.TrialEnd, Deleted: sub.Deleted,
		})
	}
	// The order GET /v1/customers/{id} lists them in: latest period end first.
	slices.SortFunc(b.Subscriptions, func(x, y subscriptionJSON) int {
		return cmp.Or(latestFirst(x.CurrentPeriodEnd, y.CurrentPeriodEnd), cmp.Compare(x.SubscriptionID, y.SubscriptionID))
	})
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
	return b
}

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

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// customerStream is the stream the request's {id} and ?account= name.
func customerStream(c echo.Context) (string, error) {
	return audit.CustomerStream(c.Param("id"), strings.TrimSpace(c.QueryParam("account")))
}

func customerNotFound(c echo.Context) error {
	return domain.Errorf(domain.ENOTFOUND, "customer %s has no events", c.Param("id"))
}
