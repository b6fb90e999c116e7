package projections

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
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
// do the link of the next part and the load of its customers, sent ahead
// of the rows of the part being folded (prefetch): the next part's fold
// starts once this one's is done, while the server still writes its rows,
// from states that the load read before them and that carry takes where
// those rows changed them. Unless the fold reads a customer's history: the
// history is read with the links of the batches folded, and the next
// part's would be there too; then the next part is linked and loaded once
// this one's rows are written. Nothing else of a fold reads the tables of
// links, and the link writes nothing else, so either way each part sees
// what it would as a batch.
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
	cur, err := p.states.loadPart(ctx, tx, schema, parts[0])
	if err != nil {
		return err
	}
	for i, part := range parts {
		var next *partStates
		if i+1 < len(parts) && !readsHistory(part, cur) {
			if next, err = w.prefetch(ctx, tx, schema, parts[i+1]); err != nil {
				return fmt.Errorf("load read model %s: %w", schema, err)
			}
		}
		claimed, err := foldPart(ctx, tx, &w, p, schema, part, cur, &b.notified)
		if err != nil {
			return err
		}
		switch {
		case i+1 == len(parts):
		case next != nil:
			if err := w.await(next.loaded); err != nil {
				return fmt.Errorf("load read model %s: %w", schema, err)
			}
			next.carry(cur, claimed)
			cur = next
		default:
			if err := w.wait(); err != nil {
				return fmt.Errorf("write read model %s: %w", schema, err)
			}
			if err := link(ctx, tx, schema, parts[i+1]); err != nil {
				return err
			}
			if cur, err = loadPart(ctx, tx, schema, parts[i+1]); err != nil {
				return err
			}
		}
	}
	if err := w.wait(); err != nil {
		return fmt.Errorf("write read model %s: %w", schema, err)
	}
	return nil
}

// partStates are the states of the customers of a part of a fold, as its
// fold starts and, once folded, as it left them.
type partStates struct {
	ids               []domain.CustomerKey // the part's customers (batch.customers)
	charges, disputes []domain.CustomerKey // those of ids whose states hold their charges, disputes (batch.customersWith)
	states            map[domain.CustomerKey]*domain.CustomerState
	timelines         map[domain.CustomerKey]timeline
	loaded            chan struct{} // closed once the states are read, when loaded by a writer (prefetch)
}

// queueLoad queues in q the load of the states of b's customers into ps,
// which holds them once q's results are read.
func (ps *partStates) queueLoad(q *pgx.Batch, schema string, b *batch) {
	ps.ids = b.customers()
	ps.charges, ps.disputes = b.customersWith(ps.ids)
	ps.states, ps.timelines = queueLoadStates(q, schema, ps.ids, ps.charges, ps.disputes)
}

// loadPart loads the states of b's customers from schema, within tx.
func loadPart(ctx context.Context, tx pgx.Tx, schema string, b *batch) (*partStates, error) {
	var (
		q  pgx.Batch
		ps partStates
	)
	ps.queueLoad(&q, schema, b)
	if err := tx.SendBatch(ctx, &q).Close(); err != nil {
		return nil, fmt.Errorf("load read model %s: %w", schema, err)
	}
	return &ps, nil
}

// carry makes ps, loaded before the rows of the part before (prev, folded)
// were written and after those of every part before it, what tx holds once
// they are: a customer prev folded is as prev left it, but for charges
// (disputes) that prev's state does not hold and ps needs, which prev did
// not change; and no state holds an object that prev wrote as another
// customer's (claimed, from foldPart), whose upsert took it.
func (ps *partStates) carry(prev *partStates, claimed map[objectKey]string) {
	holds := func(ids []domain.CustomerKey, k domain.CustomerKey) bool {
		_, ok := slices.BinarySearchFunc(ids, k, domain.CustomerKey.Compare)
		return ok
	}
	for _, k := range ps.ids {
		s := ps.states[k]
		if was, ok := prev.states[k]; ok {
			// A copy: prev's rows, which the writer may not have encoded
			// yet, point into its state (customerRow.LastEventCreated) and
			// share its timeline's array, which advance writes to.
			c := *was
			if holds(ps.charges, k) && !holds(prev.charges, k) {
				c.Charges = objects(s).Charges
			}
			if holds(ps.disputes, k) && !holds(prev.disputes, k) {
				c.Disputes = objects(s).Disputes
			}
			s = &c
			ps.states[k], ps.timelines[k] = s, slices.Clone(prev.timelines[k])
		}
		dropClaimed(claimed, subscriptionsTable.name, k, s.Subscriptions)
		dropClaimed(claimed, invoicesTable.name, k, s.Invoices)
		dropClaimed(claimed, chargesTable.name, k, s.Charges)
		dropClaimed(claimed, disputesTable.name, k, s.Disputes)
	}
}

