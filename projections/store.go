package projections

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// customerRow is a row of customers: the customer's snapshot and the
// entitlement derived for it.
type customerRow struct {
	Account          string
	ID, Email, Name  string
	Deleted          bool
	Plan             string
	Entitled         bool
	AccessUntil      *time.Time
	UpdatedAt        time.Time
	LastEventID      string
	LastEventCreated *time.Time // NULL until a customer.* event is seen
	Timeline         timeline   // the entitlement's transitions (timeline.go)
}

func newCustomerRow(s *domain.CustomerState, tl timeline) customerRow {
	r := customerRow{
		Account: s.Account, ID: s.Customer.ID, Email: s.Customer.Email, Name: s.Customer.Name, Deleted: s.Customer.Deleted,
		Plan: s.Plan, Entitled: s.Entitled, AccessUntil: s.AccessUntil, UpdatedAt: s.UpdatedAt,
		LastEventID: s.Customer.LastEventID, Timeline: tl,
	}
	if r.Timeline == nil {
		r.Timeline = timeline{} // stored as [], never null
	}
	if !s.Customer.LastEventCreated.IsZero() {
		r.LastEventCreated = &s.Customer.LastEventCreated
	}
	return r
}

// state is the customer's state as stored, without its objects.
func (r customerRow) state() *domain.CustomerState {
	s := &domain.CustomerState{
		Account: r.Account,
		Customer: domain.Customer{
			Account: r.Account, ID: r.ID, Email: r.Email, Name: r.Name, Deleted: r.Deleted, LastEventID: r.LastEventID,
		},
		Plan: r.Plan, Entitled: r.Entitled, AccessUntil: r.AccessUntil, UpdatedAt: r.UpdatedAt,
	}
	if r.LastEventCreated != nil {
		s.Customer.LastEventCreated = *r.LastEventCreated
	}
	return s
}

// fold applies b to the read model in schema, within tx: it records b's
// links (which may resolve disputes and invoice payments to their customers), loads the
// stored state of every customer b names, applies b's facts to it in memory,
// writes back the rows that changed and records b's dead letters. A batch
// of parts (batch.then) is folded part after part, as if each were a batch
// of its own.
//
// The rows go out in chunks of writeChunk customers: each chunk's
// statements are handed to a writer (chunkWriter) as soon as its customers
// are folded, and the writer encodes and sends them and the server writes
// them while the next chunk is folded here (a catch-up batch folds
// thousands of customers, and its writes took the server longer than the
// fold took this process: in turn, one of the two cores stood idle). So
// does the link of a part, sent ahead of the fold of the part before (the
// server links while this process folds, where the link kept this process
// idle), unless that fold reads a customer's history: the history is read
// with the links of the batches folded, and the part's would be there too.
// Nothing else of a fold reads the tables of links, and the link writes
// nothing else, so either way each part sees what it would as a batch.
func fold(ctx context.Context, tx pgx.Tx, p Projection, schema string, b *batch) error {
	parts := b.parts
	if len(parts) == 0 {
		parts = []*batch{b}
	}
	var w chunkWriter
	defer w.close()
	if err := link(ctx, tx, schema, parts[0]); err != nil {
		return err
	}
	for i, part := range parts {
		// The rounds of the part before are written: the load sees its rows.
		if err := w.wait(); err != nil {
			return fmt.Errorf("write read model %s: %w", schema, err)
		}
		ids := part.customers()
		withCharges, withDisputes := part.customersWith(ids)
		states, timelines, err := loadStatesOf(ctx, tx, schema, ids, withCharges, withDisputes)
		if err != nil {
			return err
		}
		var next *batch
		if i+1 < len(parts) {
			next = parts[i+1]
		}
		ahead := next != nil && !readsHistory(part, ids, states)
		if ahead {
			var q pgx.Batch
			queueLink(&q, schema, next)
			if err := w.send(ctx, tx, &q); err != nil {
				return fmt.Errorf("link objects in %s: %w", schema, err)
			}
		}
		if err := foldPart(ctx, tx, &w, p, schema, part, ids, states, timelines, &b.notified); err != nil {
			return err
		}
		if next != nil && !ahead {
			if err := w.wait(); err != nil {
				return fmt.Errorf("write read model %s: %w", schema, err)
			}
			if err := link(ctx, tx, schema, next); err != nil {
				return err
			}
		}
	}
	if err := w.wait(); err != nil {
		return fmt.Errorf("write read model %s: %w", schema, err)
	}
	return nil
}

