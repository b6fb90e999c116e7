package projections

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// A customer's entitlement follows the converged timeline, not the order in
// which the ledger learned of the facts: the entitlement at second s is
// that of the fold of every fact of the customer created at or before s
// (the fold is order independent, DESIGN §4), and its transitions are the
// seconds of the customer's facts at which it differs from the second
// before. customers.entitlement_timeline stores them, and each is announced
// once as customer.entitlement_changed.
//
// A transition's identity is its after-state and its occurrence: how many
// earlier transitions of the timeline reached the same after-state ("the
// second time this customer became free"). Not the causing event, nor the
// second, nor the transition's rank: a late event that inserts an earlier
// transition, or moves one to another second (the renewal's invoice.paid
// arriving after the next renewal's), leaves the after-state and occurrence
// of every later transition as they were, so nothing is announced twice;
// an inserted transition to an after-state that a later one reaches too
// takes that one's occurrence, and the later one the next: one new
// notification for one new transition all the same. An announcement can still turn out not to be in the final timeline:
// a state that only held while an older fact was missing (a renewal paid
// before the plan change that preceded it was known: announced with the old
// plan), or a transition that an older fact later cancelled (the k-th return
// to an after-state that, with the fact, happens one time fewer). The
// receiver then has, before the announcements of the real transitions the
// late fact makes, one of a state that did not hold at that second; the
// current entitlement is the read model's. Every transition of a stored
// timeline was announced when it first appeared in it, so the final
// timeline's are all in the outbox, each once, and a build that derives the
// same timelines adds none (announceFinal). The same after-state reached k
// times is announced with occurrences 0…k-1: a receiver never gets
// occurrence k without every one before it.

// transition is one change of a customer's entitlement in its timeline.
type transition struct {
	At         time.Time          `json:"at"` // the second it happened
	Before     notify.Entitlement `json:"before"`
	After      notify.Entitlement `json:"after"`
	Occurrence int                `json:"occurrence"` // earlier transitions of the timeline to After
}

// timeline is a customer's transitions, in time order.
type timeline []transition

// reached counts the transitions of t to e.
func (t timeline) reached(e notify.Entitlement) int {
	n := 0
	for _, tr := range t {
		if tr.After.Equal(e) {
			n++
		}
	}
	return n
}

// advance extends t with the entitlement to from second at on, where at is
// at or after every fact t was derived from and from is the entitlement
// before at's facts were applied. A transition already at at is replaced:
// the second's facts moved it. It returns the transition at at, if any.
func (t timeline) advance(at time.Time, from, to notify.Entitlement) (timeline, *transition) {
	if n := len(t); n > 0 && t[n-1].At.Equal(at) {
		from = t[n-1].Before
		t = t[:n-1]
	}
	if from.Equal(to) {
		return t, nil
	}
	tr := transition{At: at.UTC(), Before: from, After: to, Occurrence: t.reached(to)}
	return append(t, tr), &tr
}

// note is the customer.entitlement_changed notification of tr, caused by events.
func (tr transition) note(account, customer string, events []string) notify.Notification {
	key := fmt.Sprintf("%t/%s/%s#%d", tr.After.Entitled, tr.After.Plan, untilText(tr.After.AccessUntil), tr.Occurrence)
	if events == nil {
		events = []string{} // a build's announcement names none
	}
	return notify.Notification{
		ID: notificationID(notify.EntitlementChanged, account, customer, key), Type: notify.EntitlementChanged,
		Account: account, CustomerID: customer, EventIDs: events, OccurredAt: tr.At,
		Data: mustJSON(notify.EntitlementData{Before: tr.Before, After: tr.After}),
	}
}

func untilText(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return strconv.FormatInt(t.Unix(), 10)
}

// affectsEntitlement reports whether f can change a customer's entitlement
// (domain.CustomerState.Derive reads neither charges nor disputes).
func affectsEntitlement(f domain.Fact) bool { return f.Charge == nil && f.Dispute == nil }

// history returns the facts of one customer's history that a fold has folded.
type history func(context.Context) ([]domain.Fact, error)

