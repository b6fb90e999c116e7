package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// TestNotificationsFollowStripesHistory posts a realistic corpus (trials,
// renewals, plan changes, cancellations, failed payments, several customers
// and lifecycle classes), shuffled and re-delivered, to the real server
// pushing to a real receiver, and checks what the receiver got against
// expectations computed from the corpus alone: exactly one invoice.paid per
// invoice paid in Stripe's final state, and one entitlement_changed per
// transition of each customer's timeline (the fold of its facts sorted by
// created, compared at each second, domaintest.Timeline). A transition is
// its after-state and occurrence: with n announcements of an after-state and
// r transitions to it in the timeline, r <= n shows every one announced
// (the k-th is never announced without those before it), and what is
// announced beyond must be a state that the timeline of the events
// delivered so far had that many times at some delivery.
func TestNotificationsFollowStripesHistory(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	byID := map[string]notify.Notification{}
	twice := 0
	receiver := newNotifyReceiver(func(n notify.Notification) {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := byID[n.ID]; ok {
			twice++
		}
		byID[n.ID] = n
	})
	defer receiver.Close()
	base := startService(t, env("DATABASE_URL", pgtest.NewDatabase(t), "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_PLANS", domaintest.Plans, "LEDGER_SEAL_INTERVAL", "0", "LEDGER_NOTIFY_URL", receiver.URL, "LEDGER_NOTIFY_SECRET", "whsec_notify"))
	rng := rand.New(rand.NewPCG(41, 43))
	corpus := domaintest.Lifecycles(rng, 10)
	for _, class := range domaintest.Classes {
		corpus = append(corpus, domaintest.Life(rng, class, "")...)
	}
	delivered := domaintest.Redeliver(rng, corpus)
	for _, d := range delivered {
		deliver(t, base, d.Payload)
	}
	waitCaughtUp(t, base)

	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		t.Fatal(err)
	}
	final, err := domaintest.StripeFinal(corpus, plans)
	if err != nil {
		t.Fatal(err)
	}
	paid := map[string]bool{}
	for _, s := range final {
		for _, inv := range s.Invoices {
			if inv.Status == "paid" {
				paid[inv.Account+"/"+inv.ID] = true
			}
		}
	}
	facts := domaintest.CustomerFacts(delivered, plans) // in the order the ledger got them
	timelines, transitions := map[domain.CustomerKey][]domaintest.Transition{}, 0
	for k, fs := range facts {
		timelines[k] = domaintest.Timeline(fs)
		transitions += len(timelines[k])
	}
	if len(paid) == 0 || transitions == 0 {
		t.Fatalf("the corpus has %d paid invoices and %d entitlement transitions: nothing to test", len(paid), transitions)
	}

	received := func() (invoices map[string]int, entitlements map[domain.CustomerKey]map[string]int, n int) {
		mu.Lock()
		defer mu.Unlock()
		invoices, entitlements = map[string]int{}, map[domain.CustomerKey]map[string]int{}
		for _, note := range byID {
			switch note.Type {
			case notify.InvoicePaid:
				var d notify.InvoiceData
				if err := json.Unmarshal(note.Data, &d); err != nil {
					t.Fatal(err)
				}
				invoices[note.Account+"/"+d.InvoiceID]++
			case notify.EntitlementChanged:
				var d notify.EntitlementData
				if err := json.Unmarshal(note.Data, &d); err != nil {
					t.Fatal(err)
				}
				k := domain.CustomerKey{Account: note.Account, ID: note.CustomerID}
				if entitlements[k] == nil {
					entitlements[k] = map[string]int{}
				}
				entitlements[k][stateKey(d.After)]++
				n++
			}
		}
		return invoices, entitlements, n
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		invoices, _, n := received()
		if len(invoices) >= len(paid) && n >= transitions {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver got %d invoice.paid of %d and %d entitlement changes of %d transitions in 60 s", len(invoices), len(paid), n, transitions)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything more on its way
	invoices, entitlements, n := received()
	for id, count := range invoices {
		if !paid[id] || count != 1 {
			t.Errorf("invoice.paid of %s: %d, and paid in Stripe: %v", id, count, paid[id])
		}
	}
	if len(invoices) != len(paid) {
		t.Errorf("%d invoice.paid for %d paid invoices", len(invoices), len(paid))
	}
	stale := 0
	for k, tl := range timelines {
		want := map[string]int{}
		for _, tr := range tl {
			want[stateKey(tr.After)]++
		}
		for state, r := range want {
			if got := entitlements[k][state]; got < r {
				t.Errorf("%s: %d of the %d transitions to %s announced", k.ID, got, r, state)
			}
		}
		var most map[string]int // per after-state, the most transitions to it of any delivered prefix's timeline
		for state, got := range entitlements[k] {
			if got == want[state] {
				continue
			}
			if most == nil {
				most = map[string]int{}
				for i := range facts[k] {
					counts := map[string]int{}
					for _, tr := range domaintest.Timeline(facts[k][:i+1]) {
						counts[stateKey(tr.After)]++
					}
					for s, c := range counts {
						most[s] = max(most[s], c)
					}
				}
			}
			if got > most[state] {
				t.Errorf("%s: %d announcements of %s, which no timeline of the events delivered so far had more than %d times",
					k.ID, got, state, most[state])
			}
			stale += got - want[state]
		}
	}
	if twice != 0 {
		t.Errorf("the receiver got %d notifications twice", twice)
	}
	t.Logf("%d deliveries of %d events: %d invoice.paid, %d entitlement changes for %d transitions of %d customers' timelines (%d of states that did not last)",
		len(delivered), len(corpus), len(invoices), n, transitions, len(timelines), stale)
}

// stateKey names an entitlement as a receiver compares them.
func stateKey(e notify.Entitlement) string {
	until := "-"
	if e.AccessUntil != nil {
		until = e.AccessUntil.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("%t/%s/%s", e.Entitled, e.Plan, until)
}
