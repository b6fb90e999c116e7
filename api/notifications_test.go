package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/internal/tcpproxy"
	"github.com/stripe-ledger/stripe-ledger/notify"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// newNotifyingEnv is a server whose /v1/notifications reads the outbox that
// a real billing projection runner fills from the webhooks it takes.
func newNotifyingEnv(t *testing.T) *testEnv {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return startNotifying(t, pool, pool, nil)
}

// newNotifyingEnvBehindProxy is newNotifyingEnv with the server, its feed
// and its runner on one pool (tcpproxy.Pool's default size, as serve shares
// its pool) that reaches the database through a proxy the test can take down.
func newNotifyingEnvBehindProxy(t *testing.T) (*testEnv, *pgxpool.Pool) {
	t.Helper()
	direct, url := pgtest.NewPool(t)
	proxy, viaProxy := tcpproxy.Pool(t, url, 0)
	return startNotifying(t, direct, viaProxy, proxy), viaProxy
}

func startNotifying(t *testing.T, direct, pool *pgxpool.Pool, proxy *tcpproxy.Proxy) *testEnv {
	t.Helper()
	var runner *projections.Runner
	env := startServer(t, direct, pool, proxy, func(cfg *api.Config) {
		cfg.Notifications = projections.NewNotifications(pool)
		var err error
		if runner, err = projections.NewRunner(pool, cfg.Log, projections.Billing(testPlans), cfg.Logger, nil); err != nil {
			t.Fatal(err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = runner.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return env
}

type notificationsPage struct {
	Notifications []notify.Notification `json:"notifications"`
	HasMore       bool                  `json:"has_more"`
	Next          string                `json:"next"`
}

func getNotifications(t *testing.T, env *testEnv, query string) (int, notificationsPage) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.url+"/v1/notifications"+query, nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page notificationsPage
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, page
}

// TestNotificationsLongPollAndResume: a long poll started before the
// webhook answers with its invoice.paid once the projection derives it; a
// redelivery adds nothing; paging by next is ordered and resumable.
func TestNotificationsLongPollAndResume(t *testing.T) {
	t.Parallel()
	env := newNotifyingEnv(t)
	if status, _ := do(t, env, http.MethodGet, "/v1/notifications", ""); status != http.StatusUnauthorized {
		t.Fatalf("without the token: %d, want 401", status)
	}
	for _, q := range []string{"?after=x", "?limit=0", "?wait=2m", "?wait=soon"} {
		if status, _ := getNotifications(t, env, q); status != http.StatusBadRequest {
			t.Fatalf("%s: %d, want 400", q, status)
		}
	}
	if status, page := getNotifications(t, env, "?wait=0s"); status != http.StatusOK || len(page.Notifications) != 0 || page.Next != "0" {
		t.Fatalf("empty outbox: %d %+v", status, page)
	}

	type answer struct {
		page    notificationsPage
		elapsed time.Duration
	}
	polled := make(chan answer, 1)
	start := time.Now()
	go func() {
		_, page := getNotifications(t, env, "?wait=20s")
		polled <- answer{page, time.Since(start)}
	}()
	time.Sleep(300 * time.Millisecond) // the poll is waiting
	first := invoiceEvent(newEventID(), "cus_poll", "2023-10-16")
	if status, _ := post(t, env.url, first, sign(first, secret, time.Now())); status != http.StatusOK {
		t.Fatalf("webhook: %d", status)
	}
	a := <-polled
	if len(a.page.Notifications) != 1 || a.page.Notifications[0].Type != notify.InvoicePaid || a.page.Notifications[0].CustomerID != "cus_poll" {
		t.Fatalf("long poll answered %+v", a.page)
	}
	if a.elapsed > 10*time.Second {
		t.Fatalf("long poll answered after %v: it waited for its timeout, not the notification", a.elapsed)
	}
	n := a.page.Notifications[0]
	var data notify.InvoiceData
	if err := json.Unmarshal(n.Data, &data); err != nil || data.AmountPaid != 2000 || len(n.EventIDs) != 1 {
		t.Fatalf("invoice.paid: %+v (data %s, %v)", n, n.Data, err)
	}

	// The same event again, then two more customers' invoices.
	post(t, env.url, first, sign(first, secret, time.Now()))
	for _, cus := range []string{"cus_b", "cus_c"} {
		body := invoiceEvent(newEventID(), cus, "2023-10-16")
		post(t, env.url, body, sign(body, secret, time.Now()))
	}
	var got []notify.Notification
	for cursor := a.page.Next; len(got) < 2; {
		status, page := getNotifications(t, env, "?limit=1&wait=10s&after="+cursor)
		if status != http.StatusOK || len(page.Notifications) != 1 || !page.HasMore {
			t.Fatalf("page after %s: %d %+v", cursor, status, page)
		}
		got, cursor = append(got, page.Notifications...), page.Next
	}
	if got[0].CustomerID != "cus_b" || got[1].CustomerID != "cus_c" || got[0].Position <= n.Position || got[1].Position <= got[0].Position {
		t.Fatalf("after the first: %+v", got)
	}
	if _, page := getNotifications(t, env, "?wait=500ms&after="+strconv.FormatInt(got[1].Position, 10)); len(page.Notifications) != 0 {
		t.Fatalf("the redelivery made a second invoice.paid: %+v", page.Notifications)
	}
}

// TestNotificationsLongPollsLeaveThePoolToTheWebhook: three times as many
// long polls as the pool has connections wait, and a webhook still answers
// 200 at once; every poll then wakes with the notification it made.
func TestNotificationsLongPollsLeaveThePoolToTheWebhook(t *testing.T) {
	t.Parallel()
	env, pool := newNotifyingEnvBehindProxy(t)
	polls := 3 * int(pool.Config().MaxConns)
	type answer struct {
		status int
		page   notificationsPage
	}
	answers := make(chan answer, polls)
	for range polls {
		go func() {
			status, page := getNotifications(t, env, "?wait=15s")
			answers <- answer{status, page}
		}()
	}
	time.Sleep(time.Second) // the polls are waiting
	body := invoiceEvent(newEventID(), "cus_crowd", "2023-10-16")
	start := time.Now()
	if status, _ := post(t, env.url, body, sign(body, secret, time.Now())); status != http.StatusOK {
		t.Fatalf("webhook with %d long polls waiting: %d", polls, status)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("webhook took %v with %d long polls waiting on a pool of %d: they hold its connections", took, polls, pool.Config().MaxConns)
	}
	deadline := time.After(10 * time.Second)
	for i := range polls {
		select {
		case a := <-answers:
			if a.status != http.StatusOK || len(a.page.Notifications) != 1 || a.page.Notifications[0].CustomerID != "cus_crowd" {
				t.Fatalf("poll %d answered %d %+v", i, a.status, a.page)
			}
		case <-deadline:
			t.Fatalf("%d of %d long polls did not wake with the notification", polls-i, polls)
		}
	}
}

// TestNotificationsDatabaseDown: with the database unreachable the feed
// answers 503 unavailable (retry later), not 500, waiting or not.
func TestNotificationsDatabaseDown(t *testing.T) {
	t.Parallel()
	env, _ := newNotifyingEnvBehindProxy(t)
	if status, _ := getNotifications(t, env, "?wait=0s"); status != http.StatusOK {
		t.Fatalf("database up: %d", status)
	}
	env.proxy.Down()
	for _, q := range []string{"?wait=0s", "?wait=5s&after=3"} {
		status, body := do(t, env, http.MethodGet, "/v1/notifications"+q, "Bearer "+apiToken)
		if status != http.StatusServiceUnavailable || errorCode(body) != "unavailable" {
			t.Fatalf("%s with the database down: %d %v, want 503 unavailable", q, status, body)
		}
	}
}

// TestNotificationsWaitingBound: a long poll beyond the process's bound is
// refused with 503 unavailable at once; one within it still waits.
func TestNotificationsWaitingBound(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	feed := projections.NewNotifications(pool)
	feed.MaxWaiting = 1
	env := startServer(t, pool, pool, nil, func(cfg *api.Config) { cfg.Notifications = feed })
	first := make(chan int, 1)
	go func() {
		status, _ := getNotifications(t, env, "?wait=3s")
		first <- status
	}()
	time.Sleep(500 * time.Millisecond) // the first poll is waiting
	start := time.Now()
	status, body := do(t, env, http.MethodGet, "/v1/notifications?wait=3s", "Bearer "+apiToken)
	if status != http.StatusServiceUnavailable || errorCode(body) != "unavailable" || time.Since(start) > 2*time.Second {
		t.Fatalf("second long poll over a bound of 1: %d %v after %v, want 503 unavailable at once", status, body, time.Since(start))
	}
	if status := <-first; status != http.StatusOK {
		t.Fatalf("first long poll: %d", status)
	}
	if status, _ := getNotifications(t, env, "?wait=100ms"); status != http.StatusOK {
		t.Fatalf("a long poll once the first ended: %d", status)
	}
}
