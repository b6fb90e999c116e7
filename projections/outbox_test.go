package projections

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/logtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// deriveInMemory folds recs in chunks of size (0: one chunk) through
// foldCustomer into states kept in memory, as fold does batch by batch (an
// invoice payment once an invoice fact links its invoice), a late fact's
// history being the customer's facts of the chunks so far; like the outbox,
// it keeps the first notification of each id.
func deriveInMemory(t testing.TB, p Projection, recs []eventlog.Record, size int) ([]notify.Notification,
	map[domain.CustomerKey]*domain.CustomerState, map[domain.CustomerKey]timeline) {
	t.Helper()
	states, lines, seen := map[domain.CustomerKey]*domain.CustomerState{}, map[domain.CustomerKey]timeline{}, map[domain.CustomerKey][]domain.Fact{}
	var notes []notify.Notification
	if size == 0 {
		size = len(recs)
	}
	stored := map[string]bool{}
	owners := map[string]domain.CustomerKey{} // invoice → customer, as links record it
	var pending []domain.Fact                 // invoice payments whose invoice is not linked yet
	for chunk := range slices.Chunk(recs, size) {
		b := p.decode(chunk)
		for _, facts := range b.facts {
			for _, f := range facts {
				if f.Invoice != nil {
					owners[f.Account+"/"+f.Invoice.ID] = f.Key()
				}
			}
		}
		for _, pp := range b.payments {
			pending = append(pending, pp.fact)
		}
		pending = slices.DeleteFunc(pending, func(f domain.Fact) bool {
			k, ok := owners[f.Account+"/"+f.InvoicePayment.InvoiceID]
			if ok {
				f.CustomerID = k.ID
				b.facts[k] = append(b.facts[k], f)
			}
			return ok
		})
		types := b.eventTypes()
		var derived []notify.Notification
		for _, k := range b.customers() {
			if states[k] == nil {
				states[k] = &domain.CustomerState{}
			}
			seen[k] = append(seen[k], b.facts[k]...)
			var err error
			lines[k], err = foldCustomer(context.Background(), &derived, states[k], lines[k], b.facts[k], types,
				func(context.Context) ([]domain.Fact, error) { return seen[k], nil })
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range derived {
			if !stored[n.ID] {
				stored[n.ID] = true
				notes = append(notes, n)
			}
		}
	}
	return notes, states, lines
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
// size derives the same per-event notifications (subscription status,
// invoice paid and failed, dispute opened), by id; entitlement changes
// follow the timeline instead (TestEntitlementTimelineAnyOrder).
func TestNotificationsBatchIndependent(t *testing.T) {
	t.Parallel()
	p := Billing(testPlans(t))
	recs := records(t, lifecycles(16, 40))
	perEvent := func(notes []notify.Notification) []notify.Notification {
		return slices.DeleteFunc(notes, func(n notify.Notification) bool { return n.Type == notify.EntitlementChanged })
	}
	all, _, _ := deriveInMemory(t, p, recs, 1)
	want := perEvent(all)
	if len(want) == 0 {
		t.Fatal("no notifications derived from 40 lifecycles")
	}
	for _, size := range []int{7, 100, 0} {
		got, _, _ := deriveInMemory(t, p, recs, size)
		if got = perEvent(got); !slices.EqualFunc(sortedByID(want), sortedByID(got), func(a, b notify.Notification) bool { return a.ID == b.ID }) {
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

// TestNotificationsProperty: permutations and duplicates of lifecycles, in
// batches of random sizes, give one invoice.paid per paid invoice (the same
// set as in order), failures only of attempts that happened, and every
// customer's entitlement timeline as Stripe's history has it, each of its
// transitions announced.
func TestNotificationsProperty(t *testing.T) {
	t.Parallel()
	p := Billing(testPlans(t))
	ds := lifecycles(61, 30)
	inOrder, _, _ := deriveInMemory(t, p, records(t, ds), 25)
	wantPaid, wantFailed := ids(inOrder, notify.InvoicePaid), ids(inOrder, notify.InvoicePaymentFailed)
	if len(wantPaid) == 0 || len(wantFailed) == 0 {
		t.Fatalf("lifecycles derive %d invoice.paid and %d invoice.payment_failed: too few to test", len(wantPaid), len(wantFailed))
	}
	rng := rand.New(rand.NewPCG(16, 12))
	for round := range 20 {
		notes, states, lines := deriveInMemory(t, p, records(t, domaintest.Redeliver(rng, ds)), 1+rng.IntN(50))
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
		checkTimelines(t, p, ds, notes, lines, fmt.Sprintf("round %d", round))
	}
}

// checkTimelines fails unless every customer's entitlement transitions in
// Stripe's history (domaintest.Timeline, computed apart from the projection)
// are among notes, each identified by its after-state and occurrence, and
// states (folded from ds in any order) hold those transitions; it returns
// how many entitlement notifications notes hold beyond them (announcements
// made before a late event, of states that did not last).
func checkTimelines(t *testing.T, p Projection, ds []domaintest.Delivery, notes []notify.Notification,
	lines map[domain.CustomerKey]timeline, what string) (extra int) {
	t.Helper()
	announced := map[string]bool{}
	for _, n := range notes {
		if n.Type == notify.EntitlementChanged {
			announced[n.ID] = true
		}
	}
	real := 0
	for k, facts := range domaintest.CustomerFacts(ds, p.Plans) {
		want := domaintest.Timeline(facts)
		wantIDs := transitionIDs(k, want)
		got := lines[k]
		if len(got) != len(want) {
			t.Fatalf("%s: %s: timeline of %d transitions, Stripe's history has %d", what, k.ID, len(got), len(want))
		}
		for i, tr := range want {
			if !got[i].At.Equal(tr.At) || !got[i].Before.Equal(tr.Before) || !got[i].After.Equal(tr.After) {
				t.Fatalf("%s: %s: transition %d is %+v, Stripe's history %+v", what, k.ID, i, got[i], tr)
			}
			if !announced[wantIDs[i]] {
				t.Fatalf("%s: %s: transition %d (%+v → %+v at %s) was never announced", what, k.ID, i, tr.Before, tr.After, tr.At)
			}
			real++
		}
	}
	return len(announced) - real
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
	if _, err := Rebuild(ctx, pool, log, p, Options{Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, pool, log, p)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	after := allNotifications(t, feed)
	for _, n := range after[min(len(before), len(after)):] {
		t.Logf("DEBUG added %s %s %s %s %s", n.Type, n.CustomerID, n.OccurredAt, n.Data, n.EventIDs)
		for _, m := range before {
			if m.CustomerID == n.CustomerID && m.Type == n.Type {
				t.Logf("DEBUG   had %s %s %s", m.OccurredAt, m.Data, m.EventIDs)
			}
		}
	}
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

// TestEntitlementTimelineAnyOrder: in order, shuffled with duplicates, and
// newest first, one event per batch or in random batches, the stored
// timelines are Stripe's history and every transition of it is announced;
// in one batch, every order announces exactly those transitions, the same
// set of ids. One event at a time, what is announced beyond them are states
// that held only while an older event was missing (counted, not zero).
func TestEntitlementTimelineAnyOrder(t *testing.T) {
	t.Parallel()
	p := Billing(testPlans(t))
	ds := lifecycles(5, 12)
	rng := rand.New(rand.NewPCG(5, 5))
	reversed := slices.Clone(ds)
	slices.Reverse(reversed)
	orders := map[string][]domaintest.Delivery{"in order": ds, "shuffled": domaintest.Redeliver(rng, ds), "newest first": reversed}
	var whole []string
	for name, order := range orders {
		recs := records(t, order)
		for _, size := range []int{0, 1, 1 + rng.IntN(40)} {
			notes, _, lines := deriveInMemory(t, p, recs, size)
			extra := checkTimelines(t, p, ds, notes, lines, fmt.Sprintf("%s in batches of %d", name, size))
			t.Logf("%s in batches of %d: %d entitlement changes announced beyond the timeline's", name, size, extra)
			if size == 0 {
				if extra != 0 {
					t.Fatalf("%s in one batch announced %d entitlement changes that are not transitions of the timeline", name, extra)
				}
				got := ids(notes, notify.EntitlementChanged)
				if whole == nil {
					whole = got
				} else if !slices.Equal(whole, got) {
					t.Fatalf("%s in one batch announced %d entitlement changes, another order %d, or other ids", name, len(got), len(whole))
				}
			}
		}
	}
}

// TestLateTransitionAnnouncedOnce: through the fold and the outbox table,
// a customer's events in order but for those of one renewal invoice, which
// arrive last: its transition (access until the end of the period it paid
// for) is announced once, when they arrive, and the next renewal's, whose
// before-state they change, not again; the same batch folded again (a
// duplicate delivery) adds nothing, nor does half the log folded again.
func TestLateTransitionAnnouncedOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := fastPool(t)
	p := Billing(testPlans(t))
	ds := lifecycles(9, 20)
	// An invoice without whose events the timeline has one transition fewer.
	invoiceOf := func(f domain.Fact) string { return factInvoice(f) }
	var key domain.CustomerKey
	var invoice string
	customers := domaintest.CustomerFacts(ds, p.Plans)
	for _, k := range slices.SortedFunc(maps.Keys(customers), domain.CustomerKey.Compare) {
		facts := customers[k]
		full := transitionIDs(k, domaintest.Timeline(facts))
		for _, f := range facts {
			id := invoiceOf(f)
			if id == "" || invoice != "" {
				continue
			}
			without := transitionIDs(k, domaintest.Timeline(slices.DeleteFunc(slices.Clone(facts), func(g domain.Fact) bool { return invoiceOf(g) == id })))
			if len(without) == len(full)-1 && len(without) > 2 && !slices.Equal(without, full[:len(without)]) &&
				!slices.ContainsFunc(without, func(id string) bool { return !slices.Contains(full, id) }) {
				key, invoice = k, id // a transition in the middle, the others as they were
			}
		}
	}
	if invoice == "" {
		t.Fatal("no invoice whose absence removes one transition")
	}
	var first, late []domaintest.Delivery
	for _, d := range ds {
		if f, err := domain.ParseFact(d.Payload, p.Plans); err == nil && f != nil && invoiceOf(*f) == invoice {
			late = append(late, d)
		} else {
			first = append(first, d)
		}
	}
	schema := scratch(t, pool, p)
	recs := records(t, append(first, late...))
	p = p.reading(streamsOf(recs))
	fold1 := func(recs []eventlog.Record) {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fold(ctx, tx, p, schema, p.decode(recs)) }); err != nil {
			t.Fatal(err)
		}
	}
	announced := func() (n int) {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM notifications WHERE customer_id = $1 AND type = $2`, key.ID, notify.EntitlementChanged).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for part := range slices.Chunk(recs[:len(first)], 50) {
		fold1(part)
	}
	before := announced()
	fold1(recs[len(first):])
	if n := announced() - before; n != 1 {
		t.Fatalf("the late events of %s added %d entitlement changes, want the one of their transition", invoice, n)
	}
	fold1(recs[len(first):])
	fold1(recs[:len(recs)/2])
	if n := announced() - before; n != 1 {
		t.Fatalf("folded again, the log added %d entitlement changes more", n-1)
	}
	var rows []string
	r, err := pool.Query(ctx, `SELECT occurred_at::text || ' ' || data::text FROM notifications WHERE customer_id = $1 AND type = $2 ORDER BY position`,
		key.ID, notify.EntitlementChanged)
	if err == nil {
		rows, err = pgx.CollectRows(r, pgx.RowTo[string])
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s, %d late events of %s:\n%s", key.ID, len(late), invoice, strings.Join(rows, "\n"))
}

// transitionIDs are the notification ids of the transitions of k's timeline.
func transitionIDs(k domain.CustomerKey, tl []domaintest.Transition) []string {
	var ids []string
	for i, tr := range tl {
		occurrence := 0
		for _, prev := range tl[:i] {
			if prev.After.Equal(tr.After) {
				occurrence++
			}
		}
		ids = append(ids, transition{At: tr.At, Before: tr.Before, After: tr.After, Occurrence: occurrence}.note(k.Account, k.ID, nil).ID)
	}
	return ids
}

// TestRebuildAnnouncesNothingNew: once a real receiver has every
// notification the live runner derived from a shuffled, duplicated corpus,
// a blue/green rebuild adds no row to the outbox and reports 0, and the
// receiver gets nothing new: through the COPY fill, and through its
// event-by-event fallback (a value PostgreSQL refuses in the fill).
func TestRebuildAnnouncesNothingNew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	appendAll(t, log, domaintest.Redeliver(rand.New(rand.NewPCG(31, 31)), lifecycles(31, 20)))
	stopRunner := startRunner(t, newRunner(t, pool, log, p))
	defer func() { _ = stopRunner() }()
	rr := &recordingReceiver{}
	srv := httptest.NewServer(rr)
	defer srv.Close()
	defer runSender(newTestSender(t, pool, srv.URL))()
	feed := NewNotifications(pool)

	rebuild := func(path string) {
		t.Helper()
		waitCaughtUp(t, pool, log, p)
		outbox := allNotifications(t, feed)
		if len(ids(outbox, notify.EntitlementChanged)) == 0 || len(ids(outbox, notify.InvoicePaid)) == 0 {
			t.Fatalf("%s: the outbox holds %d notifications, too few kinds to test", path, len(outbox))
		}
		waitFor(t, "the receiver has every notification", func() bool { return rr.hasAll(outbox) })
		got := len(rr.received())
		var logs logtest.Buffer
		built, err := Rebuild(ctx, pool, log, p, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if fellBack := strings.Contains(logs.String(), "building the schema again event by event"); fellBack != (path == "event by event") {
			t.Fatalf("%s: the fill fell back to event by event: %v", path, fellBack)
		}
		if built.Notifications != 0 || !strings.Contains(logs.String(), "notifications_added=0") {
			t.Fatalf("%s: the rebuild added %d notifications; log:\n%s", path, built.Notifications, logs.String())
		}
		waitCaughtUp(t, pool, log, p)
		time.Sleep(500 * time.Millisecond) // what a new row would take to reach the receiver, several times over
		if after := allNotifications(t, feed); len(after) != len(outbox) {
			t.Fatalf("%s: the outbox held %d notifications, %d after the rebuild", path, len(outbox), len(after))
		}
		if n := len(rr.received()); n != got {
			t.Fatalf("%s: the receiver got %d notifications during the rebuild", path, n-got)
		}
	}
	rebuild("COPY")
	nul := subscriptionEvent("evt_nul_rebuild", "cus_nul_rebuild", "sub_nul_rebuild", "active", "price_pro_monthly", 1709251200, 1711929600)
	nul.Payload = slices.Concat(nul.Payload[:len(nul.Payload)-2], []byte(`,"previous_attributes":{"status":"past\u0000due"}}}`))
	if _, err := log.Append(ctx, nul); err != nil {
		t.Fatal(err)
	}
	rebuild("event by event")
}

// TestUpgradeFromEventIDsAnnouncesNoHistory: a build that replaces a live
// version older than timelineIDsSince, whose entitlement changes carried ids
// of their causing event, does not announce every customer's entitlement
// history again under timeline ids; paid invoices and disputes keep their
// ids and add nothing either.
func TestUpgradeFromEventIDsAnnouncesNoHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	old := p
	old.Version = 7 // the last with ids of the causing event: 4a21f76..9409154 built it
	appendAll(t, log, lifecycles(37, 12))
	stop := startRunner(t, newRunner(t, pool, log, old))
	waitCaughtUp(t, pool, log, old)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The old version's ids: other than the timeline's for the same changes.
	tag, err := pool.Exec(ctx, `UPDATE notifications SET id = id || '_by_event' WHERE type = $1`, notify.EntitlementChanged)
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() == 0 {
		t.Fatal("the old version announced no entitlement change: nothing to test")
	}
	var logs logtest.Buffer
	built, err := Rebuild(ctx, pool, log, p, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if built.Notifications != 0 {
		t.Fatalf("the upgrade from version %d announced %d notifications again (%d entitlement changes were announced before); log:\n%s",
			old.Version, built.Notifications, tag.RowsAffected(), logs.String())
	}
	if !strings.Contains(logs.String(), "entitlement changes not announced again") {
		t.Fatalf("the upgrade does not say it held entitlement changes back; log:\n%s", logs.String())
	}
}

// TestArrayLiteral: every list of event ids, however odd its strings, reads
// back from arrayLiteral as itself, the empty list included.
func TestArrayLiteral(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	for _, ids := range [][]string{{}, {"evt_1"}, {"evt_1", "evt_2"}, {`a"b`, `c\d`, "{e,f}", "NULL", "", " g ", "ü"}} {
		var got []string
		if err := pool.QueryRow(context.Background(), `SELECT $1::text::text[]`, arrayLiteral(ids)).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, ids) {
			t.Errorf("arrayLiteral(%q) read back as %q", ids, got)
		}
	}
}

// TestQueueNotificationsNewIDsOnce: an id already in the outbox keeps its
// row, and one that a batch's notes repeat is inserted once, as its first.
func TestQueueNotificationsNewIDsOnce(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	note := func(id, data string) notify.Notification {
		return notify.Notification{ID: id, Type: notify.InvoicePaid, CustomerID: "cus_1", EventIDs: []string{"evt_" + data},
			OccurredAt: time.Unix(1, 0).UTC(), Data: []byte(`{"n":"` + data + `"}`)}
	}
	insert := func(notes ...notify.Notification) int64 {
		var added int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var b pgx.Batch
			queueNotifications(&b, notes, &added)
			return tx.SendBatch(ctx, &b).Close()
		})
		if err != nil {
			t.Fatal(err)
		}
		return added
	}
	if added := insert(note("ntf_a", "1"), note("ntf_b", "2"), note("ntf_a", "3")); added != 2 {
		t.Errorf("first insert added %d, want 2", added)
	}
	if added := insert(note("ntf_b", "4"), note("ntf_c", "5")); added != 1 {
		t.Errorf("second insert added %d, want 1", added)
	}
	page, err := NewNotifications(pool).After(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range page {
		got = append(got, n.ID+" "+string(n.Data)+" "+strings.Join(n.EventIDs, ","))
	}
	want := []string{`ntf_a {"n": "1"} evt_1`, `ntf_b {"n": "2"} evt_2`, `ntf_c {"n": "5"} evt_5`}
	if !slices.Equal(got, want) {
		t.Errorf("outbox holds %q, want %q", got, want)
	}
}