// readsHistory reports whether the fold of b's customers ids, whose stored
// states are states, reads the history of one (foldCustomer's late facts).
func readsHistory(b *batch, ids []domain.CustomerKey, states map[domain.CustomerKey]*domain.CustomerState) bool {
	for _, id := range ids {
		if !lateFact(states[id], b.facts[id]).IsZero() {
			return true
		}
	}
	return false
}

// foldPart folds b, linked, into the states of its customers ids, loaded,
// and sends their rows through w in rounds, the last with b's dead letters
// and API versions; the notifications added are counted in added.
func foldPart(ctx context.Context, tx pgx.Tx, w *chunkWriter, p Projection, schema string, b *batch, ids []domain.CustomerKey,
	states map[domain.CustomerKey]*domain.CustomerState, timelines map[domain.CustomerKey]timeline, added *int64) error {
	var (
		customers     []customerRow
		subscriptions []domain.Subscription
		invoices      []domain.Invoice
		charges       []domain.Charge
		disputes      []domain.Dispute
		notes         []notify.Notification
		eventType     = b.eventTypes()
		upTo          = b.upTo()
		err           error
	)
	// With more than one round, the objects written so far (see claimOnce).
	var claimed map[objectKey]struct{}
	if len(ids) > p.writeChunk() {
		claimed = map[objectKey]struct{}{}
	}
	// round sends the rows of the customers folded since the round before,
	// and with the last one b's dead letters and API versions.
	round := func(last bool) error {
		if claimed != nil {
			if err := cmp.Or(claimOnce(claimed, subscriptionsTable, subscriptions), claimOnce(claimed, invoicesTable, invoices),
				claimOnce(claimed, chargesTable, charges), claimOnce(claimed, disputesTable, disputes)); err != nil {
				return fmt.Errorf("write read model %s: %w", schema, err)
			}
		}
		var q pgx.Batch
		customersTable.queueUpsert(&q, schema, customers)
		subscriptionsTable.queueUpsert(&q, schema, subscriptions)
		invoicesTable.queueUpsert(&q, schema, invoices)
		chargesTable.queueUpsert(&q, schema, charges)
		disputesTable.queueUpsert(&q, schema, disputes)
		if last {
			queueDeadLetters(&q, p, schema, b.deadLetters)
			queueAPIVersions(&q, schema, b.apiVersions)
		}
		// A round's notifications follow its rows, in the order derived
		// (rounds are customers in order, and no id is two customers').
		// The lock the first one takes is held until the commit.
		queueNotifications(&q, p.outbox.keep(notes), added)
		customers, subscriptions, invoices, charges, disputes, notes = nil, nil, nil, nil, nil, nil
		if err := w.send(ctx, tx, &q); err != nil {
			return fmt.Errorf("write read model %s: %w", schema, err)
		}
		return nil
	}
	for i, id := range ids {
		s := states[id]
		before := cloneState(s)
		var tl timeline
		tl, err = foldCustomer(ctx, &notes, s, timelines[id], b.facts[id], eventType, func(ctx context.Context) ([]domain.Fact, error) {
			if err := w.wait(); err != nil { // the read below needs tx's connection
				return nil, fmt.Errorf("write read model %s: %w", schema, err)
			}
			return customerFacts(ctx, tx, p.log, schema, id, p.Plans, upTo)
		})
		if err != nil {
			return err
		}
		customers = append(customers, newCustomerRow(s, tl))
		subscriptions = appendChanged(subscriptions, before.Subscriptions, s.Subscriptions, subscriptionChanged)
		invoices = appendChanged(invoices, before.Invoices, s.Invoices,
			func(a, b domain.Invoice) bool {
				return a.LastEventID != b.LastEventID || a.AttemptCount != b.AttemptCount || !reflect.DeepEqual(a.Payment, b.Payment)
			})
		charges = appendChanged(charges, before.Charges, s.Charges,
			func(a, b domain.Charge) bool { return a.LastEventID != b.LastEventID })
		disputes = appendChanged(disputes, before.Disputes, s.Disputes,
			func(a, b domain.Dispute) bool { return a.LastEventID != b.LastEventID })
		if len(customers) == p.writeChunk() && i < len(ids)-1 {
			if err := round(false); err != nil {
				return err
			}
		}
	}
	return round(true)
}

// errClaimedTwice reports that two customers of a batch claim one object:
// one upsert of both rows fails with SQLSTATE 21000, and so does a fold
// that writes them in two rounds (claimOnce), so that the batch is bisected
// and the object ends with the customer later in the log (isDataError).
var errClaimedTwice = errors.New("two customers of the batch claim one object")

