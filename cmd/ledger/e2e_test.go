package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

const e2eSecret, e2eToken = "whsec_e2e", "e2e-token"

// startService runs the whole ledger (webhook, projections, read API) on a
// throwaway database and a loopback port, as `ledger serve` does, until the
// test ends.
func startService(t *testing.T, getenv func(string) string) string {
	t.Helper()
	base, _ := serveService(t, getenv)
	return base
}

// serveService is startService that also returns its graceful shutdown (the
// SIGTERM path of `ledger serve`), which the test may call before it ends.
func serveService(t testing.TB, getenv func(string) string) (base string, shutdown func() error) {
	t.Helper()
	cfg, err := LoadConfig(getenv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := OpenService(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()
	shutdown = sync.OnceValue(func() error {
		cancel()
		err := <-done
		svc.Close()
		return err
	})
	t.Cleanup(func() {
		if err := shutdown(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), shutdown
}

// deliver posts payload to the webhook and requires 200.
func deliver(t *testing.T, base string, payload []byte) {
	t.Helper()
	if status, body := postWebhook(t, base, payload); status != http.StatusOK {
		t.Fatalf("webhook answered %d: %s", status, body)
	}
}

// postWebhook posts payload to the webhook, freshly signed as Stripe signs
// each delivery attempt, and returns the answer.
func postWebhook(t *testing.T, base string, payload []byte) (int, []byte) {
	t.Helper()
	status, body, err := sendWebhook(base, payload)
	if err != nil {
		t.Fatal(err)
	}
	return status, body
}

// sendWebhook is postWebhook for goroutines other than the test's.
func sendWebhook(base string, payload []byte) (int, []byte, error) {
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: e2eSecret}).Header
	req, err := http.NewRequest(http.MethodPost, base+"/stripe/webhook", bytes.NewReader(payload))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Stripe-Signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func getV1(t *testing.T, url string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// waitCaughtUp polls /readyz until every projection has no lag.
func waitCaughtUp(t testing.TB, base string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var r struct {
			Projections []struct{ Lag int64 } `json:"projections"`
		}
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			if len(r.Projections) > 0 && r.Projections[0].Lag == 0 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("projections did not catch up within 60s")
}

type customerView struct {
	Account       string     `json:"account"`
	CustomerID    string     `json:"customer_id"`
	Plan          string     `json:"plan"`
	Entitled      bool       `json:"entitled"`
	AccessUntil   *time.Time `json:"access_until"`
	Subscriptions []struct {
		SubscriptionID    string     `json:"subscription_id"`
		Status            string     `json:"status"`
		Plan              string     `json:"plan"`
		PriceID           string     `json:"price_id"`
		CancelAtPeriodEnd bool       `json:"cancel_at_period_end"`
		CanceledAt        *time.Time `json:"canceled_at"`
		CurrentPeriodEnd  *time.Time `json:"current_period_end"`
		CollectionMethod  string     `json:"collection_method"`
	} `json:"subscriptions"`
}

// TestEndToEnd posts generated lifecycles, shuffled and re-delivered, to the
// real server and checks the read API against the pure fold of the same events.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret,
		"LEDGER_API_TOKEN", e2eToken, "LEDGER_PLANS", domaintest.Plans))

	rng := rand.New(rand.NewPCG(7, 11))
	inOrder := domaintest.Lifecycles(rng, 8)
	payloads := make([][]byte, len(inOrder))
	for i, d := range inOrder {
		payloads[i] = d.Payload
	}
	for _, d := range domaintest.Redeliver(rng, inOrder) {
		deliver(t, base, d.Payload)
	}
	waitCaughtUp(t, base)

	plans, _ := domain.ParsePlans(domaintest.Plans)
	want := requireReadModel(t, base, payloads, plans)
	if status := getV1(t, base+"/v1/customers/cus_nobody", nil); status != http.StatusNotFound {
		t.Errorf("unknown customer: %d, want 404", status)
	}
	requireBothKinds(t, want)
}

// requireBothKinds fails unless the generated customers include entitled
// and unentitled ones: a comparison over one kind proves less.
func requireBothKinds(t *testing.T, want map[domain.CustomerKey]*domain.CustomerState) {
	t.Helper()
	entitled := 0
	for _, st := range want {
		if st.Entitled {
			entitled++
		}
	}
	if entitled == 0 || entitled == len(want) {
		t.Fatalf("generated data has %d of %d customers entitled; the comparison needs both kinds", entitled, len(want))
	}
}

// requireReadModel checks the read API against the pure fold (domaintest.Replay)
// of payloads for every customer, and returns that fold.
func requireReadModel(t *testing.T, base string, payloads [][]byte, plans domain.Plans) map[domain.CustomerKey]*domain.CustomerState {
	t.Helper()
	want, err := domaintest.Replay(payloads, plans)
	if err != nil {
		t.Fatal(err)
	}
	requireCustomers(t, base, want)
	return want
}

// requireCustomers checks the read API's customers and subscriptions
// (addressed with ?account= for Connect ones) against want.
func requireCustomers(t *testing.T, base string, want map[domain.CustomerKey]*domain.CustomerState) {
	t.Helper()
	for key, st := range want {
		query := "?account=" + key.Account
		var got customerView
		if status := getV1(t, base+"/v1/customers/"+key.ID+query, &got); status != http.StatusOK {
			t.Fatalf("GET customer %v: %d", key, status)
		}
		if got.Account != key.Account || got.Plan != st.Plan || got.Entitled != st.Entitled || !sameTime(got.AccessUntil, st.AccessUntil) {
			t.Errorf("customer %v: account=%q plan=%s entitled=%v access_until=%v, want %s %v %v",
				key, got.Account, got.Plan, got.Entitled, got.AccessUntil, st.Plan, st.Entitled, st.AccessUntil)
		}
		if len(got.Subscriptions) != len(st.Subscriptions) {
			t.Errorf("customer %v: %d subscriptions, want %d", key, len(got.Subscriptions), len(st.Subscriptions))
		}
		for _, sub := range got.Subscriptions {
			w := st.Subscriptions[sub.SubscriptionID]
			if sub.Status != w.Status || sub.Plan != w.Plan || sub.PriceID != w.PriceID || sub.CancelAtPeriodEnd != w.CancelAtPeriodEnd ||
				!sameTime(sub.CanceledAt, w.CanceledAt) || !sameTime(sub.CurrentPeriodEnd, w.CurrentPeriodEnd) || sub.CollectionMethod != w.CollectionMethod {
				t.Errorf("customer %v: subscription %s: status=%s plan=%s price=%s cancel_at_period_end=%v canceled_at=%v period_end=%v collection_method=%s, want %s %s %s %v %v %v %s",
					key, sub.SubscriptionID, sub.Status, sub.Plan, sub.PriceID, sub.CancelAtPeriodEnd, sub.CanceledAt, sub.CurrentPeriodEnd, sub.CollectionMethod,
					w.Status, w.Plan, w.PriceID, w.CancelAtPeriodEnd, w.CanceledAt, w.CurrentPeriodEnd, w.CollectionMethod)
			}
			var one struct {
				Status           string
				CollectionMethod string `json:"collection_method"`
			}
			if status := getV1(t, base+"/v1/subscriptions/"+sub.SubscriptionID+query, &one); status != http.StatusOK ||
				one.Status != w.Status || one.CollectionMethod != w.CollectionMethod {
				t.Errorf("GET subscription %s%s: %d %q %q, want 200 %q %q", sub.SubscriptionID, query, status, one.Status, one.CollectionMethod,
					w.Status, w.CollectionMethod)
			}
		}
	}
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

// TestGracefulShutdownFinishesInFlightWebhooks holds a webhook's append open
// (another transaction holds its stream's lock), shuts the service down as
// SIGTERM does, and requires the shutdown to wait for the delivery, the
// delivery to be answered 200 and the event to be stored.
func TestGracefulShutdownFinishesInFlightWebhooks(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	base, shutdown := serveService(t, env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret))
	ctx := context.Background()
	hold, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close(ctx)
	tx, err := hold.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT * FROM ledger_append('evt_grace_0', 'customer-cus_grace', 'customer.created',
		'2023-10-16', now(), '', '{}'::bytea, 't=1,v1=00')`); err != nil {
		t.Fatal(err)
	}

	payload := []byte(fmt.Sprintf(`{"id":"evt_grace_1","object":"event","api_version":"2023-10-16","created":%d,
		"type":"customer.updated","data":{"object":{"id":"cus_grace","object":"customer"}}}`, time.Now().Unix()))
	type answer struct {
		status int
		body   []byte
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		status, body, err := sendWebhook(base, payload)
		answered <- answer{status, body, err}
	}()
	waitUntilBlocked(t, hold)

	stopped := make(chan error, 1)
	go func() { stopped <- shutdown() }()
	select {
	case err := <-stopped:
		t.Fatalf("shutdown returned (%v) while a delivery was in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-answered; a.err != nil || a.status != http.StatusOK || !bytes.Contains(a.body, []byte(`"duplicate":false`)) {
		t.Fatalf("in-flight delivery answered %d %s (%v), want 200 stored", a.status, a.body, a.err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	var versions []int64
	rows, err := hold.Query(ctx, `SELECT stream_version FROM events WHERE stream = 'customer-cus_grace' ORDER BY stream_version`)
	if err == nil {
		versions, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	if err != nil || len(versions) != 2 {
		t.Fatalf("stream versions %v (%v), want [0 1]", versions, err)
	}
}

// waitUntilBlocked waits until some session of conn's database waits for an
// advisory lock: the webhook's append, queued behind the test's transaction.
func waitUntilBlocked(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var waiting bool
		err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
			WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database())`).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the webhook's append never queued behind the held transaction")
}