// dropClaimed deletes from objects, customer k's of table, those that
// claimed names another customer's.
func dropClaimed[T any](claimed map[objectKey]string, table string, k domain.CustomerKey, objects map[string]T) {
	for id := range objects {
		if owner, ok := claimed[objectKey{table: table, account: k.Account, id: id}]; ok && owner != k.ID {
			delete(objects, id)
		}
	}
}

// readsHistory reports whether the fold of the customers of b, whose stored
// states are ps, reads the history of one (foldCustomer's late facts).
func readsHistory(b *batch, ps *partStates) bool {
	for _, id := range ps.ids {
		if !lateFact(ps.states[id], b.facts[id]).IsZero() {
			return true
		}
	}
	return false
}

// foldPart folds b, linked, into the states of its customers ps, loaded,
// and sends their rows through w in rounds, the last with b's dead letters
// and API versions; the notifications added are counted in added. It
// leaves in ps the states and timelines folded, and returns the customer
// of each object row it wrote.
func foldPart(ctx context.Context, tx pgx.Tx, w *chunkWriter, p Projection, schema string, b *batch, ps *partStates,
	added *int64) (map[objectKey]string, error) {
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
	// The objects written so far (see claimOnce), and by which customer.
	claimed := map[objectKey]string{}
	// round sends the rows of the customers folded since the round before,
	// and with the last one b's dead letters and API versions.
	round := func(last bool) error {
		if err := cmp.Or(claimOnce(claimed, subscriptionsTable, subscriptions), claimOnce(claimed, invoicesTable, invoices),
			claimOnce(claimed, chargesTable, charges), claimOnce(claimed, disputesTable, disputes)); err != nil {
			return fmt.Errorf("write read model %s: %w", schema, err)
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
	for i, id := range ps.ids {
		s := ps.states[id]
		before := cloneState(s)
		var tl timeline
		tl, err = foldCustomer(ctx, &notes, s, ps.timelines[id], b.facts[id], eventType, func(ctx context.Context) ([]domain.Fact, error) {
			if err := w.wait(); err != nil { // the read below needs tx's connection
				return nil, fmt.Errorf("write read model %s: %w", schema, err)
			}
			return customerFacts(ctx, tx, p.log, schema, id, p.Plans, upTo)
		})
		if err != nil {
			return nil, err
		}
		ps.timelines[id] = tl
		p.states.folded(id, s, tl)
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
		if len(customers) == p.writeChunk() && i < len(ps.ids)-1 {
			if err := round(false); err != nil {
				return nil, err
			}
		}
	}
	return claimed, round(true)
}

// errClaimedTwice reports that two customers of a batch claim one object:
// one upsert of both rows fails with SQLSTATE 21000, and so does a fold
// that writes them in two rounds (claimOnce), so that the batch is bisected
// and the object ends with the customer later in the log (isDataError).
var errClaimedTwice = errors.New("two customers of the batch claim one object")

// claimOnce notes in claimed the objects of rows, the rows of t that a
// round of a fold writes, with their customers, and fails with
// errClaimedTwice for one that an earlier round (or this one) wrote:
// otherwise the later round's customer, by key order, not the later
// event's, would keep the row.
func claimOnce[T any](claimed map[objectKey]string, t table[T], rows []T) error {
	for i := range rows {
		key := rowKey(t, &rows[i])
		k := objectKey{table: t.name, account: key.account, id: key.object}
		if _, ok := claimed[k]; ok {
			return fmt.Errorf("%w: %s %s", errClaimedTwice, t.name, k.id)
		}
		claimed[k] = objectCustomer(t, &rows[i])
	}
	return nil
}

// objectCustomer is the customer_id of row, a row of t, a table of objects.
func objectCustomer[T any](t table[T], row *T) string {
	fields := t.fields(row)
	for i, c := range t.columns {
		if c.name == "customer_id" {
			return *fields[i].(*string)
		}
	}
	panic("table " + t.name + " has no customer_id")
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
// rolled back anyway), and send, await and wait report the failure.
type chunkWriter struct {
	chunks chan chunk
	done   chan struct{} // closed once the writer has stopped
	err    error         // the writer's failure, read once done is closed
}

// chunk is what the writer sends at once: the batch that statements makes,
// which it calls once the chunk before has run.
type chunk struct {
	statements func() *pgx.Batch
	ran        chan struct{} // closed once the batch has run, when not nil
}

// writerQueue is how many chunks the writer may hold, beyond the one it
// sends: the link and load that prefetch hands it, so that the fold does
// not wait for the writer while it writes the part before.
const writerQueue = 2

// send hands q to the writer, starting one on tx if none runs; it waits
// while the writer holds writerQueue chunks.
func (w *chunkWriter) send(ctx context.Context, tx pgx.Tx, q *pgx.Batch) error {
	if q.Len() == 0 {
		return nil
	}
	return w.sendChunk(ctx, tx, chunk{statements: func() *pgx.Batch { return q }})
}

func (w *chunkWriter) sendChunk(ctx context.Context, tx pgx.Tx, c chunk) error {
	if w.chunks == nil {
		w.chunks, w.done = make(chan chunk, writerQueue), make(chan struct{})
		go w.write(ctx, tx, w.chunks)
	}
	select {
	case w.chunks <- c:
		return nil
	case <-w.done:
		return w.err
	}
}

// prefetch hands the writer the link of b, the next part of a fold, and
// the load of its customers' states once linked (the link resolves facts
// of customers), ahead of the rows of the part being folded; the states
// returned are filled once their loaded is closed (await).
func (w *chunkWriter) prefetch(ctx context.Context, tx pgx.Tx, schema string, b *batch) (*partStates, error) {
	var q pgx.Batch
	queueLink(&q, schema, b)
	if err := w.send(ctx, tx, &q); err != nil {
		return nil, err
	}
	ps := &partStates{loaded: make(chan struct{})}
	load := func() *pgx.Batch {
		var q pgx.Batch
		ps.queueLoad(&q, schema, b)
		return &q
	}
	if err := w.sendChunk(ctx, tx, chunk{statements: load, ran: ps.loaded}); err != nil {
		return nil, err
	}
	return ps, nil
}

// write sends each chunk of chunks on tx once the server has run the one
// before, and reads its results.
func (w *chunkWriter) write(ctx context.Context, tx pgx.Tx, chunks <-chan chunk) {
	defer close(w.done)
	for c := range chunks {
		if q := c.statements(); q.Len() > 0 {
			if w.err = tx.SendBatch(ctx, q).Close(); w.err != nil {
				return
			}
		}
		if c.ran != nil {
			close(c.ran)
		}
	}
}

// await waits until ran, a chunk's, is closed, and reports the writer's
// failure if it stopped before.
func (w *chunkWriter) await(ran <-chan struct{}) error {
	select {
	case <-ran:
		return nil
	case <-w.done:
		select {
		case <-ran:
			return nil
		default:
			return w.err
		}
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
	var b pgx.Batch
	states, timelines := queueLoadStates(&b, schema, customers, withCharges, withDisputes)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, nil, fmt.Errorf("load read model %s: %w", schema, err)
	}
	return states, timelines, nil
}

// queueLoadStates queues in b the selects of loadStatesOf, whose states
// it returns, filled as b's results are read.
func queueLoadStates(b *pgx.Batch, schema string, customers, withCharges, withDisputes []domain.CustomerKey) (
	map[domain.CustomerKey]*domain.CustomerState, map[domain.CustomerKey]timeline) {
	states := make(map[domain.CustomerKey]*domain.CustomerState, len(customers))
	timelines := make(map[domain.CustomerKey]timeline, len(customers))
	for _, k := range customers {
		states[k] = &domain.CustomerState{}
	}
	if len(customers) == 0 {
		return states, timelines
	}
	key := func(account, id string) domain.CustomerKey { return domain.CustomerKey{Account: account, ID: id} }
	queueCustomPlans(b, func() {
		customersTable.queueLoad(b, schema, customers, func(r customerRow) {
			states[key(r.Account, r.ID)], timelines[key(r.Account, r.ID)] = r.state(), r.Timeline
		})
		subscriptionsTable.queueLoad(b, schema, customers, func(s domain.Subscription) {
			objects(states[key(s.Account, s.CustomerID)]).Subscriptions[s.ID] = s
		})
		invoicesTable.queueLoad(b, schema, customers, func(i domain.Invoice) {
			objects(states[key(i.Account, i.CustomerID)]).Invoices[i.ID] = i
		})
		chargesTable.queueLoad(b, schema, withCharges, func(c domain.Charge) {
			objects(states[key(c.Account, c.CustomerID)]).Charges[c.ID] = c
		})
		disputesTable.queueLoad(b, schema, withDisputes, func(d domain.Dispute) {
			objects(states[key(d.Account, d.CustomerID)]).Disputes[d.ID] = d
		})
	})
	return states, timelines
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