// foldCustomer applies facts, a batch's facts of one customer in log order,
// to s, whose entitlement timeline is tl, and appends to *notes the
// notifications they derive (none are derived when notes is nil: a fill
// writes none); it returns the timeline after them.
//
// The overwhelming case costs no read: every fact is at or after the latest
// second folded for the customer, so the timeline only grows at its end
// (advance), second by second of the facts in created order. A fact that
// can change the entitlement and is older than that second rewrites the
// timeline from its second on: it is computed again from the customer's
// whole history up to the batch (one read of history for the batch), and
// every transition from the earliest such second on is derived again; those
// already in the outbox keep their row (same id).
func foldCustomer(ctx context.Context, notes *[]notify.Notification, s *domain.CustomerState, tl timeline, facts []domain.Fact,
	eventType func(string) string, past history) (timeline, error) {
	late, sorted := lateFact(s, facts), true
	for i, f := range facts {
		sorted = sorted && (i == 0 || !f.Created.Before(facts[i-1].Created))
	}
	if !late.IsZero() {
		for _, f := range facts {
			applyNoting(notes, s, f, eventType)
		}
		all, err := past(ctx)
		if err != nil {
			return nil, err
		}
		tl := timelineOf(all)
		for _, tr := range tl {
			if notes != nil && !tr.At.Before(late) {
				*notes = append(*notes, tr.note(s.Account, s.Customer.ID, eventsAt(all, tr.At)))
			}
		}
		return tl, nil
	}
	// In created order, on s itself when the facts come so (the other
	// notifications follow log order), else on a copy.
	in, ordered := s, facts
	if !sorted {
		c := cloneState(s)
		in, ordered = &c, slices.Clone(facts)
		slices.SortStableFunc(ordered, func(a, b domain.Fact) int { return a.Created.Compare(b.Created) })
		for _, f := range facts {
			applyNoting(notes, s, f, eventType)
		}
	}
	from := entitlementOf(in)
	eachSecond(ordered, func(f domain.Fact) {
		if sorted {
			applyNoting(notes, s, f, eventType)
		} else {
			in.Apply(f)
		}
	}, func(at time.Time, events []string) {
		to := entitlementOf(in)
		var tr *transition
		if tl, tr = tl.advance(at, from, to); tr != nil && notes != nil {
			*notes = append(*notes, tr.note(s.Account, s.Customer.ID, events))
		}
		from = to
	})
	return tl, nil
}

// lateFact is the earliest second of facts, of the customer whose state is
// s, before the latest second folded into s, of a fact that can change the
// entitlement; zero when none is (foldCustomer reads no history).
func lateFact(s *domain.CustomerState, facts []domain.Fact) time.Time {
	var late time.Time
	for _, f := range facts {
		if f.Created.Before(s.UpdatedAt) && affectsEntitlement(f) && (late.IsZero() || f.Created.Before(late)) {
			late = f.Created
		}
	}
	return late
}

// eachSecond applies facts, which are in created order, one by one with
// apply, and after the last fact of each second calls settle with that
// second and the ids of its facts (a slice of its own each time).
func eachSecond(facts []domain.Fact, apply func(domain.Fact), settle func(at time.Time, events []string)) {
	var events []string
	for i, f := range facts {
		apply(f)
		events = append(events, f.EventID)
		if i+1 < len(facts) && facts[i+1].Created.Equal(f.Created) {
			continue
		}
		settle(f.Created, events)
		events = nil
	}
}

// timelineOf is the entitlement timeline of a customer's facts: their fold
// in created order, compared at each second.
func timelineOf(facts []domain.Fact) timeline {
	facts = slices.Clone(facts)
	slices.SortStableFunc(facts, func(a, b domain.Fact) int { return a.Created.Compare(b.Created) })
	var (
		s  domain.CustomerState
		tl timeline
	)
	from := entitlementOf(&s)
	eachSecond(facts, s.Apply, func(at time.Time, _ []string) {
		to := entitlementOf(&s)
		tl, _ = tl.advance(at, from, to)
		from = to
	})
	return tl
}

// eventsAt are the ids of the facts created at second at.
func eventsAt(facts []domain.Fact, at time.Time) []string {
	var ids []string
	for _, f := range facts {
		if f.Created.Equal(at) && !slices.Contains(ids, f.EventID) {
			ids = append(ids, f.EventID)
		}
	}
	slices.Sort(ids)
	return ids
}

// cloneState is a copy of s that applying facts to leaves s as it is (the
// fold never writes to the arrays of the snapshots it keeps).
func cloneState(s *domain.CustomerState) domain.CustomerState {
	c := *s
	c.Subscriptions, c.Invoices = maps.Clone(s.Subscriptions), maps.Clone(s.Invoices)
	c.Charges, c.Disputes = maps.Clone(s.Charges), maps.Clone(s.Disputes)
	return c
}

// customerFacts reads the facts of customer key that the fold of schema has
// folded up to upTo, from log: its own stream and the streams linked to its
// objects (DESIGN §8), as q sees schema's links.
func customerFacts(ctx context.Context, q rowsQuerier, log audit.StreamReader, schema string, key domain.CustomerKey, plans domain.Plans,
	upTo eventlog.Position) ([]domain.Fact, error) {
	linked, err := linkedStreams(ctx, q, schema, key)
	if err != nil {
		return nil, fmt.Errorf("streams of %s: %w", key.ID, err)
	}
	return historyFacts(ctx, log, key, linked, plans, upTo)
}

// historyFacts reads the facts of customer key up to upTo from log: its own
// stream and linked, the streams linked to its objects.
func historyFacts(ctx context.Context, log audit.StreamReader, key domain.CustomerKey, linked []string, plans domain.Plans,
	upTo eventlog.Position) ([]domain.Fact, error) {
	streams := append([]string{domain.Envelope{CustomerID: key.ID, Account: key.Account}.Stream()}, linked...)
	var facts []domain.Fact
	// Only what can change the entitlement is decoded (charges and disputes cannot).
	include := func(r eventlog.Record) bool {
		return !upTo.Less(r.Position) && domain.Handles(r.Type) && !strings.HasPrefix(r.Type, "charge.")
	}
	_, err := audit.EachFact(ctx, log, streams, key, plans, include, func(f domain.Fact) { facts = append(facts, f) })
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", key.ID, err)
	}
	return facts, nil
}
