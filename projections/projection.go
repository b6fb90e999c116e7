package projections

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"sync"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// BillingVersion is the version of the billing projection's logic. Bump it
// with every change that alters what the read model holds for the same events
// (decoding, folding, the tables of readmodel.go): the next Runner to start rebuilds.
const BillingVersion = 8

// Projection is a read model folded from the event log: its name (the key of
// projection_checkpoints), the version of its logic, and the plan mapping it
// folds subscriptions with.
type Projection struct {
	Name    string
	Version int
	Plans   domain.Plans

	outbox outboxMode         // what its folds write to the outbox
	log    audit.StreamReader // the event log, where a late fact's customer history is read (timeline.go)
	chunk  int                // customers per round of a fold's writes; 0: writeChunk (store.go)
	states *heldStates        // the states its folds start from, the live runner's (livestates.go); nil: loaded
}

// outboxMode is what a fold writes to the notifications outbox.
type outboxMode int

const (
	// outboxLive writes every notification a batch derives: the Runner's.
	outboxLive outboxMode = iota
	// outboxBuild writes a batch's notifications but for entitlement
	// changes, which a build announces from the final timelines once it is
	// live (announceFinal): the intermediate timelines of its batches,
	// unlike the final ones, need not be any that the live runner derived.
	// The fill of a build, and its event-by-event fallback, write none.
	outboxBuild
	// outboxNone writes none: a schema that never goes live (Diff).
	outboxNone
)

// keep is what of notes m writes.
func (m outboxMode) keep(notes []notify.Notification) []notify.Notification {
	switch m {
	case outboxBuild:
		return slices.DeleteFunc(notes, func(n notify.Notification) bool { return n.Type == notify.EntitlementChanged })
	case outboxNone:
		return nil
	}
	return notes
}

// quiet is p writing nothing to the outbox.
func (p Projection) quiet() Projection {
	p.outbox = outboxNone
	return p
}

// reading is p reading late facts' histories from log.
func (p Projection) reading(log audit.StreamReader) Projection {
	p.log = log
	return p
}

// building is p as a build folds it.
func (p Projection) building() Projection {
	if p.outbox == outboxLive {
		p.outbox = outboxBuild
	}
	return p
}

// Billing is the projection of customers, subscriptions, invoices, charges
// and disputes that the read API serves.
func Billing(plans domain.Plans) Projection {
	return Projection{Name: "billing", Version: BillingVersion, Plans: plans}
}

// newSchemaName names a fresh schema for a build of p.
func (p Projection) newSchemaName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("rm_%s_v%d_%s", p.Name, p.Version, hex.EncodeToString(b))
}

// schemaPattern matches the schemas of every build of p, whatever its version.
func (p Projection) schemaPattern() string {
	return "^rm_" + regexp.QuoteMeta(p.Name) + `_v[0-9]+_[0-9a-f]+$`
}

// batch is a run of consecutive records decoded into facts, ready to be
// folded into the read model.
type batch struct {
	facts       map[domain.CustomerKey][]domain.Fact
	links       []objectLink // see links.go
	streamLinks []streamLink
	pending     []pendingDispute  // dispute facts that name no customer
	payments    []pendingPayment  // invoice payment facts that name no customer
	recs        []eventlog.Record // what it was decoded from, to bisect it (poison.go)
	deadLetters []deadLetter
	outcomes    map[string]int         // events by outcome label, for the metric
	apiVersions map[string]versionSeen // the events of each Stripe API version
	events      int
	last        eventlog.Position
	notified    int64    // notifications its fold added to the outbox
	parts       []*batch // the batches it joins (then), which fold folds in turn; nil: none
}

// deadLetter is an event the projection could not apply.
type deadLetter struct {
	eventID       string
	eventType     string
	position      eventlog.Position
	stream        string
	streamVersion int64
	err           string
}

// Outcomes of an event, the label of ledger_projection_events_total.
const (
	outcomeApplied       = "applied"
	outcomeUnhandledType = "unhandled_type"
	outcomeNoCustomer    = "no_customer"
	outcomeDeadLetter    = "dead_letter"
)

// decode turns recs into facts by customer. It does no I/O.
func (p Projection) decode(recs []eventlog.Record) *batch {
	b := &batch{facts: map[domain.CustomerKey][]domain.Fact{}, recs: recs, outcomes: map[string]int{}, apiVersions: map[string]versionSeen{}, events: len(recs)}
	if len(recs) > 0 {
		b.last = recs[len(recs)-1].Position
	}
	for _, rec := range recs {
		b.outcomes[p.decodeRecord(b, rec)]++
		b.noteAPIVersion(rec.APIVersion, versionSeen{events: 1, firstEventID: rec.ID})
	}
	return b
}

