package api_test

// Handler tests: routing, authentication, validation and the mapping of
// errors to statuses, against in-memory fakes of the read model and the
// event log. They need no database (go test ./api -run Handler); the other
// tests of this package run the same server on PostgreSQL.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// fakeReadModel is an in-memory api.ReadModel: its customers and
// subscriptions by id, or err for every read.
type fakeReadModel struct {
	customers     map[domain.CustomerKey]*domain.CustomerState
	subscriptions map[string]domain.Subscription
	err           error // returned by every method when set
}

func (f *fakeReadModel) Customer(_ context.Context, key domain.CustomerKey) (*domain.CustomerState, error) {
	if f.err != nil {
		return nil, f.err
	}
	st, ok := f.customers[key]
	if !ok {
		return nil, domain.Errorf(domain.ENOTFOUND, "customer %s not found", key.ID)
	}
	return st, nil
}

func (f *fakeReadModel) Subscription(_ context.Context, account, id string) (domain.Subscription, error) {
	if f.err != nil {
		return domain.Subscription{}, f.err
	}
	sub, ok := f.subscriptions[account+"/"+id]
	if !ok {
		return sub, domain.Errorf(domain.ENOTFOUND, "subscription %s not found", id)
	}
	return sub, nil
}

func (f *fakeReadModel) CustomerStreams(_ context.Context, account, customerID string) ([]string, error) {
	if f.err != nil {
		return nil, f.err
	}
	return []string{domain.Envelope{CustomerID: customerID, Account: account}.Stream()}, nil
}

func (f *fakeReadModel) Ping(context.Context) error { return f.err }

// fakeLog is an in-memory event log that appends to a slice, or fails
// every call with err. Only what the handlers call is implemented.
type fakeLog struct {
	eventlog.Log // nil: any other method panics, failing the test
	mu           sync.Mutex
	events       []eventlog.Event
	err          error
}

func (l *fakeLog) Append(_ context.Context, e eventlog.Event) (eventlog.AppendResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return eventlog.AppendResult{}, l.err
	}
	for _, old := range l.events {
		if old.ID == e.ID {
			return eventlog.AppendResult{Duplicate: true}, nil
		}
	}
	l.events = append(l.events, e)
	return eventlog.AppendResult{StreamVersion: int64(len(l.events) - 1)}, nil
}

func (l *fakeLog) ReadStream(context.Context, string, int64, int) ([]eventlog.Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return nil, l.err
}

func (l *fakeLog) StreamHead(context.Context, string) (eventlog.Record, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return eventlog.Record{}, false, l.err
}

