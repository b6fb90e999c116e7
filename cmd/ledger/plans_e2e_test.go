package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// TestPlansChangeRebuildsOrIsRefused changes LEDGER_PLANS under a running
// ledger. A rebuild with the new mapping while the old one is live is
// refused, naming both; a server started with the new mapping rebuilds
// blue/green; state at an instant folds with the live mapping whatever the
// process's; and no snapshot of the read model, taken all along, ever
// mixes the two mappings.
func TestPlansChangeRebuildsOrIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	const oldPlans = domaintest.Plans
	const newPlans = "price_pro_monthly=pro_monthly,price_team_monthly=team_monthly"
	envWith := func(plans string) func(string) string {
		return env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken, "LEDGER_PLANS", plans)
	}

	rng := rand.New(rand.NewPCG(3, 14))
	inOrder := domaintest.Lifecycles(rng, 12)
	payloads := make([][]byte, len(inOrder))
	for i, d := range inOrder {
		payloads[i] = d.Payload
	}
	wantOld, wantNew := replayPlans(t, payloads, oldPlans), replayPlans(t, payloads, newPlans)
	if maps.Equal(wantOld, wantNew) {
		t.Fatal("the generated customers have the same plans under both mappings: the test would prove nothing")
	}

	base, shutdown := serveService(t, envWith(oldPlans))
	for _, d := range domaintest.Redeliver(rng, inOrder) {
		deliver(t, base, d.Payload)
	}
	waitCaughtUp(t, base)
	requireReadModel(t, base, payloads, mustPlans(t, oldPlans))

	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"projections", "status", "--format", "json"}, envWith(oldPlans), &out, &errOut); err != nil {
		t.Fatal(err)
	}
	var statuses []struct{ Position, Head, Plans string }
	if err := json.Unmarshal(out.Bytes(), &statuses); err != nil || len(statuses) != 1 {
		t.Fatalf("projections status --format json: %v\n%s", err, out.String())
	}
	if st := statuses[0]; st.Plans != oldPlans || !regexp.MustCompile(`^\d+/\d+$`).MatchString(st.Position) || st.Position != st.Head {
		t.Errorf("status %+v, want plans %q and commit/prepare positions at the head", st, oldPlans)
	}

	out.Reset()
	err := run(ctx, []string{"projections", "rebuild"}, envWith(newPlans), &out, &errOut)
	if !errors.Is(err, projections.ErrPlansChanged) || exitCode(err) != 2 || !strings.Contains(err.Error(), oldPlans) || !strings.Contains(err.Error(), newPlans) {
		t.Fatalf("rebuild with another mapping: err = %v (exit %d), want a refusal naming both mappings, exit 2", err, exitCode(err))
	}

	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if got := readPlans(t, pool); !maps.Equal(got, wantOld) {
		t.Fatalf("after the refused rebuild the read model is %v, want the old mapping's %v", got, wantOld)
	}
	if err := shutdown(); err != nil {
		t.Fatal(err)
	}

	// Snapshots all along the change: each is the old model or the new one.
	watchCtx, stopWatching := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		for {
			got := readPlans(t, pool)
			switch {
			case maps.Equal(got, wantNew):
				watched <- nil
				return
			case !maps.Equal(got, wantOld):
				watched <- errors.New("mixed read model: " + describe(got, wantOld, wantNew))
				return
			case watchCtx.Err() != nil:
				watched <- errors.New("the new mapping never became live")
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	base, _ = serveService(t, envWith(newPlans))
	select {
	case err := <-watched:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(90 * time.Second):
		stopWatching()
		t.Fatal(<-watched)
	}
	stopWatching()
	waitCaughtUp(t, base)
	requireReadModel(t, base, payloads, mustPlans(t, newPlans))

	// A process configured with the old mapping folds state at an instant
	// with the live (new) one, as the read model does.
	cfg, err := LoadConfig(envWith(oldPlans))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := OpenService(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ts := httptest.NewServer(svc.api)
	defer ts.Close()
	at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for key, plan := range wantNew {
		var state struct{ Plan string }
		if status := getV1(t, ts.URL+"/v1/customers/"+key.ID+"/state?at="+at+"&account="+key.Account, &state); status != 200 || state.Plan != plan {
			t.Errorf("state of %v from a process with the old mapping: %d plan %q, want the live mapping's %q", key, status, state.Plan, plan)
		}
	}
}

// replayPlans is every customer's plan in the pure fold of payloads with plans.
func replayPlans(t *testing.T, payloads [][]byte, plans string) map[domain.CustomerKey]string {
	t.Helper()
	states, err := domaintest.Replay(payloads, mustPlans(t, plans))
	if err != nil {
		t.Fatal(err)
	}
	out := map[domain.CustomerKey]string{}
	for key, st := range states {
		out[key] = st.Plan
	}
	return out
}

func mustPlans(t *testing.T, s string) domain.Plans {
	t.Helper()
	p, err := domain.ParsePlans(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// readPlans is every customer's plan in the read model, read in one
// statement: one snapshot.
func readPlans(t *testing.T, pool *pgxpool.Pool) map[domain.CustomerKey]string {
	rows, err := pool.Query(context.Background(), `SELECT account, customer_id, plan FROM readmodel.customers`)
	if err != nil {
		t.Error(err)
		return nil
	}
	out := map[domain.CustomerKey]string{}
	var account, id, plan string
	if _, err := pgx.ForEachRow(rows, []any{&account, &id, &plan}, func() error {
		out[domain.CustomerKey{Account: account, ID: id}] = plan
		return nil
	}); err != nil {
		t.Error(err)
	}
	return out
}

// describe lists each customer's plan in got beside both mappings' plans.
func describe(got, wantOld, wantNew map[domain.CustomerKey]string) string {
	var b strings.Builder
	for key, plan := range got {
		fmt.Fprintf(&b, "%v=%s (old %s, new %s) ", key, plan, wantOld[key], wantNew[key])
	}
	return b.String()
}
