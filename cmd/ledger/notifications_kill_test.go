package main

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// TestNotificationsSurviveKill9 runs `ledger serve` as a process, kills it
// with SIGKILL while it is pushing to a slow receiver, starts it again, and
// checks that the receiver got every notification of the outbox (at least
// once: a receiver dedups by id) and, per customer, in position order.
func TestNotificationsSurviveKill9(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "ledger")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var mu sync.Mutex
	var got []notify.Notification
	// The receiver holds every push until the corpus is in (however slow the
	// machine), then takes them slowly enough that the kill lands mid-delivery.
	gate := make(chan struct{})
	open := sync.OnceFunc(func() { close(gate) })
	receiver := newNotifyReceiver(func(n notify.Notification) {
		<-gate
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		got = append(got, n)
		mu.Unlock()
	})
	defer receiver.Close()
	defer open()
	received := func() []notify.Notification {
		mu.Lock()
		defer mu.Unlock()
		return append([]notify.Notification(nil), got...)
	}

	dbURL := pgtest.NewDatabase(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	base := "http://" + addr
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "serve", "--migrate")
		cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "LEDGER_ADDR="+addr, "STRIPE_WEBHOOK_SECRET="+e2eSecret,
			"LEDGER_API_TOKEN="+e2eToken, "LEDGER_PLANS="+domaintest.Plans, "LEDGER_SEAL_INTERVAL=0",
			"LEDGER_NOTIFY_URL="+receiver.URL, "LEDGER_NOTIFY_SECRET=whsec_notify")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		deadline := time.Now().Add(60 * time.Second)
		for {
			if resp, err := http.Get(base + "/healthz"); err == nil {
				resp.Body.Close()
				return cmd
			}
			if time.Now().After(deadline) {
				t.Fatal("ledger serve did not start listening in 60 s")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	first := start()
	rng := rand.New(rand.NewPCG(9, 9))
	for _, d := range domaintest.Redeliver(rng, domaintest.Lifecycles(rng, 10)) {
		deliver(t, base, d.Payload)
	}
	waitCaughtUp(t, base)
	open()
	for len(received()) < 10 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := first.Process.Kill(); err != nil { // SIGKILL: no shutdown, no flush
		t.Fatal(err)
	}
	_ = first.Wait()
	atKill := len(received())

	start()
	waitCaughtUp(t, base)
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(context.Background(), `SELECT id FROM notifications ORDER BY position`)
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if atKill >= len(want) {
		t.Fatalf("the kill came after all %d notifications were delivered (%d): not mid-delivery", len(want), atKill)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		seen := map[string]bool{}
		for _, n := range received() {
			seen[n.ID] = true
		}
		missing := 0
		for _, id := range want {
			if !seen[id] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d notifications never reached the receiver after the kill (%d had before it)", missing, len(want), atKill)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Per customer, the first delivery of each notification comes in position order.
	last, seen := map[string]int64{}, map[string]bool{}
	for _, n := range received() {
		if seen[n.ID] {
			continue
		}
		seen[n.ID] = true
		key := n.Account + "/" + n.CustomerID
		if n.Position < last[key] {
			t.Fatalf("customer %s: notification %s (position %d) after position %d", key, n.ID, n.Position, last[key])
		}
		last[key] = n.Position
	}
	t.Logf("%d notifications, %d delivered before the SIGKILL, %d deliveries in all", len(want), atKill, len(received()))
}