// TestAnnounceFinalAsGoDerives: a build with no live version announces, in
// SQL, exactly the notifications that its final rows imply as Go derives
// them (transition.note, invoiceData, the dispute's data): every
// transition of every timeline, every paid invoice, every dispute of a
// customer, in that order of positions, over pages of a few rows; and
// notificationIDSQL hashes what notificationID hashes, whatever the strings.
func TestAnnounceFinalAsGoDerives(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _, built, _ := liveBuild(t, 43, 7)
	var want []notify.Notification
	for _, r := range listed(t, pool, customersTable, "ORDER BY account, customer_id") {
		for _, tr := range r.Timeline {
			want = append(want, tr.note(r.Account, r.ID, nil))
		}
	}
	for _, inv := range listed(t, pool, invoicesTable, "WHERE status = 'paid' ORDER BY account, invoice_id") {
		want = append(want, notify.Notification{ID: notificationID(notify.InvoicePaid, inv.Account, inv.CustomerID, inv.ID), Type: notify.InvoicePaid,
			Account: inv.Account, CustomerID: inv.CustomerID, EventIDs: []string{inv.LastEventID}, OccurredAt: inv.LastEventCreated.UTC(),
			Data: mustJSON(invoiceData(inv))})
	}
	for _, d := range listed(t, pool, disputesTable, "WHERE customer_id <> '' ORDER BY account, dispute_id") {
		want = append(want, notify.Notification{ID: notificationID(notify.DisputeOpened, d.Account, d.CustomerID, d.ID), Type: notify.DisputeOpened,
			Account: d.Account, CustomerID: d.CustomerID, EventIDs: []string{d.LastEventID}, OccurredAt: d.LastEventCreated.UTC(),
			Data: mustJSON(notify.DisputeData{DisputeID: d.ID, ChargeID: d.ChargeID, Status: d.Status, Amount: d.Amount, Currency: d.Currency})})
	}
	if len(ids(want, notify.EntitlementChanged)) <= 7 || len(ids(want, notify.InvoicePaid)) <= 7 || len(ids(want, notify.DisputeOpened)) == 0 {
		t.Fatalf("%d notifications, too few of some kind to test pages of 7", len(want))
	}
	// The stored data reads back as jsonb's text; Go's encoding goes through it too.
	canonical := func(n notify.Notification) notify.Notification {
		if err := pool.QueryRow(ctx, `SELECT $1::jsonb::text`, string(n.Data)).Scan(&n.Data); err != nil {
			t.Fatal(err)
		}
		return n
	}
	got := allNotifications(t, NewNotifications(pool))
	if built.Notifications != int64(len(want)) || len(got) != len(want) {
		t.Fatalf("the build announced %d notifications (%d stored), its rows imply %d", built.Notifications, len(got), len(want))
	}
	for i := range want {
		w := canonical(want[i])
		if !sameNotification(got[i], w) || got[i].Account != w.Account || got[i].CustomerID != w.CustomerID {
			t.Fatalf("notification %d is\n%+v\n%s, its row implies\n%+v\n%s", i, got[i], got[i].Data, w, w.Data)
		}
	}

	for _, s := range [][4]string{{"a", "", "cus_1", "k#0"}, {"t", "acct_ü", `c"\x`, "{},'\\"}, {"", "", "", ""}} {
		var id string
		if err := pool.QueryRow(ctx, "SELECT "+notificationIDSQL("$1", "$2", "$3", "$4"), s[0], s[1], s[2], s[3]).Scan(&id); err != nil {
			t.Fatal(err)
		}
		if want := notificationID(s[0], s[1], s[2], s[3]); id != want {
			t.Fatalf("notificationIDSQL%q = %s, notificationID %s", s, id, want)
		}
	}
}

