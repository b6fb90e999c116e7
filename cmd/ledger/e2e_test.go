package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/domain/domaintest"
	"github.com/stripe-ledger/stripe-ledger/migrations/pgtest"
)

const e2eSecret, e2eToken = "whsec_e2e", "e2e-token"

// startService runs the whole ledger (webhook, projections, read API) on a
// throwaway database and a loopback port, as `ledger serve` does.
func startService(t *testing.T, getenv func(string) string) string {
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
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		svc.Close()
	})
	return "http://" + ln.Addr().String()
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
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: e2eSecret}).Header
	req, _ := http.NewRequest(http.MethodPost, base+"/stripe/webhook", bytes.NewReader(payload))
	req.Header.Set("Stripe-Signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
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
func waitCaughtUp(t *testing.T, base string) {
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
	CustomerID    string     `json:"customer_id"`
	Plan          string     `json:"plan"`
	Entitled      bool       `json:"entitled"`
	AccessUntil   *time.Time `json:"access_until"`
	Subscriptions []struct {
		SubscriptionID string `json:"subscription_id"`
		Status         string `json:"status"`
		Plan           string `json:"plan"`
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
	want, err := domain.Replay(payloads, plans)
	if err != nil {
		t.Fatal(err)
	}
	for id, st := range want {
		var got customerView
		if status := getV1(t, base+"/v1/customers/"+id, &got); status != http.StatusOK {
			t.Fatalf("GET customer %s: %d", id, status)
		}
		if got.Plan != st.Plan || got.Entitled != st.Entitled || !sameTime(got.AccessUntil, st.AccessUntil) {
			t.Errorf("customer %s: plan=%s entitled=%v access_until=%v, want %s %v %v",
				id, got.Plan, got.Entitled, got.AccessUntil, st.Plan, st.Entitled, st.AccessUntil)
		}
		if len(got.Subscriptions) != len(st.Subscriptions) {
			t.Errorf("customer %s: %d subscriptions, want %d", id, len(got.Subscriptions), len(st.Subscriptions))
		}
		for _, sub := range got.Subscriptions {
			w := st.Subscriptions[sub.SubscriptionID]
			if sub.Status != w.Status || sub.Plan != w.Plan {
				t.Errorf("subscription %s: status=%s plan=%s, want %s %s", sub.SubscriptionID, sub.Status, sub.Plan, w.Status, w.Plan)
			}
			var one struct{ Status string }
			if status := getV1(t, base+"/v1/subscriptions/"+sub.SubscriptionID, &one); status != http.StatusOK || one.Status != w.Status {
				t.Errorf("GET subscription %s: %d %q, want 200 %q", sub.SubscriptionID, status, one.Status, w.Status)
			}
		}
	}
	if status := getV1(t, base+"/v1/customers/cus_nobody", nil); status != http.StatusNotFound {
		t.Errorf("unknown customer: %d, want 404", status)
	}
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

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}
