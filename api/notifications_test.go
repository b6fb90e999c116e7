package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// newNotifyingEnv is a server whose /v1/notifications reads the outbox that
// a real billing projection runner fills from the webhooks it takes.
func newNotifyingEnv(t *testing.T) *testEnv {
	t.Helper()
	var runner *projections.Runner
	pool, _ := pgtest.NewPool(t)
	env := startServer(t, pool, pool, nil, func(cfg *api.Config) {
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
