package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// TestRebuildUnderTraffic changes the projection's logic (a version 2 with
// another plan mapping) and rebuilds it blue/green while one goroutine keeps
// posting signed events through the real server and another keeps reading
// customers through the read API. Reads never fail and never see a
// half-built model (a customer's subscriptions never vanish); after the new
// version's runner takes over (the "deploy"), no event is missing and the
// read model equals a from-scratch fold with the new logic.
func TestRebuildUnderTraffic(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret,
		"LEDGER_API_TOKEN", e2eToken, "LEDGER_PLANS", domaintest.Plans))
	ctx := context.Background()

	rng := rand.New(rand.NewPCG(21, 5))
	ds := domaintest.Lifecycles(rng, 20)
	split := len(ds) / 2
	payloads := make([][]byte, len(ds))
	for i, d := range ds {
		payloads[i] = d.Payload
	}
	for _, p := range payloads[:split] {
		deliver(t, base, p)
	}
	waitCaughtUp(t, base)

	// What every early customer holds before the rebuild: never less after.
	before := map[domain.CustomerKey]int{}
	early, err := domaintest.Replay(payloads[:split], nil)
	if err != nil {
		t.Fatal(err)
	}
	for key := range early {
		var v customerView
		if status := getV1(t, base+"/v1/customers/"+key.ID+"?account="+key.Account, &v); status != http.StatusOK {
			t.Fatalf("GET customer %v before the rebuild: %d", key, status)
		}
		before[key] = len(v.Subscriptions)
	}

	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var delivering, reading sync.WaitGroup
	delivering.Go(func() { // Stripe keeps delivering
		for _, p := range payloads[split:] {
			if status, body, err := sendWebhook(base, p); err != nil || status != http.StatusOK {
				t.Errorf("webhook during the rebuild: %d %s %v", status, body, err)
				return
			}
		}
	})
	reads := 0
	reading.Go(func() { // and the product keeps reading
		for trafficCtx.Err() == nil {
			for key, n := range before {
				v, status, err := readCustomer(base, key)
				switch {
				case trafficCtx.Err() != nil:
					return
				case err != nil || status != http.StatusOK:
					t.Errorf("GET customer %v during the rebuild: %d %v", key, status, err)
					return
				case len(v.Subscriptions) < n:
					t.Errorf("customer %v has %d subscriptions during the rebuild, had %d: a half-built model", key, len(v.Subscriptions), n)
					return
				}
				reads++
			}
		}
	})

	v1Plans, _ := domain.ParsePlans(domaintest.Plans)
	v2Plans := append(v1Plans, domain.PlanPrice{PriceID: "price_basic_monthly", Plan: "starter"}) // version 1 names it by its lookup key, "basic"
	v2 := projections.Projection{Name: "billing", Version: projections.BillingVersion + 1, Plans: v2Plans}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	log := postgres.New(pool, logger)
	defer log.Close()
	if _, err := projections.Rebuild(ctx, pool, log, v2, projections.Options{Logger: logger, Wait: true}); err != nil {
		t.Fatalf("rebuild to version 2: %v", err)
	}

	// The deploy: a version 2 runner takes over from the service's version 1
	// runner, which refuses to run a model newer than its logic.
	runCtx, stopRunner := context.WithCancel(ctx)
	runner, err := projections.NewRunner(pool, log, v2, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	runnerDone := make(chan error, 1)
	go func() { runnerDone <- runner.Run(runCtx) }()
	defer func() {
		stopRunner()
		if err := <-runnerDone; err != nil {
			t.Errorf("version 2 runner: %v", err)
		}
	}()

	delivering.Wait()
	stopTraffic()
	reading.Wait()
	waitCaughtUp(t, base)
	if reads == 0 {
		t.Fatal("the reader made no read during the rebuild")
	}
	want := requireReadModel(t, base, payloads, v2Plans)
	starter := 0
	for _, st := range want {
		for _, sub := range st.Subscriptions {
			if sub.Plan == "starter" {
				starter++
			}
		}
	}
	if starter == 0 {
		t.Fatal("no subscription uses the changed mapping: the test proves nothing about the new logic")
	}
}

// readCustomer is getV1 for goroutines other than the test's: it reports
// failures instead of stopping the test.
func readCustomer(base string, key domain.CustomerKey) (customerView, int, error) {
	var v customerView
	req, err := http.NewRequest(http.MethodGet, base+"/v1/customers/"+key.ID+"?account="+key.Account, nil)
	if err != nil {
		return v, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return v, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return v, resp.StatusCode, fmt.Errorf("%s", body)
	}
	return v, resp.StatusCode, json.NewDecoder(resp.Body).Decode(&v)
}