// TestAnnounceOnAPoolOfOneConnection: announce runs two pages at once, the
// second holding its transaction until the first has committed, yet a
// builder whose pool has one connection announces every notification of
// a build again, page after page, instead of waiting forever for the
// connection the second page holds.
func TestAnnounceOnAPoolOfOneConnection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	pool := newPool(t, url)
	log := postgres.New(pool, testLogger(t))
	p := Billing(testPlans(t))
	appendAll(t, log, domaintest.Redeliver(rand.New(rand.NewPCG(47, 47)), lifecycles(47, 12)))
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &builder{pool: pool, log: log, p: p.building().reading(log), logger: testLogger(t), metrics: m, batchSize: 150}
	built, err := b.build(ctx, true)
	if err != nil || built.Notifications == 0 {
		t.Fatalf("build: %+v, %v", built, err)
	}
	var schema string
	if err := pool.QueryRow(ctx, `SELECT schema_name FROM projection_checkpoints WHERE name = $1`, p.Name).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	for round := range 10 {
		if _, err := pool.Exec(ctx, `DELETE FROM notifications`); err != nil {
			t.Fatal(err)
		}
		one := &builder{pool: newPoolSized(t, url, 1), log: log, p: p.building().reading(log), logger: testLogger(t), metrics: m, announced: 1}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := one.announceFinal(ctx, schema, 0)
		cancel()
		if err != nil || one.added != built.Notifications {
			t.Fatalf("round %d: announce on a pool of one added %d notifications, %v; the build %d", round, one.added, err, built.Notifications)
		}
	}
}