// newHandlerEnv serves api on the fakes over real HTTP.
func newHandlerEnv(tb testing.TB, rm *fakeReadModel, log *fakeLog, configure func(*api.Config)) *testEnv {
	tb.Helper()
	return serve(tb, api.Config{
		Log:         log,
		ReadModel:   rm,
		EnqueueThin: func(context.Context, domain.Envelope) error { return nil },
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, configure)
}

func TestHandlerNewRequiresDependencies(t *testing.T) {
	t.Parallel()
	rm, log := &fakeReadModel{}, &fakeLog{}
	thin := func(context.Context, domain.Envelope) error { return nil }
	for _, tc := range []struct {
		name string
		cfg  api.Config
	}{
		{"no webhook secrets", api.Config{Log: log, ReadModel: rm, EnqueueThin: thin}},
		{"no log", api.Config{ReadModel: rm, EnqueueThin: thin, WebhookSecrets: []string{secret}}},
		{"no read model", api.Config{Log: log, EnqueueThin: thin, WebhookSecrets: []string{secret}}},
		{"no thin queue", api.Config{Log: log, ReadModel: rm, WebhookSecrets: []string{secret}}},
	} {
		if _, err := api.New(tc.cfg); err == nil {
			t.Errorf("api.New with %s succeeded", tc.name)
		}
	}
}

func TestHandlerAuth(t *testing.T) {
	t.Parallel()
	env := newHandlerEnv(t, &fakeReadModel{}, &fakeLog{}, nil)
	for _, tc := range []struct {
		authorization string
		status        int
		code          string
	}{
		{"", http.StatusUnauthorized, domain.EUNAUTHORIZED},
		{"Bearer nope", http.StatusUnauthorized, domain.EUNAUTHORIZED},
		{"Basic " + apiToken, http.StatusUnauthorized, domain.EUNAUTHORIZED},
		{"bearer " + strings.ToUpper(apiToken), http.StatusUnauthorized, domain.EUNAUTHORIZED},
		{"Bearer " + apiToken, http.StatusNotFound, domain.ENOTFOUND}, // past the guard: the fake holds no customer
		{"BEARER  " + apiToken, http.StatusNotFound, domain.ENOTFOUND},
	} {
		status, body := do(t, env, http.MethodGet, "/v1/customers/cus_x", tc.authorization)
		if status != tc.status || errorCode(body) != tc.code {
			t.Errorf("Authorization %q: %d %v, want %d %s", tc.authorization, status, body, tc.status, tc.code)
		}
	}
}

// Without LEDGER_API_TOKEN, /v1 answers 503 not_configured whatever is sent.
func TestHandlerV1WithoutConfiguredTokenAnswers503(t *testing.T) {
	t.Parallel()
	env := newHandlerEnv(t, &fakeReadModel{}, &fakeLog{}, func(c *api.Config) { c.APIToken = "" })
	status, body := do(t, env, http.MethodGet, "/v1/customers/cus_x", "Bearer anything")
	if status != http.StatusServiceUnavailable || errorCode(body) != domain.ENOTCONFIGURED {
		t.Fatalf("got %d %v, want 503 not_configured", status, body)
	}
}

func TestHandlerRouting(t *testing.T) {
	t.Parallel()
	env := newHandlerEnv(t, &fakeReadModel{}, &fakeLog{}, nil)
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, "/nope", 404, domain.ENOTFOUND},
		{http.MethodGet, "/v1/nope", 404, domain.ENOTFOUND},
		{http.MethodGet, "/stripe/webhook", 405, "method_not_allowed"},
		{http.MethodPost, "/healthz", 405, "method_not_allowed"},
		{http.MethodPost, "/v1/customers/cus_x", 405, "method_not_allowed"},
		{http.MethodDelete, "/v1/subscriptions/sub_x", 405, "method_not_allowed"},
	} {
		status, body := do(t, env, tc.method, tc.path, "Bearer "+apiToken)
		e, _ := body["error"].(map[string]any)
		if status != tc.status || errorCode(body) != tc.code || e["message"] == "" {
			t.Errorf("%s %s: %d %v, want %d %s", tc.method, tc.path, status, body, tc.status, tc.code)
		}
	}
}

func TestHandlerValidation(t *testing.T) {
	t.Parallel()
	env := newHandlerEnv(t, &fakeReadModel{}, &fakeLog{}, nil)
	for _, path := range []string{
		"/v1/customers/not%20an%20id",
		"/v1/subscriptions/sub_x%27--",
		"/v1/customers/cus_x?account=acct%20x",
		"/v1/customers/cus_x/events?limit=abc",
		"/v1/customers/cus_x/events?after=3",
		"/v1/customers/cus_x/events.csv?limit=10",
		"/v1/customers/cus_x/events.csv?limit=abc",
		"/v1/customers/cus_x/events.csv?after=3",
		"/v1/customers/cus_x/state?at=yesterday",
		"/v1/customers/cus_x/state?at=2024-03-01T00:00:00Z&clock=wall",
	} {
		status, body := do(t, env, http.MethodGet, path, "Bearer "+apiToken)
		if status != http.StatusBadRequest || errorCode(body) != domain.EINVALID {
			t.Errorf("GET %s: %d %v, want 400 invalid", path, status, body)
		}
	}
}

