package domain

import "strings"

// FreePlan is the plan of a customer without an entitled subscription.
const FreePlan = "free"

// Plans maps Stripe price ids to plan names (LEDGER_PLANS), in the order
// LEDGER_PLANS lists them: that order picks the plan of a subscription with
// several mapped items. The nil Plans maps nothing.
type Plans []PlanPrice

// PlanPrice is one LEDGER_PLANS entry: a price and the plan it gives.
type PlanPrice struct {
	PriceID string
	Plan    string
}

// ParsePlans parses LEDGER_PLANS, a comma-separated list of price_id=plan
// entries such as "price_abc=pro,price_def=team". Spaces around entries, ids
// and names are ignored; an empty string is an empty mapping. An entry without
// "=", with an empty side, or repeating a price id fails with an EINVALID *Error.
func ParsePlans(s string) (Plans, error) {
	plans := Plans{}
	if strings.TrimSpace(s) == "" {
		return plans, nil
	}
	for entry := range strings.SplitSeq(s, ",") {
		priceID, plan, ok := strings.Cut(entry, "=")
		priceID, plan = strings.TrimSpace(priceID), strings.TrimSpace(plan)
		switch {
		case !ok || priceID == "" || plan == "":
			return nil, Errorf(EINVALID, "LEDGER_PLANS: entry %q is not price_id=plan", strings.TrimSpace(entry))
		case plans.rank(priceID) >= 0:
			return nil, Errorf(EINVALID, "LEDGER_PLANS: price %s is mapped twice", priceID)
		}
		plans = append(plans, PlanPrice{PriceID: priceID, Plan: plan})
	}
	return plans, nil
}

// rank is the position of priceID in p, -1 when it is not mapped. A linear
// scan: LEDGER_PLANS lists a handful of prices.
func (p Plans) rank(priceID string) int {
	for i, e := range p {
		if e.PriceID == priceID {
			return i
		}
	}
	return -1
}

// Plan names the plan a price gives (DESIGN §4): the mapped name, else the
// price's lookup key, else the price id.
func (p Plans) Plan(priceID, lookupKey string) string {
	switch i := p.rank(priceID); {
	case i >= 0:
		return p[i].Plan
	case lookupKey != "":
		return lookupKey
	default:
		return priceID
	}
}
