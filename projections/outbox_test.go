package projections

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// deriveInMemory folds recs in chunks of size (0: one chunk) through
// applyNoting into states kept in memory, as fold does batch by batch.
func deriveInMemory(p Projection, recs []eventlog.Record, size int) ([]notify.Notification, map[domain.CustomerKey]*domain.CustomerState) {
	states := map[domain.CustomerKey]*domain.CustomerState{}
	var notes []notify.Notification
	if size == 0 {
		size = len(recs)
	}
	for chunk := range slices.Chunk(recs, size) {
		b := p.decode(chunk)
		types := b.eventTypes()
		for _, k := range b.customers() {
			if states[k] == nil {
				states[k] = &domain.CustomerState{}
			}
			for _, f := range b.facts[k] {
				notes = applyNoting(notes, states[k], f, types)
			}
		}
	}
	return notes, states
}

func ids(notes []notify.Notification, typ string) []string {
	var out []string
	for _, n := range notes {
		if n.Type == typ {
			out = append(out, n.ID)
		}
	}
	slices.Sort(out)
	return out
}

// TestNotificationsBatchIndependent: the same log folded in batches of any
// size derives the same notifications, ids and all; this is why a rebuild
// (big batches) re-derives exactly the outbox the live runner wrote.
func TestNotificationsBatchIndependent(t *testing.T) {
	t.Parallel()
	p := Billing(testPlans(t))
	recs := records(t, lifecycles(16, 40))
	want, _ := deriveInMemory(p, recs, 1)
	if len(want) == 0 {
		t.Fatal("no notifications derived from 40 lifecycles")
	}
	for _, size := range []int{7, 100, 0} {
		got, _ := deriveInMemory(p, recs, size)
		if !slices.EqualFunc(sortedByID(want), sortedByID(got), sameNotification) {
			t.Fatalf("batches of %d derive %d notifications, one by one %d, or they differ", size, len(got), len(want))
		}
	}
}

