package api_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
)

// getV1 GETs path with the API token and returns the status and the raw body.
func getV1(t *testing.T, env *testEnv, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, body
}

type eventsPage struct {
	Events []struct {
		audit.Entry
		Payload json.RawMessage `json:"payload"`
	} `json:"events"`
	HasMore bool   `json:"has_more"`
	Next    string `json:"next"`
	Head    struct {
		StreamVersion int64  `json:"stream_version"`
		Hash          string `json:"hash"`
	} `json:"head"`
}

func appendEvents(t *testing.T, l eventlog.Log, stream string, n int) []eventlog.Event {
	t.Helper()
	var out []eventlog.Event
	for range n {
		e := eventlogtest.NewEvent(stream)
		if _, err := l.Append(context.Background(), e); err != nil {
			t.Error(err)
			return out
		}
		out = append(out, e)
	}
	return out
}

// TestEventsPagesUnderConcurrentAppends pages through a stream with a small
// page size while events are appended to it, then checks that every event
// was seen exactly once, in version order, with its payload byte for byte
// and its hash chain intact across pages.
func TestEventsPagesUnderConcurrentAppends(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	customer := "cus_pages_" + newEventID()[10:]
	stream := domain.CustomerStream(customer)
	appended := appendEvents(t, env.log, stream, 20)
	done := make(chan []eventlog.Event)
	go func() { done <- appendEvents(t, env.log, stream, 120) }()

	var seen []eventlog.Event
	var pages []eventsPage
	cursor, finished := "", false
	for {
		select {
		case more := <-done:
			appended, finished = append(appended, more...), true
		default:
		}
		status, body := getV1(t, env, fmt.Sprintf("/v1/customers/%s/events?limit=7&after=%s", customer, cursor))
		if status != http.StatusOK {
			t.Fatalf("page after %q: %d %s", cursor, status, body)
		}
		var page eventsPage
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatalf("page is not JSON: %v: %s", err, body)
		}
		pages = append(pages, page)
		for _, e := range page.Events {
			var want eventlog.Event
			if i := slices.IndexFunc(appended, func(a eventlog.Event) bool { return a.ID == e.EventID }); i >= 0 {
				want = appended[i]
			}
			if !bytes.Contains(body, want.Payload) {
				t.Fatalf("event %s: the page does not hold its payload byte for byte", e.EventID)
			}
			seen = append(seen, eventlog.Event{ID: e.EventID, Payload: e.Payload})
		}
		switch {
		case page.HasMore:
			cursor = page.Next
		case page.Next != "":
			t.Fatalf("last page has next %q, want empty", page.Next)
		case len(page.Events) > 0:
			cursor = page.Events[len(page.Events)-1].Position.String() // follow the history from its end
		}
		if finished && !page.HasMore {
			break
		}
	}
	if got, want := eventlogtest.IDs(toRecords(seen)), eventlogtest.IDs(toRecords(appended)); !slices.Equal(got, want) {
		t.Fatalf("saw %d events, appended %d; order or completeness differs:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	version, prev := int64(0), hex.EncodeToString(eventlog.GenesisHash)
	for _, p := range pages {
		for _, e := range p.Events {
			if e.StreamVersion != version || e.PrevHash != prev {
				t.Fatalf("event %s: version %d prev_hash %s, want version %d prev_hash %s", e.EventID, e.StreamVersion, e.PrevHash, version, prev)
			}
			version, prev = version+1, e.Hash
		}
		if p.Head.StreamVersion < version-1 {
			t.Errorf("page head %d is behind the page's events (up to %d)", p.Head.StreamVersion, version-1)
		}
	}
	last := pages[len(pages)-1]
	if last.Head.StreamVersion != int64(len(appended)-1) || last.Head.Hash != prev {
		t.Errorf("final head = %+v, want version %d hash %s", last.Head, len(appended)-1, prev)
	}
}

func toRecords(es []eventlog.Event) []eventlog.Record {
	out := make([]eventlog.Record, len(es))
	for i, e := range es {
		out[i].Event = e
	}
	return out
}

func TestEventsPageShapeAndErrors(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	appended := appendEvents(t, env.log, "customer-cus_shape", 3)
	appendEvents(t, env.log, "acct_1Connect/customer-cus_shape", 2)

	status, body := getV1(t, env, "/v1/customers/cus_shape/events?limit=2")
	var page eventsPage
	if err := json.Unmarshal(body, &page); err != nil || status != 200 {
		t.Fatalf("first page: %d %s", status, body)
	}
	e := page.Events[0]
	if len(page.Events) != 2 || !page.HasMore || page.Next != page.Events[1].Position.String() || page.Head.StreamVersion != 2 ||
		e.EventID != appended[0].ID || e.Type != "invoice.paid" || e.APIVersion != "2023-10-16" ||
		!e.Created.Equal(appended[0].Created) || e.ReceivedAt.IsZero() || len(e.PayloadSHA256) != 64 ||
		e.PrevHash != hex.EncodeToString(eventlog.GenesisHash) {
		t.Errorf("first page = %s", body)
	}
	if !bytes.Contains(body, appended[0].Payload) {
		t.Errorf("payload not verbatim: the stored bytes %q are not in %s", appended[0].Payload, body)
	}
	if status, body = getV1(t, env, "/v1/customers/cus_shape/events?after="+page.Next); status != 200 ||
		json.Unmarshal(body, &page) != nil || len(page.Events) != 1 || page.HasMore || page.Next != "" {
		t.Errorf("last page: %d %s", status, body)
	}
	if status, body = getV1(t, env, "/v1/customers/cus_shape/events?after="+page.Events[0].Position.String()); status != 200 ||
		json.Unmarshal(body, &page) != nil || len(page.Events) != 0 || page.Head.StreamVersion != 2 {
		t.Errorf("past the end: %d %s", status, body)
	}
	if status, body = getV1(t, env, "/v1/customers/cus_shape/events?account=acct_1Connect"); status != 200 ||
		json.Unmarshal(body, &page) != nil || len(page.Events) != 2 {
		t.Errorf("Connect stream: %d %s", status, body)
	}

	cases := []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/customers/cus_nobody/events", 404, domain.ENOTFOUND},
		{"/v1/customers/cus_nobody/events.csv", 404, domain.ENOTFOUND},
		{"/v1/customers/cus_nobody/state?at=2024-01-01T00:00:00Z", 404, domain.ENOTFOUND},
		{"/v1/customers/cus_shape/events?account=acct_other", 404, domain.ENOTFOUND},
		{"/v1/customers/cus_shape/events?limit=0", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/events?limit=1001", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/events?limit=ten", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/events?after=-1", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/events?after=1", 400, domain.EINVALID}, // a stream version: the cursor is a log position
		{"/v1/customers/cus_shape/events?after=abc", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/events?account=acct%2F..", 400, domain.EINVALID},
		{"/v1/customers/cus%20shape/events", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/state", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/state?at=yesterday", 400, domain.EINVALID},
		{"/v1/customers/cus_shape/state?at=2024-01-01T00:00:00Z&clock=wall", 400, domain.EINVALID},
	}
	for _, tc := range cases {
		status, body := getJSON(t, env.url+tc.path, apiToken)
		if status != tc.status || errorCode(body) != tc.code {
			t.Errorf("GET %s = %d %v, want %d %s", tc.path, status, body, tc.status, tc.code)
		}
	}
	if status, body := getJSON(t, env.url+"/v1/customers/cus_shape/events", ""); status != 401 || errorCode(body) != domain.EUNAUTHORIZED {
		t.Errorf("without a token: %d %v, want 401", status, body)
	}
}

// TestEventsCSVStreamsEveryEvent spans several of the log reader's batches.
func TestEventsCSVStreamsEveryEvent(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	appended := appendEvents(t, env.log, "customer-cus_csv", 2100)
	req, _ := http.NewRequest(http.MethodGet, env.url+"/v1/customers/cus_csv/events.csv", nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") {
		t.Fatalf("got %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rows, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(appended)+1 || rows[0][0] != "event_id" || rows[0][len(rows[0])-1] != "payload" {
		t.Fatalf("%d rows (header %v), want %d events and a header", len(rows), rows[0], len(appended))
	}
	for i, e := range appended {
		row := rows[i+1]
		// encoding/csv reads a quoted "\r\n" as "\n"; the digest column proves the bytes.
		if row[0] != e.ID || row[6] != fmt.Sprint(i) || row[len(row)-1] != strings.ReplaceAll(string(e.Payload), "\r\n", "\n") {
			t.Fatalf("row %d = %q, want event %s version %d", i+1, row[:7], e.ID, i)
		}
	}
}

// TestStateAtEveryEventBoundary delivers generated customer lifecycles in a
// shuffled order, with re-deliveries, and checks, at every instant one of a
// customer's events was created (and one second before the first), that
// state?at= is the fold, by domaintest.Replay as the projections do, of exactly
// the customer's events created up to that instant.
func TestStateAtEveryEventBoundary(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(5, 5))
	deliveries := domaintest.Lifecycles(rng, 6)
	for _, d := range domaintest.Redeliver(rng, deliveries) {
		envelope, err := domain.ParseEnvelope(d.Payload)
		if err != nil {
			t.Fatal(err)
		}
		_, err = env.log.Append(ctx, eventlog.Event{ID: envelope.ID, Stream: envelope.Stream(), Type: envelope.Type,
			APIVersion: envelope.APIVersion, Created: envelope.Created, Payload: d.Payload, Signature: sign(d.Payload, secret, time.Now())})
		if err != nil {
			t.Fatal(err)
		}
	}
	byCustomer := map[string][]domaintest.Delivery{}
	for _, d := range deliveries {
		if d.CustomerID != "" && d.Account == "" { // the platform's: state?at= is asked without ?account=
			byCustomer[d.CustomerID] = append(byCustomer[d.CustomerID], d)
		}
	}
	boundaries := 0
	for customer, ds := range byCustomer {
		instants := []time.Time{ds[0].Created.Add(-time.Second)}
		for _, d := range ds {
			if !d.Created.Equal(instants[len(instants)-1]) {
				instants = append(instants, d.Created)
			}
		}
		for _, at := range instants {
			var prefix [][]byte
			for _, d := range ds {
				if !d.Created.After(at) {
					prefix = append(prefix, d.Payload)
				}
			}
			states, err := domaintest.Replay(prefix, testPlans)
			if err != nil {
				t.Fatal(err)
			}
			want := summarize(states[domain.CustomerKey{ID: customer}], len(prefix))
			status, body := getV1(t, env, fmt.Sprintf("/v1/customers/%s/state?at=%s", customer, at.Format(time.RFC3339)))
			var got stateResponse
			if status != 200 || json.Unmarshal(body, &got) != nil {
				t.Fatalf("state at %s: %d %s", at, status, body)
			}
			if got.summary() != want || got.CustomerID != customer || !got.AsOf.Equal(at) || got.Clock != "created" {
				t.Fatalf("state of %s at %s:\n got %s\nwant %s", customer, at, got.summary(), want)
			}
			boundaries++
		}
	}
	t.Logf("%d event boundaries of %d customers checked", boundaries, len(byCustomer))

	// By the ledger's own clock: nothing had been received an hour ago, everything has now.
	for at, wantEvents := range map[time.Time]int{time.Now().Add(-time.Hour): 0, time.Now().Add(time.Second): len(byCustomer[deliveries[0].CustomerID])} {
		status, body := getV1(t, env, fmt.Sprintf("/v1/customers/%s/state?clock=received_at&at=%s", deliveries[0].CustomerID, at.UTC().Format(time.RFC3339)))
		var got stateResponse
		if status != 200 || json.Unmarshal(body, &got) != nil || got.Events != wantEvents || got.Clock != "received_at" {
			t.Errorf("received_at clock at %s: %d %s, want %d events", at, status, body, wantEvents)
		}
	}
}

type stateResponse struct {
	CustomerID    string                 `json:"customer_id"`
	Plan          string                 `json:"plan"`
	Entitled      bool                   `json:"entitled"`
	AccessUntil   *time.Time             `json:"access_until"`
	Deleted       bool                   `json:"deleted"`
	Subscriptions []subscriptionResponse `json:"subscriptions"`
	Invoices      []invoiceResponse      `json:"invoices"`
	Charges       []chargeResponse       `json:"charges"`
	AsOf          time.Time              `json:"as_of"`
	Clock         string                 `json:"clock"`
	Events        int                    `json:"events"`
}

type subscriptionResponse struct {
	SubscriptionID   string     `json:"subscription_id"`
	Status           string     `json:"status"`
	Plan             string     `json:"plan"`
	Quantity         int64      `json:"quantity"`
	CurrentPeriodEnd *time.Time `json:"current_period_end"`
	CanceledAt       *time.Time `json:"canceled_at"`
}

type invoiceResponse struct {
	InvoiceID     string     `json:"invoice_id"`
	Status        string     `json:"status"`
	AmountPaid    int64      `json:"amount_paid"`
	PaidPeriodEnd *time.Time `json:"paid_period_end"`
	AttemptCount  int64      `json:"attempt_count"`
}

type chargeResponse struct {
	ChargeID       string `json:"charge_id"`
	AmountRefunded int64  `json:"amount_refunded"`
}

// summary renders the fields the test compares, in a canonical order.
func (r stateResponse) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plan=%s entitled=%v access_until=%s deleted=%v events=%d", r.Plan, r.Entitled, ts(r.AccessUntil), r.Deleted, r.Events)
	var objs []string
	for _, s := range r.Subscriptions {
		objs = append(objs, fmt.Sprintf("sub %s %s %s x%d end=%s canceled=%s", s.SubscriptionID, s.Status, s.Plan, s.Quantity, ts(s.CurrentPeriodEnd), ts(s.CanceledAt)))
	}
	for _, i := range r.Invoices {
		objs = append(objs, fmt.Sprintf("inv %s %s paid=%d until=%s attempts=%d", i.InvoiceID, i.Status, i.AmountPaid, ts(i.PaidPeriodEnd), i.AttemptCount))
	}
	for _, c := range r.Charges {
		objs = append(objs, fmt.Sprintf("ch %s refunded=%d", c.ChargeID, c.AmountRefunded))
	}
	slices.Sort(objs)
	return b.String() + " " + strings.Join(objs, "; ")
}

// summarize renders a folded state like stateResponse.summary; nil is a
// customer none of whose events were folded yet.
func summarize(st *domain.CustomerState, events int) string {
	if st == nil {
		st = &domain.CustomerState{}
		st.Derive()
	}
	var r stateResponse
	r.Plan, r.Entitled, r.AccessUntil, r.Deleted, r.Events = st.Plan, st.Entitled, st.AccessUntil, st.Customer.Deleted, events
	for _, s := range st.Subscriptions {
		r.Subscriptions = append(r.Subscriptions, subscriptionResponse{s.ID, s.Status, s.Plan, s.Quantity, s.CurrentPeriodEnd, s.CanceledAt})
	}
	for _, i := range st.Invoices {
		r.Invoices = append(r.Invoices, invoiceResponse{i.ID, i.Status, i.AmountPaid, i.PaidPeriodEnd, i.AttemptCount})
	}
	for _, c := range st.Charges {
		r.Charges = append(r.Charges, chargeResponse{c.ID, c.AmountRefunded})
	}
	return r.summary()
}

func ts(t *time.Time) string {
	if t == nil {
		return "null"
	}
	return t.UTC().Format(time.RFC3339)
}