// claimOnce notes in claimed the objects of rows, the rows of t that a
// round of a fold writes, and fails with errClaimedTwice for one that an
// earlier round wrote: otherwise the later round's customer, by key
// order, not the later event's, would keep the row.
func claimOnce[T any](claimed map[objectKey]struct{}, t table[T], rows []T) error {
	for i := range rows {
		key := rowKey(t, &rows[i])
		k := objectKey{table: t.name, account: key.account, id: key.object}
		if _, ok := claimed[k]; ok {
			return fmt.Errorf("%w: %s %s", errClaimedTwice, t.name, k.id)
		}
		claimed[k] = struct{}{}
	}
	return nil
}

// writeChunk is how many customers' rows fold writes in one round of
// statements, sent while it folds the next ones: a catch-up batch of
// 16,000 events names about 1,000 customers, so four or five rounds. In
// BenchmarkCatchUp on an idle machine, 250 caught up 5-13% faster than
// one round per batch (2,000), 500 about 2%, 100 no better than 250.
const writeChunk = 250

// writeChunk is p's, writeChunk unless a test set its own.
func (p Projection) writeChunk() int { return cmp.Or(p.chunk, writeChunk) }

// chunkWriter sends the statements of a fold's writes, a chunk at a time,
// from a goroutine of its own: the fold goes on with the next chunk while
// the writer encodes this one (pgx's encoding of the rows' arrays and
// jsonb took the fold's goroutine a third of its time) and the server runs
// it. The writer holds tx's connection from the first send to wait, and
// stops at its first failure; every chunk after that is dropped (tx is
// rolled back anyway), and send and wait report the failure.
type chunkWriter struct {
	chunks chan *pgx.Batch
	done   chan struct{} // closed once the writer has stopped
	err    error         // the writer's failure, read once done is closed
}

// send hands q to the writer, starting one on tx if none runs; it waits
// while the writer is busy with the chunk before.
func (w *chunkWriter) send(ctx context.Context, tx pgx.Tx, q *pgx.Batch) error {
	if q.Len() == 0 {
		return nil
	}
	if w.chunks == nil {
		w.chunks, w.done = make(chan *pgx.Batch), make(chan struct{})
		go w.write(ctx, tx, w.chunks)
	}
	select {
	case w.chunks <- q:
		return nil
	case <-w.done:
		return w.err
	}
}

// write sends each chunk of chunks on tx once the server has run the one
// before.
func (w *chunkWriter) write(ctx context.Context, tx pgx.Tx, chunks <-chan *pgx.Batch) {
	defer close(w.done)
	var sent pgx.BatchResults
	for q := range chunks {
		if sent != nil {
			if w.err = sent.Close(); w.err != nil {
				return
			}
		}
		sent = tx.SendBatch(ctx, q)
	}
	if sent != nil {
		w.err = sent.Close()
	}
}

// wait lets the writer send what it was given and stop, and reports its
// failure, if any: tx's connection is free again. The results of the
// chunks (the facts a link resolves, the notifications counted) are read
// by then.
func (w *chunkWriter) wait() error {
	if w.chunks == nil {
		return nil
	}
	close(w.chunks)
	<-w.done
	w.chunks = nil
	return w.err
}

// close gives the connection back after a failure (its error is the one
// fold returns already).
func (w *chunkWriter) close() { _ = w.wait() }

// loadStates reads the stored state and entitlement timeline of customers
// from schema; customers without rows get an empty state.
func loadStates(ctx context.Context, tx pgx.Tx, schema string, customers []domain.CustomerKey) (map[domain.CustomerKey]*domain.CustomerState,
	map[domain.CustomerKey]timeline, error) {
	return loadStatesOf(ctx, tx, schema, customers, customers, customers)
}

