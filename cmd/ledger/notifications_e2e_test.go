package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// newNotifyReceiver is a real HTTP receiver that verifies each push with
// the notify package (secret whsec_notify) and hands it to record.
func newNotifyReceiver(record func(notify.Notification)) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := notify.Receive(r, []string{"whsec_notify"}, 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		record(n)
	}))
}

func TestServeRefusesANotifyURLWithoutSecret(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"serve"}, env("DATABASE_URL", "postgres://127.0.0.1:1/x", "STRIPE_WEBHOOK_SECRET", e2eSecret,
		"LEDGER_NOTIFY_URL", "http://127.0.0.1:1/hook"), &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "LEDGER_NOTIFY_SECRET") {
		t.Fatalf("serve with a notify URL and no secret: %v", err)
	}
}

// TestNotificationsEndToEnd: a shuffled, re-delivered corpus through the
// real webhook reaches a real receiver (verifying with the notify package)
// as exactly one invoice.paid per paid invoice, each notification at least
// once and in order, the same as the pull feed serves; a restart of the
// ledger sends nothing new; ledger notifications status shows the receiver
// caught up.
func TestNotificationsEndToEnd(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var pushed []notify.Notification
	receiver := newNotifyReceiver(func(n notify.Notification) {
		mu.Lock()
		pushed = append(pushed, n)
		mu.Unlock()
	})
	defer receiver.Close()
	url := pgtest.NewDatabase(t)
	getenv := env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_PLANS", domaintest.Plans, "LEDGER_NOTIFY_URL", receiver.URL, "LEDGER_NOTIFY_SECRET", "whsec_notify")
	base, shutdown := serveService(t, getenv)
	rng := rand.New(rand.NewPCG(16, 16))
	for _, d := range domaintest.Redeliver(rng, domaintest.Lifecycles(rng, 10)) {
		deliver(t, base, d.Payload)
	}
	waitCaughtUp(t, base)

	var feed []notify.Notification
	for after := "0"; ; {
		var page struct {
			Notifications []notify.Notification `json:"notifications"`
			Next          string                `json:"next"`
		}
		if status := getV1(t, base+"/v1/notifications?limit=100&after="+after, &page); status != http.StatusOK {
			t.Fatalf("GET /v1/notifications: %d", status)
		}
		if len(page.Notifications) == 0 {
			break
		}
		feed, after = append(feed, page.Notifications...), page.Next
	}
	paidNotes := 0
	for _, n := range feed {
		if n.Type == notify.InvoicePaid {
			paidNotes++
		}
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var paid int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM readmodel.invoices WHERE status = 'paid'`).Scan(&paid); err != nil {
		t.Fatal(err)
	}
	if paid == 0 || paidNotes != paid {
		t.Fatalf("%d invoice.paid notifications for %d paid invoices", paidNotes, paid)
	}

	received := func() []notify.Notification {
		mu.Lock()
		defer mu.Unlock()
		return append([]notify.Notification(nil), pushed...)
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(received()) < len(feed) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	got := received()
	if len(got) != len(feed) {
		t.Fatalf("the receiver got %d notifications, the feed holds %d", len(got), len(feed))
	}
	for i := range feed {
		if got[i].ID != feed[i].ID || got[i].Position != feed[i].Position {
			t.Fatalf("push %d is %s@%d, the feed's %s@%d", i, got[i].ID, got[i].Position, feed[i].ID, feed[i].Position)
		}
	}

	if err := shutdown(); err != nil {
		t.Fatal(err)
	}
	base, _ = serveService(t, getenv)
	waitCaughtUp(t, base)
	time.Sleep(time.Second)
	if n := len(received()); n != len(feed) {
		t.Fatalf("a restart sent %d notifications again", n-len(feed))
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"notifications", "status", "--format", "json"}, getenv, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	var statuses []struct {
		Receiver  string
		Pending   int64
		Delivered int64
	}
	if err := json.Unmarshal(out.Bytes(), &statuses); err != nil || len(statuses) != 1 || statuses[0].Pending != 0 || statuses[0].Delivered != int64(len(feed)) {
		t.Fatalf("notifications status: %s (%v)", out.String(), err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"notifications", "replay", "--id", feed[len(feed)-1].ID}, getenv, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	deadline = time.Now().Add(30 * time.Second)
	for len(received()) == len(feed) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := received(); len(got) != len(feed)+1 || got[len(got)-1].ID != feed[len(feed)-1].ID {
		out.Reset()
		_ = run(context.Background(), []string{"notifications", "status"}, getenv, &out, &bytes.Buffer{})
		t.Fatalf("replay --id sent %d; status:\n%s", len(got)-len(feed), out.String())
	}
}

// TestConsoleShowsFailingReceiver: a receiver that answers 500 is listed on
// the console's projections page as failing, with its attempts and error,
// while an empty configuration says there is none.
func TestConsoleShowsFailingReceiver(t *testing.T) {
	t.Parallel()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "receiver down for maintenance", http.StatusInternalServerError)
	}))
	defer failing.Close()
	base, _ := serveService(t, env("DATABASE_URL", pgtest.NewDatabase(t), "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_SEAL_INTERVAL", "0", "LEDGER_NOTIFY_URL", failing.URL, "LEDGER_NOTIFY_SECRET", "whsec_notify"))
	rng := rand.New(rand.NewPCG(3, 3))
	for _, d := range domaintest.Lifecycles(rng, 3) {
		deliver(t, base, d.Payload)
	}
	waitCaughtUp(t, base)
	b := newBrowser(t, base)
	if resp := b.login(e2eToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, page := b.do(http.MethodGet, "/console/projections", nil)
		if strings.Contains(page, "Notification receivers") && strings.Contains(page, failing.URL) &&
			strings.Contains(page, ">failing<") && strings.Contains(page, "500") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the projections page never showed %s failing:\n%s", failing.URL, page)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
