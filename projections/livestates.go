package projections

import (
	"context"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// heldStates are the states of the customers the live runner folded, as its
// last commits left them, so that a live batch loads from the read model
// only the customers it names for the first time. A live batch holds a
// few events of each of its customers (under ingest, 90 events of about 18
// customers), so loading their whole states (every subscription and
// invoice, the timeline's JSON) cost about as much as folding and writing
// them: a catch-up batch shares each load among a dozen events or more.
//
// The states held are exactly what the read model stores, which is what
// they are checked against:
//   - they are taken in only once their batch commits (commit), and all
//     are dropped when a fold fails or is bisected around a poison event
//     (reset);
//   - every other writer of the live schema (Retry, a runner that lost its
//     lock without knowing it) moves the checkpoint row, which the runner
//     locks first in each batch (advance): a row the runner did not leave
//     as it is drops them all;
//   - an object held in two customers' states (another customer claimed
//     it, which the read model's row follows) drops both.
//
// A zero heldStates is not usable; a nil one loads every state.
type heldStates struct {
	max     int                               // customers held at most
	held    map[domain.CustomerKey]*heldState // as committed
	owners  map[objectKey]domain.CustomerKey  // the customer whose held state has each object (objectKey without customer)
	folding map[domain.CustomerKey]*heldState // loaded, then folded, in the open transaction
	xmin    uint32                            // of the checkpoint row, as the last commit left it
	known   bool                              // xmin is known
	loaded  int                               // states loaded from the read model so far (tests read it)
}

// heldState is one customer's state and timeline. A state is loaded with
// its charges and disputes only when a batch folds a charge or dispute fact
// (loadStatesOf): charges and disputes say it holds them.
type heldState struct {
	state             *domain.CustomerState
	timeline          timeline
	charges, disputes bool
}

// maxHeldStates is how many customers' states the live runner holds:
// bench/ingest.sh's 12,000 deliveries name about 1,000; a customer with a
// few years of monthly invoices takes a few tens of KB.
const maxHeldStates = 5000

func newHeldStates(max int) *heldStates {
	return &heldStates{max: max, held: map[domain.CustomerKey]*heldState{}, owners: map[objectKey]domain.CustomerKey{}}
}

// loadPart returns the states of b's customers for a fold within tx, as
// loadPart does: each held one (or folded already in tx) as a copy to
// fold, the others loaded from schema.
func (h *heldStates) loadPart(ctx context.Context, tx pgx.Tx, schema string, b *batch) (*partStates, error) {
	if h == nil {
		return loadPart(ctx, tx, schema, b)
	}
	ps := &partStates{ids: b.customers()}
	ps.charges, ps.disputes = b.customersWith(ps.ids)
	var err error
	if ps.states, ps.timelines, err = h.load(ctx, tx, schema, ps.ids, ps.charges, ps.disputes); err != nil {
		return nil, err
	}
	return ps, nil
}

// load returns the states and timelines of customers ids, as loadStatesOf
// does.
func (h *heldStates) load(ctx context.Context, tx pgx.Tx, schema string, ids, withCharges, withDisputes []domain.CustomerKey) (
	map[domain.CustomerKey]*domain.CustomerState, map[domain.CustomerKey]timeline, error) {
	if h.folding == nil {
		h.folding = map[domain.CustomerKey]*heldState{}
	}
	states := make(map[domain.CustomerKey]*domain.CustomerState, len(ids))
	timelines := make(map[domain.CustomerKey]timeline, len(ids))
	var missing, missingCharges, missingDisputes []domain.CustomerKey
	for _, id := range ids {
		charges, disputes := holds(withCharges, id), holds(withDisputes, id)
		from := h.folding[id]
		if from == nil {
			from = h.held[id]
		}
		if from != nil && from.state != nil && (from.charges || !charges) && (from.disputes || !disputes) {
			s := cloneState(from.state)
			// advance replaces a timeline's last transition in place.
			states[id], timelines[id] = &s, slices.Clone(from.timeline)
			h.folding[id] = &heldState{charges: from.charges, disputes: from.disputes}
			continue
		}
		missing = append(missing, id)
		if charges {
			missingCharges = append(missingCharges, id)
		}
		if disputes {
			missingDisputes = append(missingDisputes, id)
		}
		h.folding[id] = &heldState{charges: charges, disputes: disputes}
	}
	loaded, lines, err := loadStatesOf(ctx, tx, schema, missing, missingCharges, missingDisputes)
	if err != nil {
		return nil, nil, err
	}
	h.loaded += len(missing)
	maps.Copy(states, loaded)
	maps.Copy(timelines, lines)
	return states, timelines, nil
}

// holds reports whether keys, sorted, hold k.
func holds(keys []domain.CustomerKey, k domain.CustomerKey) bool {
	_, ok := slices.BinarySearchFunc(keys, k, domain.CustomerKey.Compare)
	return ok
}

// folded notes s and tl, the state and timeline of customer id after its
// fold in the open transaction.
func (h *heldStates) folded(id domain.CustomerKey, s *domain.CustomerState, tl timeline) {
	if h == nil {
		return
	}
	// A customer of a part loaded otherwise (prefetch) is not taken in.
	if f := h.folding[id]; f != nil {
		f.state, f.timeline = s, tl
	}
}

// commit takes in the states folded in the transaction that committed, in
// which the checkpoint row was left at xmin.
func (h *heldStates) commit(xmin uint32) {
	for id, f := range h.folding {
		if f.state == nil {
			continue
		}
		h.drop(id)
		h.held[id] = f
	}
	var twice []domain.CustomerKey
	for id, f := range h.folding {
		if f.state == nil {
			continue
		}
		eachObject(f.state, func(k objectKey) {
			if owner, ok := h.owners[k]; ok && owner != id {
				twice = append(twice, owner, id)
				return
			}
			h.owners[k] = id
		})
	}
	for _, id := range twice {
		h.drop(id)
	}
	h.folding = nil
	h.xmin, h.known = xmin, true
	for id := range h.held { // in no particular order
		if len(h.held) <= h.max {
			break
		}
		h.drop(id)
	}
}

// drop lets go of customer id's state.
func (h *heldStates) drop(id domain.CustomerKey) {
	held := h.held[id]
	if held == nil {
		return
	}
	delete(h.held, id)
	eachObject(held.state, func(k objectKey) {
		if h.owners[k] == id {
			delete(h.owners, k)
		}
	})
}

// reset lets go of every state: the read model may no longer hold them.
func (h *heldStates) reset() {
	if h == nil {
		return
	}
	clear(h.held)
	clear(h.owners)
	h.folding, h.known = nil, false
}

// eachObject calls each with the key of every object of s.
func eachObject(s *domain.CustomerState, each func(objectKey)) {
	for id := range s.Subscriptions {
		each(objectKey{table: subscriptionsTable.name, account: s.Account, id: id})
	}
	for id := range s.Invoices {
		each(objectKey{table: invoicesTable.name, account: s.Account, id: id})
	}
	for id := range s.Charges {
		each(objectKey{table: chargesTable.name, account: s.Account, id: id})
	}
	for id := range s.Disputes {
		each(objectKey{table: disputesTable.name, account: s.Account, id: id})
	}
}

// advance moves name's checkpoint from cp to pos within tx (advance), and
// lets go of every state held when the row is not as the last commit left
// it; it returns the row's xmin after the move, for commit.
func (h *heldStates) advance(ctx context.Context, tx pgx.Tx, name string, cp checkpoint, pos eventlog.Position) (uint32, error) {
	was, now, err := advance(ctx, tx, name, cp, pos)
	if err != nil {
		return 0, err
	}
	if !h.known || was != h.xmin {
		h.reset()
	}
	return now, nil
}
