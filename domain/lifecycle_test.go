package domain_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// decodeAll decodes every delivery, by event id.
func decodeAll(t *testing.T, ds []domaintest.Delivery, plans domain.Plans) map[string]*domain.Fact {
	t.Helper()
	facts := map[string]*domain.Fact{}
	for _, d := range ds {
		env, err := domain.ParseEnvelope(d.Payload)
		if err != nil {
			t.Fatalf("%s: ParseEnvelope: %v", d.EventID, err)
		}
		if facts[d.EventID], err = domain.Decode(env, d.Payload, plans); err != nil {
			t.Fatal(err)
		}
	}
	domaintest.ResolveInvoicePayments(slices.Collect(maps.Values(facts)))
	return facts
}

// stripeFinal is Stripe's own final state of every subscription: the
// snapshot of the last change Stripe made to it (Delivery.Seq).
func stripeFinal(ds []domaintest.Delivery, facts map[string]*domain.Fact) map[string]domain.Subscription {
	final, seq := map[string]domain.Subscription{}, map[string]int{}
	for _, d := range ds {
		f := facts[d.EventID]
		if f == nil || f.Subscription == nil {
			continue
		}
		if s, ok := seq[f.Subscription.ID]; !ok || d.Seq > s {
			final[f.Subscription.ID], seq[f.Subscription.ID] = *f.Subscription, d.Seq
		}
	}
	return final
}

// checkFinal fails unless every subscription of states is Stripe's final snapshot of it.
func checkFinal(t *testing.T, what string, states map[domain.CustomerKey]*domain.CustomerState, final map[string]domain.Subscription) {
	t.Helper()
	seen := 0
	for key, st := range states {
		for id, sub := range st.Subscriptions {
			seen++
			sub.Snapshots = domain.SubscriptionSnapshots{}
			if want := final[id]; !reflect.DeepEqual(sub, want) {
				t.Fatalf("%s: customer %v: subscription %s is %s (event %s, period end %v); Stripe's final snapshot is %s (event %s, period end %v)",
					what, key, id, sub.Status, sub.LastEventID, sub.CurrentPeriodEnd, want.Status, want.LastEventID, want.CurrentPeriodEnd)
			}
		}
	}
	if seen != len(final) {
		t.Fatalf("%s: %d subscriptions folded, Stripe has %d", what, seen, len(final))
	}
}

// classChecks are what each lifecycle class must end in, beyond matching
// Stripe's final snapshots.
var classChecks = map[domaintest.Class]func(platform, connected *domain.CustomerState) error{
	domaintest.ClassTrialEndedEarly: func(c, _ *domain.CustomerState) error {
		sub := only(c)
		return want(sub.Status == "unpaid" && !c.Entitled && c.Plan == domain.FreePlan &&
			sub.TrialEnd != nil && sub.TrialEnd.Before(sub.LastEventCreated), "unpaid after the trial ended early, not entitled")
	},
	domaintest.ClassIntervalDowngrade: func(c, _ *domain.CustomerState) error {
		sub := only(c)
		return want(sub.Status == "unpaid" && sub.PriceID == "price_pro_monthly" && sub.CollectionMethod == "send_invoice" &&
			!c.Entitled && c.Plan == domain.FreePlan, "unpaid on the monthly price, paid by invoice, after the downgrade, not entitled")
	},
	domaintest.ClassItemRemoved: func(c, _ *domain.CustomerState) error {
		sub := only(c)
		return want(sub.Status == "active" && sub.CancelAtPeriodEnd && sub.CanceledAt != nil && sub.Items == "price_pro_monthly*1" &&
			sub.CurrentPeriodEnd.Sub(*sub.CurrentPeriodStart) < 32*24*time.Hour && c.Entitled && c.Plan == "pro",
			"active on the monthly period, canceling at its end")
	},
	domaintest.ClassSameSecondRecovery: func(c, _ *domain.CustomerState) error {
		sub := only(c)
		return want(sub.Status == "active" && c.Entitled && c.Plan == "team", "active again, entitled")
	},
	domaintest.ClassMultiItem: func(c, _ *domain.CustomerState) error {
		sub := only(c)
		return want(sub.Plan == "pro" && sub.PriceID == "price_pro_monthly" && sub.Items == "price_basic_monthly*1 price_pro_monthly*1" &&
			c.Entitled && c.Plan == "pro", "the pro plan of the mapped item LEDGER_PLANS lists first")
	},
	domaintest.ClassConnectShared: func(p, c *domain.CustomerState) error {
		if c == nil {
			return fmt.Errorf("no customer on %s", domaintest.ConnectAccount)
		}
		return want(p.Entitled && p.Plan == "pro" && len(p.Subscriptions) == 1 && p.Customer.Email != c.Customer.Email &&
			!c.Entitled && c.Plan == domain.FreePlan && len(c.Subscriptions) == 1 && only(c).Deleted,
			"two customers: entitled to pro on the platform, canceled on the connected account")
	},
}

func only(s *domain.CustomerState) domain.Subscription {
	for _, sub := range s.Subscriptions {
		if len(s.Subscriptions) == 1 {
			return sub
		}
	}
	return domain.Subscription{}
}