func (p Projection) decodeRecord(b *batch, rec eventlog.Record) string {
	// The log parsed and stored the envelope when it took the event in;
	// parsing it again would double the cost of decoding (rebuilds are
	// bound by JSON decoding), and so would reading the links apart.
	env := domain.Envelope{ID: rec.ID, Type: rec.Type, APIVersion: rec.APIVersion, Created: rec.Created, Account: rec.Account}
	f, links, err := domain.DecodeStorableLinks(env, rec.Payload, p.Plans)
	b.addLinks(rec, links)
	if !domain.Handles(rec.Type) {
		return outcomeUnhandledType
	}
	if err != nil {
		b.deadLetters = append(b.deadLetters, newDeadLetter(rec, err))
		return outcomeDeadLetter
	}
	switch {
	case f.CustomerID != "":
		b.facts[f.Key()] = append(b.facts[f.Key()], *f)
		return outcomeApplied
	case f.Dispute != nil: // folded into its customer once its charge is linked (links.go)
		b.pending = append(b.pending, pendingDispute{account: rec.Account, fact: *f})
		return outcomeApplied
	case f.InvoicePayment != nil: // likewise, once its invoice is linked
		b.payments = append(b.payments, pendingPayment{account: rec.Account, fact: *f})
		return outcomeApplied
	}
	return outcomeNoCustomer
}

// decodeParallel decodes recs like decode, in parts on up to GOMAXPROCS
// goroutines: builds are bound by JSON decoding.
func (p Projection) decodeParallel(recs []eventlog.Record) *batch {
	parts := min(runtime.GOMAXPROCS(0), len(recs)/100)
	if parts <= 1 {
		return p.decode(recs)
	}
	decoded := make([]*batch, parts)
	var wg sync.WaitGroup
	for i := range parts {
		part := recs[i*len(recs)/parts : (i+1)*len(recs)/parts]
		wg.Go(func() { decoded[i] = p.decode(part) })
	}
	wg.Wait()
	b := decoded[0]
	for _, d := range decoded[1:] {
		d.recs = nil // b.recs is set to all of recs below, not copied part by part
		b.merge(d)
	}
	b.recs = recs
	return b
}

// merge appends the batch that follows b to it.
func (b *batch) merge(d *batch) {
	for id, facts := range d.facts {
		b.facts[id] = append(b.facts[id], facts...)
	}
	b.links = append(b.links, d.links...)
	b.streamLinks = append(b.streamLinks, d.streamLinks...)
	b.pending = append(b.pending, d.pending...)
	b.payments = append(b.payments, d.payments...)
	b.recs = append(b.recs[:len(b.recs):len(b.recs)], d.recs...)
	b.addTotals(d)
}

// addTotals adds to b what d, the batch that follows it, did: its
// outcomes, API versions, dead letters, events, notifications added and
// last position.
func (b *batch) addTotals(d *batch) {
	for outcome, n := range d.outcomes {
		b.outcomes[outcome] += n
	}
	for version, seen := range d.apiVersions {
		b.noteAPIVersion(version, seen)
	}
	b.deadLetters = append(b.deadLetters, d.deadLetters...)
	b.events += d.events
	b.notified += d.notified
	b.last = d.last
}

// then joins b and next, the batch read after it, into one batch of parts,
// which fold folds one after the other in one transaction. The joined batch
// holds their outcomes, API versions, dead letters and notifications
// added; their records, facts and links stay in the parts.
func (b *batch) then(next *batch) *batch {
	parts := b.parts
	if parts == nil {
		parts = []*batch{b}
	}
	j := &batch{facts: map[domain.CustomerKey][]domain.Fact{}, outcomes: map[string]int{}, apiVersions: map[string]versionSeen{},
		parts: append(slices.Clip(parts), next)}
	for _, part := range j.parts {
		j.addTotals(part)
	}
	return j
}

// versionSeen counts the events of one API version in a batch, and names
// the least event id among them (which is order independent to store).
type versionSeen struct {
	events       int
	firstEventID string
}

// noteAPIVersion adds seen to the events b holds of version.
func (b *batch) noteAPIVersion(version string, seen versionSeen) {
	if old, ok := b.apiVersions[version]; ok {
		seen.events += old.events
		seen.firstEventID = min(seen.firstEventID, old.firstEventID)
	}
	b.apiVersions[version] = seen
}

// upTo is the greatest position of b's records: a fold of b has folded
// every record of the log up to it.
func (b *batch) upTo() eventlog.Position {
	pos := b.last
	for _, r := range b.recs {
		if pos.Less(r.Position) {
			pos = r.Position
		}
	}
	return pos
}

// customers are the customers b names, sorted so that concurrent writers
// would lock rows in the same order.
func (b *batch) customers() []domain.CustomerKey {
	keys := make([]domain.CustomerKey, 0, len(b.facts))
	for k := range b.facts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, domain.CustomerKey.Compare)
	return keys
}

// customersWith are the customers among ids (b.customers()) with a charge
// fact in b and those with a dispute fact, in ids' order. Nothing else of a
// fold reads a customer's charges or disputes: the entitlement derives from
// its subscriptions and invoices, a charge fact is compared with its stored
// snapshot, and a dispute fact with its own, to announce a new dispute once.
func (b *batch) customersWith(ids []domain.CustomerKey) (charges, disputes []domain.CustomerKey) {
	for _, id := range ids {
		var charge, dispute bool
		for _, f := range b.facts[id] {
			charge, dispute = charge || f.Charge != nil, dispute || f.Dispute != nil
		}
		if charge {
			charges = append(charges, id)
		}
		if dispute {
			disputes = append(disputes, id)
		}
	}
	return charges, disputes
}