// loadStatesOf is loadStates reading the charges of withCharges and the
// disputes of withDisputes alone, customers among customers; the states of
// the others hold none. A fold reads a customer's stored charges and
// disputes only to fold a charge or dispute fact (see customersWith), and
// most batches hold none: their selects are not sent.
func loadStatesOf(ctx context.Context, tx pgx.Tx, schema string, customers, withCharges, withDisputes []domain.CustomerKey) (
	map[domain.CustomerKey]*domain.CustomerState, map[domain.CustomerKey]timeline, error) {
	states := make(map[domain.CustomerKey]*domain.CustomerState, len(customers))
	timelines := make(map[domain.CustomerKey]timeline, len(customers))
	for _, k := range customers {
		states[k] = &domain.CustomerState{}
	}
	if len(customers) == 0 {
		return states, timelines, nil
	}
	key := func(account, id string) domain.CustomerKey { return domain.CustomerKey{Account: account, ID: id} }
	var b pgx.Batch
	queueCustomPlans(&b, func() {
		customersTable.queueLoad(&b, schema, customers, func(r customerRow) {
			states[key(r.Account, r.ID)], timelines[key(r.Account, r.ID)] = r.state(), r.Timeline
		})
		subscriptionsTable.queueLoad(&b, schema, customers, func(s domain.Subscription) {
			objects(states[key(s.Account, s.CustomerID)]).Subscriptions[s.ID] = s
		})
		invoicesTable.queueLoad(&b, schema, customers, func(i domain.Invoice) {
			objects(states[key(i.Account, i.CustomerID)]).Invoices[i.ID] = i
		})
		chargesTable.queueLoad(&b, schema, withCharges, func(c domain.Charge) {
			objects(states[key(c.Account, c.CustomerID)]).Charges[c.ID] = c
		})
		disputesTable.queueLoad(&b, schema, withDisputes, func(d domain.Dispute) {
			objects(states[key(d.Account, d.CustomerID)]).Disputes[d.ID] = d
		})
	})
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, nil, fmt.Errorf("load read model %s: %w", schema, err)
	}
	return states, timelines, nil
}

// objects readies the object maps of s, which the customers row left nil.
// The customers row is selected first, so s is never replaced afterwards.
func objects(s *domain.CustomerState) *domain.CustomerState {
	if s.Subscriptions == nil {
		s.Subscriptions = map[string]domain.Subscription{}
		s.Invoices = map[string]domain.Invoice{}
		s.Charges = map[string]domain.Charge{}
		s.Disputes = map[string]domain.Dispute{}
	}
	return s
}

// subscriptionChanged reports whether the row of a subscription must be
// written: its current snapshot or the snapshots it was chosen from changed
// (a same-second snapshot that did not win must still be stored). The sets
// only grow or are replaced by another second's, so lengths and heads tell.
func subscriptionChanged(a, b domain.Subscription) bool {
	sa, sb := a.Snapshots, b.Snapshots
	return a.LastEventID != b.LastEventID || len(sa.Latest) != len(sb.Latest) || len(sa.Before) != len(sb.Before) ||
		(len(sa.Before) > 0 && sa.Before[0].LastEventID != sb.Before[0].LastEventID)
}

// appendChanged appends to rows the objects of after that are new or differ
// from their counterpart in before.
func appendChanged[T any](rows []T, before, after map[string]T, differ func(a, b T) bool) []T {
	for id, v := range after {
		if old, ok := before[id]; !ok || differ(old, v) {
			rows = append(rows, v)
		}
	}
	return rows
}

// queueAPIVersions records the API versions of b's events in schema's
// api_versions (ledger projections status lists them), each with the least
// event id seen: idempotent and order independent, like the fold.
func queueAPIVersions(b *pgx.Batch, schema string, versions map[string]versionSeen) {
	rows := make([]report.APIVersion, 0, len(versions))
	for v, seen := range versions {
		rows = append(rows, report.APIVersion{Version: v, Tested: domain.TestedAPIVersion(v), FirstEventID: seen.firstEventID})
	}
	apiVersionsTable.queueInsert(b, schema, rows,
		"ON CONFLICT (api_version) DO UPDATE SET first_event_id = least(api_versions.first_event_id, EXCLUDED.first_event_id)")
}

func queueDeadLetters(b *pgx.Batch, p Projection, schema string, letters []deadLetter) {
	if len(letters) == 0 {
		return
	}
	var (
		ids, types, errs, streams []string
		commits, prepares         []uint64
		versions                  []int64
	)
	for _, l := range letters {
		ids, types, errs = append(ids, l.eventID), append(types, l.eventType), append(errs, l.err)
		commits, prepares = append(commits, l.position.Commit), append(prepares, l.position.Prepare)
		streams, versions = append(streams, l.stream), append(versions, l.streamVersion)
	}
	b.Queue(`INSERT INTO projection_dead_letters
       (projection, version, schema_name, event_id, position, prepare, event_type, error, stream, stream_version)
SELECT $1, $2, $3, * FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[])
ON CONFLICT (schema_name, event_id) DO NOTHING`, p.Name, p.Version, schema, ids, commits, prepares, types, errs, streams, versions)
}