// TestLifecycleClasses folds every lifecycle class in every API version, in
// order and in many shuffled orders with duplicates (some folds re-loading
// their state from JSON between batches, as a projection does), and checks
// each result against Stripe's own final state.
func TestLifecycleClasses(t *testing.T) {
	t.Parallel()
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		t.Fatal(err)
	}
	for _, version := range domaintest.APIVersions {
		for i, class := range domaintest.Classes {
			t.Run(version+"/"+string(class), func(t *testing.T) {
				t.Parallel()
				rng := rand.New(rand.NewPCG(uint64(i), 9))
				ds := domaintest.Life(rng, class, version)
				facts := decodeAll(t, ds, plans)
				final := stripeFinal(ds, facts)
				inOrder := fold(t, rng, ds, facts, false)
				checkFinal(t, "in order", inOrder, final)
				var platform, connected *domain.CustomerState
				for key, st := range inOrder {
					if key.Account == "" {
						platform = st
					} else {
						connected = st
					}
				}
				if err := classChecks[class](platform, connected); err != nil {
					t.Fatalf("in order: %v", err)
				}
				for n := range 25 {
					got := fold(t, rng, domaintest.Redeliver(rng, ds), facts, n%3 == 0)
					if !reflect.DeepEqual(got, inOrder) {
						checkFinal(t, fmt.Sprintf("order %d", n), got, final)
						t.Fatalf("order %d: the fold differs from the in-order one:\n%s\nvs\n%s", n, dump(t, got), dump(t, inOrder))
					}
				}
			})
		}
	}
}

// TestFoldConvergesToStripe folds many mixed lifecycles (every class among
// them, every API version) delivered in shuffled orders with duplicates and
// checks every subscription against Stripe's own final snapshot.
func TestFoldConvergesToStripe(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(11, 11))
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		t.Fatal(err)
	}
	ds := domaintest.Lifecycles(rng, 40)
	facts := decodeAll(t, ds, plans)
	final := stripeFinal(ds, facts)
	checkFinal(t, "in order", fold(t, rng, ds, facts, false), final)
	for n := range 10 {
		checkFinal(t, fmt.Sprintf("order %d", n), fold(t, rng, domaintest.Redeliver(rng, ds), facts, n%4 == 0), final)
	}
}

// TestSameSecondSnapshots checks the chain rules of DESIGN §4 on hand-made
// snapshots of one second, each set folded in every order with duplicates.
func TestSameSecondSnapshots(t *testing.T) {
	t.Parallel()
	end := int64(t0 + 30*86400)
	snap := func(id string, created int64, status string, prev map[string]string) domain.Fact {
		f := subFact(id, created, status, end, "pro")
		f.Subscription.Previous = prev
		return f
	}
	tests := []struct {
		name   string
		facts  []domain.Fact
		winner string
	}{
		{
			name: "the chain beats status rank: past_due, then active again",
			facts: []domain.Fact{
				snap("evt_1", t0, "past_due", map[string]string{"status": "active"}),
				snap("evt_2", t0, "active", map[string]string{"status": "past_due"}),
				snap("evt_0", t0-86400, "active", nil),
			},
			winner: "evt_2",
		},
		{
			name: "the same pair after a past_due second: active, then past_due",
			facts: []domain.Fact{
				snap("evt_1", t0, "past_due", map[string]string{"status": "active"}),
				snap("evt_2", t0, "active", map[string]string{"status": "past_due"}),
				snap("evt_0", t0-86400, "past_due", nil),
			},
			winner: "evt_1",
		},
		{
			name: "created, then two changes in one second",
			facts: []domain.Fact{
				snap("evt_c", t0, "incomplete", nil),
				snap("evt_a", t0, "active", map[string]string{"status": "incomplete"}),
				snap("evt_b", t0, "active", map[string]string{"cancel_at_period_end": "false"}),
			},
			winner: "evt_b",
		},
		{
			name: "no chain: status rank, then event id",
			facts: []domain.Fact{
				snap("evt_2", t0, "active", nil),
				snap("evt_1", t0, "past_due", nil),
				snap("evt_3", t0, "past_due", nil),
			},
			winner: "evt_3",
		},
		{
			name: "a later second wins whatever its period",
			facts: []domain.Fact{
				snap("evt_1", t0, "trialing", nil),
				func() domain.Fact {
					f := snap("evt_2", t0+1, "active", map[string]string{"status": "trialing"})
					f.Subscription.CurrentPeriodEnd = ts(t0 + 86400)
					return f
				}(),
			},
			winner: "evt_2",
		},
		{
			name: "deletion is terminal, even against a same-second update",
			facts: []domain.Fact{
				deleted(snap("evt_1", t0, "active", nil)),
				snap("evt_2", t0, "active", map[string]string{"status": "canceled"}),
				snap("evt_3", t0+5, "active", nil),
			},
			winner: "evt_1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := foldAllOrders(t, tt.facts)
			if got := st.Subscriptions["sub_1"].LastEventID; got != tt.winner {
				t.Errorf("current snapshot %s; want %s", got, tt.winner)
			}
		})
	}
}

// TestSameSecondOrderIsAFunctionOfTheSet folds random same-second sets
// whose previous_attributes make arbitrary chains, cycles included, with
// snapshots of the second before and after, in every order: the current
// snapshot must not depend on the order.
func TestSameSecondOrderIsAFunctionOfTheSet(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 5))
	statuses := []string{"incomplete", "trialing", "active", "past_due", "unpaid"}
	for n := range 60 {
		var facts []domain.Fact
		for i := range 2 + rng.IntN(4) {
			created := int64(t0)
			if rng.IntN(4) == 0 {
				created -= 1 + rng.Int64N(2) // the second before, or the one before that
			}
			f := subFact(fmt.Sprintf("evt_%d_%d", n, i), created, statuses[rng.IntN(len(statuses))], t0+int64(rng.IntN(3))*86400, "pro")
			if rng.IntN(3) > 0 {
				f.Subscription.Previous = map[string]string{"status": statuses[rng.IntN(len(statuses))]}
			}
			if rng.IntN(8) == 0 {
				f = deleted(f)
			}
			facts = append(facts, f)
		}
		foldAllOrders(t, facts)
	}
}