// TestHandlerErrorMapping: what the read model and the log return becomes
// one status and code; an internal error's text never reaches the client.
func TestHandlerErrorMapping(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"not found", domain.Errorf(domain.ENOTFOUND, "customer cus_x not found"), 404, domain.ENOTFOUND},
		{"unavailable", fmt.Errorf("read customer cus_x: %w", domain.Errorf(domain.EUNAVAILABLE, "retry later")), 503, domain.EUNAVAILABLE},
		{"log unavailable", fmt.Errorf("read events: %w", eventlog.ErrUnavailable), 503, domain.EUNAVAILABLE},
		{"internal", errors.New(`ERROR: relation "secret_table" (SQLSTATE 42P01)`), 500, domain.EINTERNAL},
	} {
		env := newHandlerEnv(t, &fakeReadModel{err: tc.err}, &fakeLog{}, nil)
		for _, path := range []string{"/v1/customers/cus_x", "/v1/subscriptions/sub_x", "/v1/customers/cus_x/events"} {
			status, body := do(t, env, http.MethodGet, path, "Bearer "+apiToken)
			if status != tc.status || errorCode(body) != tc.code {
				t.Errorf("%s: GET %s: %d %v, want %d %s", tc.name, path, status, body, tc.status, tc.code)
			}
			if strings.Contains(fmt.Sprint(body), "secret_table") {
				t.Errorf("%s: GET %s leaks the error's text: %v", tc.name, path, body)
			}
		}
	}
}

func TestHandlerCustomerAndSubscription(t *testing.T) {
	t.Parallel()
	end := time.Date(2024, 3, 1, 0, 0, 0, 0, time.FixedZone("CET", 3600))
	sub := domain.Subscription{Account: "acct_1", ID: "sub_1", CustomerID: "cus_1", Status: "active", Plan: "pro", Quantity: 2,
		CurrentPeriodEnd: &end}
	older := domain.Subscription{Account: "acct_1", ID: "sub_0", CustomerID: "cus_1", Status: "canceled", Plan: "free"}
	key := domain.CustomerKey{Account: "acct_1", ID: "cus_1"}
	rm := &fakeReadModel{
		customers: map[domain.CustomerKey]*domain.CustomerState{key: {
			Account: "acct_1", Customer: domain.Customer{Account: "acct_1", ID: "cus_1", Email: "a@example.com"},
			Plan: "pro", Entitled: true, AccessUntil: &end, UpdatedAt: end,
			Subscriptions: map[string]domain.Subscription{"sub_0": older, "sub_1": sub},
		}},
		subscriptions: map[string]domain.Subscription{"acct_1/sub_1": sub},
	}
	env := newHandlerEnv(t, rm, &fakeLog{}, nil)
	status, body := do(t, env, http.MethodGet, "/v1/customers/cus_1?account=acct_1", "Bearer "+apiToken)
	subs, _ := body["subscriptions"].([]any)
	if status != 200 || body["customer_id"] != "cus_1" || body["plan"] != "pro" || body["entitled"] != true ||
		body["access_until"] != "2024-02-29T23:00:00Z" || len(subs) != 2 {
		t.Fatalf("customer: %d %v", status, body)
	}
	if first, _ := subs[0].(map[string]any); first["subscription_id"] != "sub_1" || first["current_period_end"] != "2024-02-29T23:00:00Z" {
		t.Errorf("customer's subscriptions, latest period end first, in UTC: %v", subs)
	}
	if status, body := do(t, env, http.MethodGet, "/v1/customers/cus_1", "Bearer "+apiToken); status != 404 {
		t.Errorf("the same id on the platform: %d %v, want 404", status, body)
	}
	status, body = do(t, env, http.MethodGet, "/v1/subscriptions/sub_1?account=acct_1", "Bearer "+apiToken)
	if status != 200 || body["subscription_id"] != "sub_1" || body["status"] != "active" || body["quantity"] != float64(2) {
		t.Errorf("subscription: %d %v", status, body)
	}
}