// TestAnnounceReadsOnlyItsPage: the plans of announce's statements (announceSQL)
// read one page of the table and probe the outbox's id index for each row,
// with 20,000 invoices and notifications stored: the plan, under
// announceDerive's settings, of a page between two bounds and of the last
// page, the plan of the insert from the temporary table, which has no
// statistics. Before,
// each page scanned the whole table and hashed the whole outbox (a 1M
// build's announce cost 27 µs of backend CPU a notification).
func TestAnnounceReadsOnlyItsPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newPool(t, pgtest.NewDatabase(t))
	schema := Billing(testPlans(t)).newSchemaName()
	if _, err := pool.Exec(ctx, createSchemaSQL(schema)); err != nil {
		t.Fatal(err)
	}
	_, err := pool.Exec(ctx, fmt.Sprintf(`INSERT INTO %[1]s.invoices (account, invoice_id, customer_id, subscription_id, status, snapshot_status,
    amount_due, amount_paid, currency, attempt_count, last_event_id, last_event_created)
SELECT '', 'in_' || g, 'cus_' || g / 4, '', 'paid', 'paid', 100, 100, 'usd', 1, 'evt_' || g, now() FROM generate_series(1, 20000) g;
INSERT INTO notifications (id, position, type, account, customer_id, event_ids, occurred_at, data)
SELECT 'ntf_' || g, nextval('notifications_position_seq'), 'invoice.paid', '', 'cus_' || g, '{}', now(), '{}' FROM generate_series(1, 20000) g;
ANALYZE %[1]s.invoices; ANALYZE notifications`, ident(schema)))
	if err != nil {
		t.Fatal(err)
	}
	notes := `SELECT 'ntf_' || p.invoice_id AS id, p.account, p.customer_id,
       '{}'::text[] AS event_ids, p.last_event_created AS occurred_at, '{}'::jsonb AS data, p.account AS k1, p.invoice_id AS k2, 0::bigint AS k3
  FROM page p`
	fill, _, insert := announceSQL(invoicesTable, schema, "status = 'paid'", notes, false)
	lastFill, _, _ := announceSQL(invoicesTable, schema, "status = 'paid'", notes, true)
	// A page of 100 after in_5, and the last page, of the last 100.
	bound := func(order string) string {
		return queryStrings(t, pool, "SELECT invoice_id FROM "+ident(schema)+".invoices WHERE invoice_id > 'in_5' ORDER BY invoice_id "+order+" OFFSET 99 LIMIT 1")[0]
	}
	upper, lower := bound("ASC"), bound("DESC")
	// plan walks the nodes of the plan of explain, EXPLAIN (FORMAT JSON).
	plan := func(tx pgx.Tx, explain string, node func(map[string]any), args ...any) {
		var plans []map[string]any
		if err := tx.QueryRow(ctx, explain, args...).Scan(&plans); err != nil {
			t.Fatal(err)
		}
		var walk func(n map[string]any)
		walk = func(n map[string]any) {
			node(n)
			children, _ := n["Plans"].([]any)
			for _, c := range children {
				walk(c.(map[string]any))
			}
		}
		walk(plans[0]["Plan"].(map[string]any))
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, announceDerive+`;
PREPARE announce_fill (text, text, text, text, text) AS `+fill+`;
PREPARE announce_last (text, text, text) AS `+lastFill)
		if err != nil {
			return err
		}
		for _, execute := range []string{
			fmt.Sprintf(`announce_fill('', 'in_5', '%s', '', '%s')`, notify.InvoicePaid, upper),
			fmt.Sprintf(`announce_last('', '%s', '%s')`, lower, notify.InvoicePaid),
		} {
			var read float64 // rows of invoices read, kept or not
			plan(tx, `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE `+execute, func(n map[string]any) {
				if n["Relation Name"] == invoicesTable.name {
					removed, _ := n["Rows Removed by Filter"].(float64)
					read += n["Actual Rows"].(float64)*n["Actual Loops"].(float64) + removed
				}
			})
			if read > 100 {
				t.Errorf("%s: a page of 100 invoices read %.0f of them", execute, read)
			}
		}
		var scanned []string
		plan(tx, "EXPLAIN (FORMAT JSON) "+insert, func(n map[string]any) {
			if n["Node Type"] == "Seq Scan" {
				scanned = append(scanned, fmt.Sprint(n["Relation Name"]))
			}
		}, notify.InvoicePaid)
		if !slices.Equal(scanned, []string{"announce_page"}) {
			t.Errorf("the insert of a page scans %q whole, want only the page", scanned)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// liveBuild builds billing from the deliveries of 25 customers' lifecycles
// of seed, redelivered, announcing in pages of announced rows (0: the
// default), and makes it live: it returns the log's pool, the builder,
// what it built and the live schema.
func liveBuild(t *testing.T, seed uint64, announced int) (*pgxpool.Pool, *builder, Built, string) {
	t.Helper()
	ctx := context.Background()
	pool, log := newLog(t)
	p := Billing(testPlans(t))
	appendAll(t, log, domaintest.Redeliver(rand.New(rand.NewPCG(seed, seed)), lifecycles(seed, 25)))
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &builder{pool: pool, log: log, p: p.building().reading(log), logger: testLogger(t), metrics: m, batchSize: 150, announced: announced}
	built, err := b.build(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	var schema string
	if err := pool.QueryRow(ctx, `SELECT schema_name FROM projection_checkpoints WHERE name = $1`, p.Name).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	return pool, b, built, schema
}

// listed reads the rows of t that clause selects, through the readmodel views.
func listed[T any](t *testing.T, pool *pgxpool.Pool, tb table[T], clause string) []T {
	t.Helper()
	rows, err := tb.list(context.Background(), pool, "readmodel", clause)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// TestAnnounceAfterTheRunnersCommit: a build's announce and the live
// runner share the outbox. A runner's batch that rewrites a customer's
// timeline (a late fact cut it to its first transition, which it
// announces) and commits while announce's page waits for the
// notifications lock leaves that page announcing the timeline the runner
// left, as if it had run after it: not the transitions it cut, inserted
// after the runner's, which would leave the receiver's last word on the
// customer one the read model no longer holds.
func TestAnnounceAfterTheRunnersCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, b, _, schema := liveBuild(t, 53, 0)
	cut := listed(t, pool, customersTable, "WHERE jsonb_array_length(entitlement_timeline) >= 2 ORDER BY account, customer_id LIMIT 1")
	if len(cut) == 0 {
		t.Fatal("no customer has two transitions")
	}
	c := cut[0]
	if _, err := pool.Exec(ctx, `DELETE FROM notifications`); err != nil {
		t.Fatal(err)
	}

	runner, announced := announceUnderLock(t, pool, b, schema, 0)
	if _, err := runner.Exec(ctx, "UPDATE "+ident(schema)+`.customers SET entitlement_timeline = jsonb_build_array(entitlement_timeline->0)
 WHERE account = $1 AND customer_id = $2`, c.Account, c.ID); err != nil {
		t.Fatal(err)
	}
	var q pgx.Batch
	var added int64
	first := c.Timeline[0].note(c.Account, c.ID, []string{"evt_late"})
	queueNotifications(&q, []notify.Notification{first}, &added)
	if err := runner.SendBatch(ctx, &q).Close(); err != nil {
		t.Fatal(err)
	}
	if err := runner.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-announced; err != nil {
		t.Fatal(err)
	}
	got := queryStrings(t, pool, `SELECT id FROM notifications WHERE account = $1 AND customer_id = $2 ORDER BY position`, c.Account, c.ID)
	if !slices.Equal(got, []string{first.ID}) {
		t.Errorf("%s's notifications are %d (%v); want the runner's alone, of the one transition its timeline holds", c.ID, len(got), got)
	}
}

// TestAnnounceRowInsertedIntoALaterPage: announce's pages are bounded by
// keys taken before any is derived. A row the live runner inserts into a
// page's range before that page reads it leaves the page's last row (its
// upper bound, after which the next page starts) in the page all the same:
// a page of the next n rows would have dropped it, and no page announced it.
func TestAnnounceRowInsertedIntoALaterPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const page = 3
	pool, b, _, schema := liveBuild(t, 59, 0)
	customers := ident(schema) + ".customers"
	// Every row has transitions, so that each one lost shows.
	if _, err := pool.Exec(ctx, `DELETE FROM `+customers+` WHERE jsonb_array_length(entitlement_timeline) = 0; DELETE FROM notifications`); err != nil {
		t.Fatal(err)
	}
	keys := queryStrings(t, pool, `SELECT customer_id FROM `+customers+` ORDER BY account, customer_id`)
	accounts := queryStrings(t, pool, `SELECT account FROM `+customers+` ORDER BY account, customer_id`)
	if len(keys) <= 3*page {
		t.Fatalf("%d customers with transitions, want more than %d", len(keys), 3*page)
	}

	// Pages 0 and 1 (two run at once) derive theirs and wait for the lock
	// the runner holds; page 2 derives its own once page 0 has committed,
	// after the runner's insert of a row after its first.
	runner, announced := announceUnderLock(t, pool, b, schema, page)
	first, upper := keys[2*page], keys[3*page-1]
	inserted := first + "_inserted"
	var inside bool
	err := runner.QueryRow(ctx, `INSERT INTO `+customers+`
SELECT (jsonb_populate_record(NULL::`+customers+`, to_jsonb(c) || jsonb_build_object('customer_id', $3::text))).*
  FROM `+customers+` c WHERE account = $1 AND customer_id = $2
RETURNING (account, customer_id) > ($1, $2) AND (account, customer_id) < ($4, $5)`,
		accounts[2*page], first, inserted, accounts[3*page-1], upper).Scan(&inside)
	if err != nil {
		t.Fatal(err)
	}
	if !inside {
		t.Fatalf("%s does not sort between %s and %s", inserted, first, upper)
	}
	if err := runner.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-announced; err != nil {
		t.Fatal(err)
	}
	lost := queryStrings(t, pool, `SELECT customer_id FROM `+customers+` c
 WHERE jsonb_array_length(entitlement_timeline) <> (SELECT count(*) FROM notifications n WHERE n.account = c.account AND n.customer_id = c.customer_id)
 ORDER BY account, customer_id`)
	if len(lost) > 0 {
		t.Errorf("the transitions of %v were not all announced (%s is page 2's upper bound)", lost, upper)
	}
}

// announceUnderLock begins the runner's transaction, which takes the
// notifications lock, and returns it once announceTimelines of schema, in
// pages of announced rows (0: the default), waits for that lock; announced
// reports announce's end. The transaction is rolled back at the test's end
// unless committed.
func announceUnderLock(t *testing.T, pool *pgxpool.Pool, b *builder, schema string, announced int) (pgx.Tx, <-chan error) {
	t.Helper()
	ctx := context.Background()
	runner, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = runner.Rollback(ctx) })
	if _, err := runner.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(notificationLockClass)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		paged := &builder{pool: pool, log: b.log, p: b.p, logger: b.logger, metrics: b.metrics, announced: announced}
		done <- paged.announceTimelines(ctx, schema)
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var waiting int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return runner, done
		}
		if time.Now().After(deadline) {
			t.Fatal("announce never waited for the notifications lock")
		}
	}
}
