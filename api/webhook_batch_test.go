package api_test

import (
	"bytes"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TestWebhookLostBatchAnswers503ToEach: concurrent deliveries of one
// customer go to one group-commit batch; when its connection is lost before
// it commits, every one of them is answered 503 (so that Stripe delivers it
// again) and none is stored, and the redeliveries are then stored afresh.
func TestWebhookLostBatchAnswers503ToEach(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := t.Context()
	const customer = "cus_lostbatch"
	// Hold the customer's stream lock (ledger_append's, functions.sql), so
	// that the first delivery waits in its transaction and the others queue
	// behind it for the same committer.
	held, err := env.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Rollback(ctx) }()
	// The test's own connection: waiting deliveries may take all of the pool's.
	admin, err := env.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Release()
	if _, err := held.Exec(ctx, `SELECT pg_advisory_xact_lock(1279612500, hashtext($1))`, "customer-"+customer); err != nil {
		t.Fatal(err)
	}
	payloads := make([][]byte, 6)
	for i := range payloads {
		payloads[i] = invoiceEvent(newEventID(), customer, "2023-10-16")
	}
	statuses := make([]int, len(payloads))
	var wg sync.WaitGroup
	deliver := func(i int) {
		wg.Go(func() { statuses[i] = deliverStatus(t, env.url, payloads[i]) })
	}
	// terminateWaiter ends the backend of a batch waiting for the lock
	// (another one than it ended before), and waits until it has exited.
	var ended int32
	terminateWaiter := func() {
		t.Helper()
		pids := waitForLockWaiters(t, admin, 1, ended)
		ended = pids[0]
		if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend($1, 10000)`, ended); err != nil {
			t.Fatal(err)
		}
	}
	deliver(0)
	waitForLockWaiters(t, admin, 1)
	for i := range payloads[1:] {
		deliver(i + 1)
	}
	time.Sleep(200 * time.Millisecond) // they queue behind the first within microseconds
	terminateWaiter()                  // the first delivery's batch
	terminateWaiter()                  // the batch of the five that queued behind it
	if err := held.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, status := range statuses {
		if status != http.StatusServiceUnavailable {
			t.Errorf("delivery %d with its connection lost: %d, want 503", i, status)
		}
	}
	if n := env.count(t); n != 0 {
		t.Fatalf("%d events stored from the lost batches, want none", n)
	}
	for i, p := range payloads {
		if status, body := post(t, env.url, p, sign(p, secret, time.Now())); status != http.StatusOK || body["duplicate"] != false {
			t.Errorf("redelivery %d: %d %v, want 200 not duplicate", i, status, body)
		}
	}
}

// waitForLockWaiters waits until n sessions of conn's database other than
// those of except wait for an advisory lock, and returns their pids.
func waitForLockWaiters(t *testing.T, conn *pgxpool.Conn, n int, except ...int32) []int32 {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var pids []int32
		err := conn.QueryRow(t.Context(), `SELECT coalesce(array_agg(pid), '{}') FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted AND pid <> ALL(coalesce($1::int[], '{}'))
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, except).Scan(&pids)
		if err == nil && len(pids) == n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v sessions wait for a stream lock (%v), want %d", pids, err, n)
		}
	}
}

// deliverStatus posts a signed delivery of payload and returns the answer's
// status, or 0 (with an error reported) if there is none. Unlike post it may
// run on any goroutine.
func deliverStatus(t *testing.T, url string, payload []byte) int {
	req, err := http.NewRequest(http.MethodPost, url+"/stripe/webhook", bytes.NewReader(payload))
	if err != nil {
		t.Error(err)
		return 0
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", sign(payload, secret, time.Now()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("POST webhook: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
