package projections

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

const testNotifySecret = "test-notify-secret"

// recordingReceiver is a real HTTP receiver that verifies each delivery
// with the notify package and records it; fail decides, per request
// number, to answer 500 (1) or to hang past the sender's timeout (2).
type recordingReceiver struct {
	mu       sync.Mutex
	got      []notify.Notification
	requests atomic.Int64
	fail     func(n int64) int
	badSig   atomic.Int64
}

func (rr *recordingReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := rr.requests.Add(1)
	if rr.fail != nil {
		switch rr.fail(n) {
		case 1:
			http.Error(w, "down", http.StatusInternalServerError)
			return
		case 2:
			time.Sleep(400 * time.Millisecond)
			return
		}
	}
	body, _ := io.ReadAll(r.Body)
	got, err := notify.Verify(body, r.Header.Get(notify.SignatureHeader), []string{"old-secret", testNotifySecret}, 0)
	if err != nil {
		rr.badSig.Add(1)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rr.mu.Lock()
	rr.got = append(rr.got, got)
	rr.mu.Unlock()
}

func (rr *recordingReceiver) received() []notify.Notification {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return slices.Clone(rr.got)
}

func (rr *recordingReceiver) hasAll(want []notify.Notification) bool {
	seen := map[string]bool{}
	for _, n := range rr.received() {
		seen[n.ID] = true
	}
	for _, n := range want {
		if !seen[n.ID] {
			return false
		}
	}
	return true
}

func newTestSender(t *testing.T, pool *pgxpool.Pool, urls ...string) *Sender {
	t.Helper()
	s, err := NewSender(pool, SenderConfig{URLs: urls, Secret: testNotifySecret, Logger: testLogger(t),
		Client: &http.Client{Timeout: 200 * time.Millisecond}, MinBackoff: 5 * time.Millisecond, MaxBackoff: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s.lockRetry = 50 * time.Millisecond
	return s
}

func runSender(s *Sender) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	return func() { cancel(); <-done }
}

func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inPositionOrder reports whether each notification first arrives after
// every one before it in the outbox: order per customer and beyond.
func inPositionOrder(got []notify.Notification) bool {
	seen, last := map[string]bool{}, int64(0)
	for _, n := range got {
		if seen[n.ID] {
			continue // a re-send after a restart
		}
		if n.Position < last {
			return false
		}
		seen[n.ID], last = true, n.Position
	}
	return true
}

// TestSenderDeliversThroughFailuresRestartsAndRebuilds: a receiver that
// answers 500 and then times out for a while, and one that refuses
// connections until it starts, both get every notification in order; the
// sender is stopped and restarted mid-delivery and loses nothing; a
// rebuild afterwards sends nothing; replay --id sends one again.
func TestSenderDeliversThroughFailuresRestartsAndRebuilds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	appendAll(t, log, domaintest.Redeliver(rand.New(rand.NewPCG(3, 4)), lifecycles(5, 20)))
	stopRunner := startRunner(t, newRunner(t, pool, log, p))
	waitCaughtUp(t, pool, log, p)
	outbox := allNotifications(t, NewNotifications(pool))
	if len(outbox) < 50 {
		t.Fatalf("only %d notifications to deliver", len(outbox))
	}

	flaky := &recordingReceiver{fail: func(n int64) int {
		switch {
		case n <= 6:
			return 1
		case n <= 8:
			return 2
		case n%17 == 0:
			return 1
		}
		return 0
	}}
	flakySrv := httptest.NewServer(flaky)
	defer flakySrv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lateAddr := ln.Addr().String()
	ln.Close() // connection refused until the receiver starts
	late := &recordingReceiver{}

	stop := runSender(newTestSender(t, pool, flakySrv.URL, "http://user:hunter2@"+lateAddr+"/hook"))
	waitFor(t, "some deliveries to the flaky receiver", func() bool { return len(flaky.received()) >= 10 })
	stop() // as a crash would: mid-page; the cursor stored lags what was sent
	ln, err = net.Listen("tcp", lateAddr)
	if err != nil {
		t.Fatal(err)
	}
	lateSrv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: late}}
	lateSrv.Start()
	defer lateSrv.Close()
	stop = runSender(newTestSender(t, pool, flakySrv.URL, "http://user:hunter2@"+lateAddr+"/hook"))
	defer stop()
	for name, rr := range map[string]*recordingReceiver{"flaky": flaky, "late": late} {
		waitFor(t, name+" receiver has every notification", func() bool { return rr.hasAll(outbox) })
		if !inPositionOrder(rr.received()) {
			t.Fatalf("%s receiver got notifications out of order", name)
		}
		if rr.badSig.Load() != 0 {
			t.Fatalf("%s receiver: %d deliveries failed verification", name, rr.badSig.Load())
		}
	}
	statuses, err := ReceiverStatuses(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cursors at the end", func() bool {
		statuses, err = ReceiverStatuses(ctx, pool)
		return err == nil && len(statuses) == 2 && statuses[0].Pending == 0 && statuses[1].Pending == 0
	})
	for _, st := range statuses {
		if strings.Contains(st.Receiver, "hunter2") {
			t.Fatalf("receiver name holds the URL's password: %s", st.Receiver)
		}
		if st.Delivered < int64(len(outbox)) || st.FailingID != "" {
			t.Fatalf("status %+v after delivering %d", st, len(outbox))
		}
	}

	// A rebuild re-derives the outbox: nothing new reaches anyone.
	flakyBefore, lateBefore := len(flaky.received()), len(late.received())
	if _, err := Rebuild(ctx, pool, log, p, Options{Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, pool, log, p)
	time.Sleep(500 * time.Millisecond)
	if n, m := len(flaky.received()), len(late.received()); n != flakyBefore || m != lateBefore {
		t.Fatalf("the rebuild sent %d and %d notifications again", n-flakyBefore, m-lateBefore)
	}
	if err := stopRunner(); err != nil {
		t.Fatal(err)
	}

	// replay --id: that notification and those after it, to the one named.
	replayed := outbox[len(outbox)-2]
	moved, err := Replay(ctx, pool, []string{statuses[0].Receiver}, time.Time{}, replayed.ID)
	if err != nil || moved != 1 {
		t.Fatalf("Replay: %d receivers, %v", moved, err)
	}
	waitFor(t, "the replay", func() bool { return len(flaky.received())+len(late.received()) == flakyBefore+lateBefore+2 })
	if _, err := Replay(ctx, pool, nil, time.Time{}, "ntf_none"); err != ErrNoNotification {
		t.Fatalf("Replay of an unknown id: %v", err)
	}
}

func TestSenderRefusesAURLWithoutSecret(t *testing.T) {
	t.Parallel()
	if _, err := NewSender(nil, SenderConfig{URLs: []string{"http://127.0.0.1:1/"}}); err == nil || !strings.Contains(err.Error(), "LEDGER_NOTIFY_SECRET") {
		t.Fatalf("NewSender without a secret: %v", err)
	}
	if _, err := NewSender(nil, SenderConfig{URLs: []string{"ftp://x:pw@host/"}, Secret: "s"}); err == nil || strings.Contains(err.Error(), "pw") {
		t.Fatalf("NewSender with an ftp URL: %v", err)
	}
}