func sortedByID(notes []notify.Notification) []notify.Notification {
	out := slices.Clone(notes)
	slices.SortFunc(out, func(a, b notify.Notification) int { return compareStrings(a.ID, b.ID) })
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func sameNotification(a, b notify.Notification) bool {
	return a.ID == b.ID && a.Type == b.Type && string(a.Data) == string(b.Data) && slices.Equal(a.EventIDs, b.EventIDs) && a.OccurredAt.Equal(b.OccurredAt)
}

// TestNotificationsProperty: permutations and duplicates of lifecycles give
// one invoice.paid per paid invoice (the same set as in order), never two
// notifications with one id, failures only of attempts that happened, and
// per customer a chain of entitlement changes that ends at the final state.
func TestNotificationsProperty(t *testing.T) {
	t.Parallel()
	p := Billing(testPlans(t))
	ds := lifecycles(61, 30)
	inOrder, _ := deriveInMemory(p, records(t, ds), 25)
	wantPaid, wantFailed := ids(inOrder, notify.InvoicePaid), ids(inOrder, notify.InvoicePaymentFailed)
	if len(wantPaid) == 0 || len(wantFailed) == 0 {
		t.Fatalf("lifecycles derive %d invoice.paid and %d invoice.payment_failed: too few to test", len(wantPaid), len(wantFailed))
	}
	rng := rand.New(rand.NewPCG(16, 12))
	for round := range 20 {
		notes, states := deriveInMemory(p, records(t, domaintest.Redeliver(rng, ds)), 1+rng.IntN(50))
		seen := map[string]bool{}
		for _, n := range notes {
			if seen[n.ID] {
				t.Fatalf("round %d: notification %s (%s) derived twice", round, n.ID, n.Type)
			}
			seen[n.ID] = true
		}
		if got := ids(notes, notify.InvoicePaid); !slices.Equal(got, wantPaid) {
			t.Fatalf("round %d: %d invoice.paid, in order %d", round, len(got), len(wantPaid))
		}
		var paidInvoices int
		for _, s := range states {
			for _, inv := range s.Invoices {
				if inv.Status == "paid" {
					paidInvoices++
				}
			}
		}
		if paidInvoices != len(wantPaid) {
			t.Fatalf("round %d: %d paid invoices, %d invoice.paid", round, paidInvoices, len(wantPaid))
		}
		for _, id := range ids(notes, notify.InvoicePaymentFailed) {
			if _, ok := slices.BinarySearch(wantFailed, id); !ok {
				t.Fatalf("round %d: invoice.payment_failed %s of an attempt delivery in order does not report", round, id)
			}
		}
		last := map[domain.CustomerKey]notify.Entitlement{}
		for _, n := range notes {
			if n.Type != notify.EntitlementChanged {
				continue
			}
			var d notify.EntitlementData
			if err := json.Unmarshal(n.Data, &d); err != nil {
				t.Fatal(err)
			}
			k := domain.CustomerKey{Account: n.Account, ID: n.CustomerID}
			prev, ok := last[k]
			if !ok {
				prev = notify.Entitlement{Plan: domain.FreePlan}
			}
			if !sameEntitlement(prev, d.Before) || sameEntitlement(d.Before, d.After) {
				t.Fatalf("round %d: %s: entitlement change %+v → %+v does not follow %+v", round, k.ID, d.Before, d.After, prev)
			}
			last[k] = d.After
		}
		for k, s := range states {
			final, ok := last[k]
			if !ok {
				final = notify.Entitlement{Plan: domain.FreePlan}
			}
			if !sameEntitlement(final, entitlementOf(s)) {
				t.Fatalf("round %d: %s: last entitlement notified %+v, final state %+v", round, k.ID, final, entitlementOf(s))
			}
		}
	}
}

// TestOutboxSurvivesRebuild runs the live runner, then rebuilds: the outbox
// keeps every row at its position and gains none, so no receiver's cursor
// sees anything new; and one invoice.paid per paid invoice is stored.
func TestOutboxSurvivesRebuild(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	ds := lifecycles(7, 25)
	appendAll(t, log, domaintest.Redeliver(rand.New(rand.NewPCG(1, 2)), ds))
	stop := startRunner(t, newRunner(t, pool, log, p))
	waitCaughtUp(t, pool, log, p)
	feed := NewNotifications(pool)
	before := allNotifications(t, feed)
	var paid, stored int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.invoices WHERE status = 'paid'`).Scan(&paid); err != nil {
		t.Fatal(err)
	}
	if stored = len(ids(before, notify.InvoicePaid)); stored != paid || paid == 0 {
		t.Fatalf("%d invoice.paid notifications for %d paid invoices", stored, paid)
	}
	if len(ids(before, notify.DisputeOpened)) == 0 {
		t.Fatal("no charge.dispute.opened derived")
	}
	if err := Rebuild(ctx, pool, log, p, Options{Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, pool, log, p)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	after := allNotifications(t, feed)
	if !slices.EqualFunc(before, after, func(a, b notify.Notification) bool { return a.Position == b.Position && sameNotification(a, b) }) {
		t.Fatalf("the rebuild changed the outbox: %d notifications before, %d after", len(before), len(after))
	}
}

func allNotifications(t *testing.T, feed *Notifications) []notify.Notification {
	t.Helper()
	var all []notify.Notification
	for after := int64(0); ; {
		page, err := feed.After(context.Background(), after, 500)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return all
		}
		for _, n := range page {
			if n.Position <= after {
				t.Fatalf("position %d after %d", n.Position, after)
			}
			after = n.Position
		}
		all = append(all, page...)
	}
}

// TestNotificationsWaitHoldsNoPooledConnection: ten times as many long
// polls as their pool has connections wait with none of it acquired, and
// all wake when a runner on another pool (another replica) commits
// notifications.
func TestNotificationsWaitHoldsNoPooledConnection(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	pool := newPool(t, url)
	log := postgres.New(pool, testLogger(t), postgres.WithBatchSize(25), postgres.WithPollInterval(200*time.Millisecond))
	feedPool := newPoolSized(t, url, 2)
	feed := NewNotifications(feedPool)
	const polls = 20
	woke := make(chan int, polls)
	for range polls {
		go func() {
			page, err := feed.Wait(context.Background(), 0, 10, 20*time.Second)
			if err != nil {
				t.Error(err)
			}
			woke <- len(page)
		}()
	}
	// Once every poll waits and their first reads are done, the pool stays
	// free: five samples in a row, 100 ms apart, see no connection held. A
	// poll that held a connection while waiting would keep the pool's two
	// busy and never let five samples in a row pass. Under load the first
	// reads take a while, hence the deadline rather than a fixed sleep.
	settled := time.Now().Add(15 * time.Second)
	for free := 0; free < 5; time.Sleep(100 * time.Millisecond) {
		feed.mu.Lock()
		waiting := feed.waiting
		feed.mu.Unlock()
		held := feedPool.Stat().AcquiredConns()
		if waiting == polls && held == 0 {
			free++
			continue
		}
		free = 0
		if time.Now().After(settled) {
			t.Fatalf("%d of %d long polls waiting hold %d of their pool's %d connections", waiting, polls, held, feedPool.Config().MaxConns)
		}
	}
	p := Billing(testPlans(t))
	appendAll(t, log, lifecycles(3, 2))
	stop := startRunner(t, newRunner(t, pool, log, p))
	defer func() { _ = stop() }()
	deadline := time.After(15 * time.Second)
	for i := range polls {
		select {
		case n := <-woke:
			if n == 0 {
				t.Fatalf("poll %d answered empty", i)
			}
		case <-deadline:
			t.Fatalf("%d of %d long polls did not wake with the runner's notifications", polls-i, polls)
		}
	}
}