func TestHandlerReadyz(t *testing.T) {
	t.Parallel()
	up := newHandlerEnv(t, &fakeReadModel{}, &fakeLog{}, nil)
	if status, body := getJSON(t, up.url+"/readyz", ""); status != 200 || body["status"] != "ok" || body["database"] != "ok" {
		t.Errorf("database up: %d %v", status, body)
	}
	down := newHandlerEnv(t, &fakeReadModel{err: errors.New("connection refused")}, &fakeLog{}, nil)
	if status, body := getJSON(t, down.url+"/readyz", ""); status != 503 || body["status"] != "degraded" || body["database"] != "unreachable" {
		t.Errorf("database down: %d %v", status, body)
	}
	if status, body := getJSON(t, down.url+"/healthz", ""); status != 200 || body["status"] != "ok" {
		t.Errorf("healthz with the database down: %d %v", status, body)
	}
}

func TestHandlerWebhook(t *testing.T) {
	t.Parallel()
	valid := invoiceEvent(newEventID(), "cus_h", "2023-10-16")
	for _, tc := range []struct {
		name      string
		logErr    error
		body      []byte
		signature string
		status    int
		code      string
	}{
		{"stored", nil, valid, sign(valid, secret, time.Now()), 200, ""},
		{"no signature", nil, valid, "", 400, domain.EINVALID},
		{"wrong secret", nil, valid, sign(valid, "whsec_attacker", time.Now()), 400, domain.EINVALID},
		{"log unavailable", fmt.Errorf("append: %w", eventlog.ErrUnavailable), valid, sign(valid, secret, time.Now()), 503, domain.EUNAVAILABLE},
		{"log refuses the size", fmt.Errorf("append: %w", eventlog.ErrTooLarge), valid, sign(valid, secret, time.Now()), 413, domain.ETOOLARGE},
		{"log fails otherwise", errors.New("disk on fire"), valid, sign(valid, secret, time.Now()), 500, domain.EINTERNAL},
	} {
		log := &fakeLog{err: tc.logErr}
		env := newHandlerEnv(t, &fakeReadModel{}, log, nil)
		status, body := post(t, env.url, tc.body, tc.signature)
		if status != tc.status || errorCode(body) != tc.code {
			t.Errorf("%s: %d %v, want %d %q", tc.name, status, body, tc.status, tc.code)
		}
		if stored := len(log.events); (tc.status == 200) != (stored == 1) {
			t.Errorf("%s: %d events stored", tc.name, stored)
		}
	}
}

// A thin event is queued for its fetch before the 200; when the queue
// fails, the answer is 503 so that Stripe delivers it again.
func TestHandlerWebhookQueuesThinEvents(t *testing.T) {
	t.Parallel()
	thin := []byte(`{"id":"evt_thin_1","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","created":"2026-01-02T03:04:05.000Z","related_object":{"id":"mtr_1","type":"billing.meter","url":"/v1/billing/meters/mtr_1"}}`)
	var queued []string
	env := newHandlerEnv(t, &fakeReadModel{}, &fakeLog{}, func(c *api.Config) {
		c.EnqueueThin = func(_ context.Context, env domain.Envelope) error {
			queued = append(queued, env.ID)
			return nil
		}
	})
	if status, body := post(t, env.url, thin, sign(thin, secret, time.Now())); status != 200 || len(queued) != 1 || queued[0] != "evt_thin_1" {
		t.Fatalf("thin event: %d %v, queued %v", status, body, queued)
	}
	failing := newHandlerEnv(t, &fakeReadModel{}, &fakeLog{}, func(c *api.Config) {
		c.EnqueueThin = func(context.Context, domain.Envelope) error { return errors.New("queue down") }
	})
	if status, body := post(t, failing.url, thin, sign(thin, secret, time.Now())); status != 503 || errorCode(body) != domain.EUNAVAILABLE {
		t.Errorf("thin event with the queue down: %d %v, want 503 unavailable", status, body)
	}
}
