package domain

import "strings"

// FreePlan is the plan of a customer without an entitled subscription.
const FreePlan = "free"

// Plans maps Stripe price ids to plan names (LEDGER_PLANS). The nil Plans maps nothing.
type Plans map[string]string

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
		case plans[priceID] != "":
			return nil, Errorf(EINVALID, "LEDGER_PLANS: price %s is mapped twice", priceID)
		}
		plans[priceID] = plan
	}
	return plans, nil
}

// Plan names the plan a price gives (DESIGN §4): the mapped name, else the
// price's lookup key, else the price id.
func (p Plans) Plan(priceID, lookupKey string) string {
	switch {
	case p[priceID] != "":
		return p[priceID]
	case lookupKey != "":
		return lookupKey
	default:
		return priceID
	}
}
