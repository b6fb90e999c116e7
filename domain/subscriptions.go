package domain

import (
	"cmp"
	"slices"
	"strconv"
	"time"
)

// How a subscription's current snapshot is chosen (DESIGN §4):
//
//   - Snapshots are ordered by the event's created, never by their period:
//     Stripe moves periods backwards (a trial ended early, a yearly price
//     changed to a monthly one, a longer item removed).
//   - A deletion is terminal: once one is seen, only deletions count.
//   - Inside one second (Stripe's resolution), the change chain orders them:
//     an update whose previous_attributes equal another snapshot's values for
//     those attributes comes after it. The chain is read as a topological
//     order: next comes a snapshot no remaining one precedes; in a cycle (a
//     status that went there and back within the second) one that follows
//     the snapshot placed last, starting from the winner of the second
//     before; only then status rank, then event id.
//
// The fold keeps every snapshot of the latest second and of the second
// before (SubscriptionSnapshots), so the choice is a function of the set of
// snapshots seen, whatever order they arrived in.

// chainAttributes are the subscription attributes whose previous values the
// change chain compares; Stripe's other previous_attributes are ignored.
var chainAttributes = [...]string{
	"status", "items", "current_period_start", "current_period_end", "cancel_at_period_end", "cancel_at",
	"canceled_at", "ended_at", "trial_end", "collection_method", "latest_invoice",
}

// attribute is the snapshot's value of a chain attribute in canonical text:
// a time as Unix seconds ("" for none), a bool as true/false.
func (s *Subscription) attribute(name string) string {
	switch name {
	case "status":
		return s.Status
	case "items":
		return s.Items
	case "current_period_start":
		return unixText(s.CurrentPeriodStart)
	case "current_period_end":
		return unixText(s.CurrentPeriodEnd)
	case "cancel_at_period_end":
		return strconv.FormatBool(s.CancelAtPeriodEnd)
	case "cancel_at":
		return unixText(s.CancelAt)
	case "canceled_at":
		return unixText(s.CanceledAt)
	case "ended_at":
		return unixText(s.EndedAt)
	case "trial_end":
		return unixText(s.TrialEnd)
	case "collection_method":
		return s.CollectionMethod
	case "latest_invoice":
		return s.LatestInvoiceID
	}
	return ""
}

func unixText(t *time.Time) string {
	if t == nil {
		return ""
	}
	return strconv.FormatInt(t.Unix(), 10)
}

// follows reports whether b is a change made to a: b's previous values are
// a's values.
func follows(a, b *Subscription) bool {
	if len(b.Previous) == 0 || a.LastEventID == b.LastEventID {
		return false
	}
	for name, before := range b.Previous {
		if a.attribute(name) != before {
			return false
		}
	}
	return true
}

// applySubscription folds snapshot v into s.Subscriptions.
func (s *CustomerState) applySubscription(v Subscription) {
	v.Snapshots = SubscriptionSnapshots{}
	var latest, before []Subscription
	if old, ok := s.Subscriptions[v.ID]; ok {
		latest, before = old.Snapshots.Latest, old.Snapshots.Before
		if len(latest) == 0 {
			old.Snapshots = SubscriptionSnapshots{}
			latest = []Subscription{old}
		}
		if inSet(latest, v.LastEventID) || inSet(before, v.LastEventID) {
			return // a duplicate delivery
		}
	}
	latest, before = addSnapshot(latest, before, v)
	current := currentSnapshot(latest, before)
	if len(latest) > 1 {
		current.Snapshots.Latest = latest
	}
	current.Snapshots.Before = before
	s.Subscriptions[v.ID] = current
}

func inSet(set []Subscription, eventID string) bool {
	for i := range set {
		if set[i].LastEventID == eventID {
			return true
		}
	}
	return false
}

// addSnapshot adds v to the snapshots of the latest second and of the second
// before, or leaves them be when v is older than both or revives a deletion.
func addSnapshot(latest, before []Subscription, v Subscription) ([]Subscription, []Subscription) {
	if len(latest) == 0 {
		return []Subscription{v}, nil
	}
	head := &latest[0]
	switch {
	case head.Deleted && !v.Deleted:
		return latest, before
	case v.Deleted && !head.Deleted:
		return []Subscription{v}, nil
	}
	switch c := v.LastEventCreated.Compare(head.LastEventCreated); {
	case c > 0:
		if v.Deleted {
			return []Subscription{v}, nil
		}
		return []Subscription{v}, latest
	case c == 0:
		return insertSnapshot(latest, v), before
	case v.Deleted:
		return latest, before
	case len(before) == 0 || v.LastEventCreated.After(before[0].LastEventCreated):
		return latest, []Subscription{v}
	case v.LastEventCreated.Equal(before[0].LastEventCreated):
		return latest, insertSnapshot(before, v)
	}
	return latest, before
}

// insertSnapshot returns set with v inserted, sorted by event id. It never
// writes to set's array, which a copy of the state may share.
func insertSnapshot(set []Subscription, v Subscription) []Subscription {
	i, _ := slices.BinarySearchFunc(set, v.LastEventID, func(s Subscription, id string) int { return cmp.Compare(s.LastEventID, id) })
	return slices.Insert(slices.Clip(set), i, v)
}

// currentSnapshot is the last of latest in chain order, anchored on the
// current snapshot of before. Deletions of one second are ordered by event
// id alone.
func currentSnapshot(latest, before []Subscription) Subscription {
	if len(latest) == 1 {
		return latest[0]
	}
	if latest[0].Deleted {
		return latest[len(latest)-1]
	}
	var anchor *Subscription
	if len(before) > 0 {
		b := currentSnapshot(before, nil)
		anchor = &b
	}
	return chainOrder(latest, anchor)[len(latest)-1]
}

// chainOrder orders the snapshots of one second: a topological order of the
// change chain, cycles broken by following the snapshot placed last (from
// anchor, when given), then by status rank and event id. It is a function of
// the set alone, whatever its order.
func chainOrder(set []Subscription, anchor *Subscription) []Subscription {
	n := len(set)
	edge := make([]bool, n*n) // edge[i*n+j]: set[j] follows set[i]
	preceding := make([]int, n)
	for i := range set {
		for j := range set {
			if i != j && follows(&set[i], &set[j]) {
				edge[i*n+j] = true
				preceding[j]++
			}
		}
	}
	placed := make([]bool, n)
	order := make([]Subscription, 0, n)
	last := -1
	for range n {
		best := -1
		for i := range set {
			if !placed[i] && (best < 0 || goesFirst(set, i, best, preceding, edge, last, anchor)) {
				best = i
			}
		}
		placed[best] = true
		for j := range set {
			if edge[best*n+j] {
				preceding[j]--
			}
		}
		order, last = append(order, set[best]), best
	}
	return order
}

// goesFirst reports whether set[i] should be placed before set[j] next: one
// that no remaining snapshot precedes first, then one that follows the last
// placed (or the anchor), then the lower status rank, then the lower event id.
func goesFirst(set []Subscription, i, j int, preceding []int, edge []bool, last int, anchor *Subscription) bool {
	n := len(set)
	followsLast := func(k int) bool {
		if last >= 0 {
			return edge[last*n+k]
		}
		return anchor != nil && follows(anchor, &set[k])
	}
	return cmp.Or(
		compareBools(preceding[i] == 0, preceding[j] == 0),
		compareBools(followsLast(i), followsLast(j)),
		-cmp.Compare(subscriptionStatusRank[set[i].Status], subscriptionStatusRank[set[j].Status]),
		-cmp.Compare(set[i].LastEventID, set[j].LastEventID),
	) > 0
}
