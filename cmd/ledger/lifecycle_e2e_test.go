package main

import (
	"math/rand/v2"
	"net/http"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestEndToEndLifecycleClasses posts every lifecycle class in every API
// version, shuffled and re-delivered, to the real server, and checks the read
// API against Stripe's own final state, then the outcomes DESIGN §4 names.
func TestEndToEndLifecycleClasses(t *testing.T) {
	t.Parallel()
	base := startService(t, env("DATABASE_URL", pgtest.NewDatabase(t), "STRIPE_WEBHOOK_SECRET", e2eSecret,
		"LEDGER_API_TOKEN", e2eToken, "LEDGER_PLANS", domaintest.Plans))
	rng := rand.New(rand.NewPCG(13, 17))
	var all []domaintest.Delivery
	classOf := map[domain.CustomerKey]domaintest.Class{}
	for _, version := range domaintest.APIVersions {
		for _, class := range domaintest.Classes {
			ds := domaintest.Life(rng, class, version)
			for _, d := range ds {
				if d.CustomerID != "" {
					classOf[domain.CustomerKey{Account: d.Account, ID: d.CustomerID}] = class
				}
			}
			all = append(all, ds...)
		}
	}
	for _, d := range domaintest.Redeliver(rng, all) {
		deliver(t, base, d.Payload)
	}
	waitCaughtUp(t, base)

	plans, _ := domain.ParsePlans(domaintest.Plans)
	final, err := domaintest.StripeFinal(all, plans)
	if err != nil {
		t.Fatal(err)
	}
	requireCustomers(t, base, final)

	for key, class := range classOf {
		var c customerView
		if status := getV1(t, base+"/v1/customers/"+key.ID+"?account="+key.Account, &c); status != http.StatusOK || len(c.Subscriptions) != 1 {
			t.Fatalf("GET customer %v (%s): %d, %d subscriptions; want 200 and one", key, class, status, len(c.Subscriptions))
		}
		sub := c.Subscriptions[0]
		var ok bool
		switch class {
		case domaintest.ClassTrialEndedEarly:
			ok = !c.Entitled && c.Plan == domain.FreePlan && sub.Status == "unpaid" && sub.PriceID == "price_pro_monthly" &&
				sub.CollectionMethod == "charge_automatically"
		case domaintest.ClassIntervalDowngrade:
			ok = !c.Entitled && c.Plan == domain.FreePlan && sub.Status == "unpaid" && sub.PriceID == "price_pro_monthly" &&
				sub.CollectionMethod == "send_invoice"
		case domaintest.ClassItemRemoved:
			ok = c.Entitled && sub.Status == "active" && sub.CancelAtPeriodEnd && sub.CanceledAt != nil
		case domaintest.ClassSameSecondRecovery:
			ok = c.Entitled && c.Plan == "team" && sub.Status == "active"
		case domaintest.ClassMultiItem:
			ok = c.Entitled && c.Plan == "pro" && sub.PriceID == "price_pro_monthly"
		case domaintest.ClassConnectShared:
			if key.Account == "" {
				ok = c.Entitled && c.Plan == "pro" && sub.Status == "active"
			} else {
				ok = !c.Entitled && c.Plan == domain.FreePlan && sub.Status == "canceled"
			}
		}
		if !ok {
			t.Errorf("customer %v (%s): entitled=%v plan=%s, subscription %+v", key, class, c.Entitled, c.Plan, sub)
		}
	}
}
