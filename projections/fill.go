package projections

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"runtime"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// The fill of a new schema (a blue/green build from position 0) does not
// load and upsert rows batch by batch as the Runner must: nothing reads the
// schema before the swap, so it reads the log in chunks of fillChunk
// records, folds every customer's state in memory, and writes the final
// rows with COPY: at the end, and whenever fillMaxObjects objects (customers
// and their subscriptions, invoices, charges and disputes) are held, those
// of the customers seen least recently, down to half of that. A customer
// whose rows were written already and who appears again is loaded back,
// folded on, and written again with an upsert. So is an object row whose
// key an earlier flush may have written (another customer claimed the
// object): the fill keeps a hash of the key of every object row it wrote
// (f.written, about 20 bytes a row), and the others go straight in with
// COPY, as the first flush's all do.
//
// Links and pending disputes and invoice payments are held in memory
// (heldLinks: about half a row of links an event, 100 MB more heap at 1M
// events) and written with COPY at the end, into tables made without their
// keys, which are built once the rows are in. Each chunk is linked just
// before its fold, as the incremental fold links a batch, so a late fact's
// history holds the streams linked up to its own chunk. Dead letters and
// API versions are written chunk by chunk, each chunk's while the chunk
// before folds. Poison stays isolated: an event that cannot be decoded is
// dead-lettered alone as always, and should PostgreSQL refuse a value in a
// COPY (what domain.DecodeStorable does not catch), the fill gives up and
// the schema is built again incrementally, whose bisection dead-letters the
// event that carries it.
const (
	fillChunk      = 10_000
	fillMaxObjects = 100_000
)

// errFillRefused reports that PostgreSQL refused a value of the fill's COPY.
var errFillRefused = errors.New("the read model refused a value of the fill")

// filler is the in-memory state of one fill.
type filler struct {
	b       *builder
	schema  string
	states  map[domain.CustomerKey]*domain.CustomerState
	lines   map[domain.CustomerKey]timeline // the entitlement timelines of the states held
	stored  map[domain.CustomerKey]bool     // customers whose rows are in the schema; held ones are upserted again
	written map[uint64]struct{}             // the object rows in the schema, by writtenKey
	seed    maphash.Seed                    // of writtenKey
	objects int                             // objects held in states
	touched map[objectKey]eventlog.Position
	holder  map[objectKey]string       // the customer that touched each object held last, by objectKey without its customer
	seen    map[domain.CustomerKey]int // the chunk that last named each customer held
	chunk   int                        // chunks folded
	links   *heldLinks                 // the links folded so far, written by finish
	analyze bool                       // finish analyzes each table once written
	writing chan error                 // the write of the last flush, while it runs (wait)
}

// objectKey names an object row of one customer's state, to choose between
// two customers that claim one object (the later one in the log wins, as it
// would in the incremental fold).
type objectKey struct {
	table    string
	account  string
	id       string
	customer string
}

// fill folds the whole log, up to its head (or until, when set), into the
// empty schema, and returns the position of the last record folded. With
// analyze, it analyzes the schema's tables too (builder.analyze), each as
// soon as its rows are in.
func (b *builder) fill(ctx context.Context, schema string, until *eventlog.Position, analyze bool) (eventlog.Position, error) {
	pos, err := b.fillCopy(ctx, schema, until, analyze)
	if !errors.Is(err, errFillRefused) {
		return pos, err
	}
	b.logger.WarnContext(ctx, "the read model refused a value the fill wrote; building the schema again event by event to isolate it",
		"schema", schema, "err", err)
	if err := b.dropSchema(ctx, schema); err != nil {
		return eventlog.Start, err
	}
	if _, err := b.pool.Exec(ctx, createSchemaSQL(schema)); err != nil {
		return eventlog.Start, fmt.Errorf("create schema %s: %w", schema, err)
	}
	if pos, err = b.catchUp(ctx, b.p.quiet(), schema, eventlog.Start, until); err != nil || !analyze {
		return pos, err
	}
	return pos, b.analyze(ctx, schema, viewedTables()...)
}

func (b *builder) fillCopy(ctx context.Context, schema string, until *eventlog.Position, analyze bool) (eventlog.Position, error) {
	f := &filler{b: b, schema: schema, analyze: analyze, states: map[domain.CustomerKey]*domain.CustomerState{}, lines: map[domain.CustomerKey]timeline{},
		stored: map[domain.CustomerKey]bool{}, written: map[uint64]struct{}{}, seed: maphash.MakeSeed(), touched: map[objectKey]eventlog.Position{}, holder: map[objectKey]string{}, seen: map[domain.CustomerKey]int{},
		links: newHeldLinks()}
	// The tables of links get their keys once the links are in (finish).
	var bare strings.Builder
	for _, t := range linkTables {
		fmt.Fprintf(&bare, "DROP TABLE %s.%s;\n%s", ident(schema), t.tableName(), t.bareSQL(schema))
	}
	if _, err := b.pool.Exec(ctx, bare.String()); err != nil {
		return eventlog.Start, fmt.Errorf("build %s: %w", schema, err)
	}
	chunk := cmp.Or(b.fillChunk, fillChunk)
	pos, err := b.foldStages(ctx, eventlog.Start, until, batchSizes{chunk, chunk}, f.record, func(ctx context.Context, bt *batch) (*batch, error) {
		if err := f.fold(ctx, bt); err != nil {
			return nil, err
		}
		for _, l := range bt.deadLetters {
			b.logger.ErrorContext(ctx, "projection dead-lettered an event", "schema", schema,
				"event_id", l.eventID, "event_type", l.eventType, "position", l.position.String(), "reason", l.err)
		}
		if limit := cmp.Or(b.fillMax, fillMaxObjects); f.objects >= limit {
			return bt, f.flush(ctx, limit/2)
		}
		return bt, nil
	}, f.finish)
	if werr := f.wait(); err == nil { // a flush's write that a failed fold left running
		err = werr
	}
	if err != nil {
		return eventlog.Start, fmt.Errorf("build %s: %w", schema, err)
	}
	return pos, nil
}

// record writes bt's dead letters and API versions, while the chunk before
// folds.
func (f *filler) record(ctx context.Context, bt *batch) error {
	var w pgx.Batch
	queueDeadLetters(&w, f.b.p, f.schema, bt.deadLetters)
	queueAPIVersions(&w, f.schema, bt.apiVersions)
	if w.Len() == 0 {
		return nil
	}
	return f.inTx(ctx, "dead letters of "+f.schema, func(tx pgx.Tx) error { return tx.SendBatch(ctx, &w).Close() })
}

// inTx runs write in a transaction of its own: a value PostgreSQL refuses
// fails it with errFillRefused, any other error as the write of what.
func (f *filler) inTx(ctx context.Context, what string, write func(pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, f.b.pool, write)
	if err != nil && isDataError(err) {
		return fmt.Errorf("%w: %w", errFillRefused, err)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", what, err)
	}
	return nil
}

// fold links bt in the links held (heldLinks.link), which adds the pending
// facts it resolves to bt's, then folds bt's facts into the states held,
// loading back those of the customers whose rows were written already.
func (f *filler) fold(ctx context.Context, bt *batch) error {
	f.links.link(bt)
	var reload []domain.CustomerKey
	for k := range bt.facts {
		if f.states[k] == nil && f.stored[k] {
			reload = append(reload, k)
		}
	}
	if len(reload) > 0 {
		if err := f.wait(); err != nil { // their rows may be in the write of the last flush
			return err
		}
		slices.SortFunc(reload, domain.CustomerKey.Compare)
		err := pgx.BeginFunc(ctx, f.b.pool, func(tx pgx.Tx) error {
			states, lines, err := loadStates(ctx, tx, f.schema, reload)
			for k, s := range states {
				f.states[k], f.lines[k] = s, lines[k]
				f.objects += heldObjects(s)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	at := make(map[string]eventlog.Position, len(bt.recs))
	for _, r := range bt.recs {
		at[r.ID] = r.Position
	}
	f.chunk++
	keys := bt.customers()
	states, lines := make([]*domain.CustomerState, len(keys)), make([]timeline, len(keys))
	for i, k := range keys {
		f.seen[k] = f.chunk
		s := f.states[k]
		if s == nil {
			s = &domain.CustomerState{}
			f.states[k] = s
		} else {
			f.objects -= heldObjects(s)
		}
		states[i], lines[i] = s, f.lines[k]
	}
	if err := f.foldCustomers(ctx, bt, keys, states, lines); err != nil {
		return err
	}
	var claims []objectKey
	for i, k := range keys {
		s, facts := states[i], bt.facts[k]
		f.lines[k] = lines[i]
		for _, fact := range facts {
			pos, ok := at[fact.EventID]
			if !ok {
				pos = bt.last // a pending dispute or invoice payment resolved by this chunk's links
			}
			if key, ok := factObject(fact); ok {
				f.touched[key] = pos
				claims = append(claims, key)
			}
		}
		f.objects += heldObjects(s)
	}
	// Claims once every state's objects are counted: one may drop an
	// object from a state that this loop counts after the claimer's.
	for _, key := range claims {
		f.claim(key)
	}
	return nil
}

// claim makes key's customer the holder of its object if it touched the
// object last, and drops the object from the state of the customer held
// that touched it before: the incremental fold loads that customer without
// it (the later customer's upsert took its row), so that customer's next
// fold derives its plan, entitlement and access without it too.
func (f *filler) claim(key objectKey) {
	row := key
	row.customer = ""
	prev, ok := f.holder[row]
	if ok && prev != key.customer {
		was := key
		was.customer = prev
		if f.touched[key].Less(f.touched[was]) {
			return
		}
		if s := f.states[domain.CustomerKey{Account: key.account, ID: prev}]; s != nil && dropObject(s, key.table, key.id) {
			f.objects--
		}
		delete(f.touched, was)
	}
	f.holder[row] = key.customer
}

// dropObject deletes object id, a row of table, from s, and reports whether s held it.
func dropObject(s *domain.CustomerState, table, id string) bool {
	switch table {
	case subscriptionsTable.name:
		return deleteHeld(s.Subscriptions, id)
	case invoicesTable.name:
		return deleteHeld(s.Invoices, id)
	case chargesTable.name:
		return deleteHeld(s.Charges, id)
	case disputesTable.name:
		return deleteHeld(s.Disputes, id)
	}
	return false
}

func deleteHeld[T any](objects map[string]T, id string) bool {
	_, ok := objects[id]
	delete(objects, id)
	return ok
}

// foldCustomers folds bt's facts of each customer of keys into its state
// and timeline (states[i] and lines[i] are those of keys[i]), on up to
// GOMAXPROCS goroutines, each taking every n-th customer: a customer's
// facts, those of its linked streams included, are all in bt.facts[key]
// once link has run, so customers fold independently, and a chunk's fold
// is, after its decode, the build's largest share of Go CPU.
func (f *filler) foldCustomers(ctx context.Context, bt *batch, keys []domain.CustomerKey, states []*domain.CustomerState, lines []timeline) error {
	eventType, upTo := bt.eventTypes(), bt.upTo()
	workers := max(1, min(runtime.GOMAXPROCS(0), len(keys)/100))
	g, gctx := errgroup.WithContext(ctx)
	for w := range workers {
		g.Go(func() error {
			for i := w; i < len(keys); i += workers {
				k := keys[i]
				// The fill derives no notifications: the build announces
				// its final state once it is live (announceFinal).
				var err error
				lines[i], err = foldCustomer(gctx, nil, states[i], lines[i], bt.facts[k], eventType, func(ctx context.Context) ([]domain.Fact, error) {
					return historyFacts(ctx, f.b.p.log, k, f.links.linked(k), f.b.p.Plans, upTo)
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// heldObjects counts the rows s is written as.
func heldObjects(s *domain.CustomerState) int {
	return 1 + len(s.Subscriptions) + len(s.Invoices) + len(s.Charges) + len(s.Disputes)
}

// factObject names the object row fact changes, if any.
func factObject(f domain.Fact) (objectKey, bool) {
	k := objectKey{account: f.Account, customer: f.CustomerID}
	switch {
	case f.Subscription != nil:
		k.table, k.id = subscriptionsTable.name, f.Subscription.ID
	case f.Invoice != nil:
		k.table, k.id = invoicesTable.name, f.Invoice.ID
	case f.Charge != nil:
		k.table, k.id = chargesTable.name, f.Charge.ID
	case f.Dispute != nil:
		k.table, k.id = disputesTable.name, f.Dispute.ID
	case f.InvoicePayment != nil:
		k.table, k.id = invoicesTable.name, f.InvoicePayment.InvoiceID
	default:
		return k, false
	}
	return k, true
}

// flush writes the rows of the states held, COPY for customers new to the
// schema and an upsert for those loaded back, and lets them go: those of
// the customers seen least recently, until at most keep objects are held.
// The write goes on while the fold does (wait waits for it): it returns
// the error of the flush before, whose write it waits for first.
func (f *filler) flush(ctx context.Context, keep int) error {
	if len(f.states) == 0 {
		return nil
	}
	var fresh, again rows
	keys := make([]domain.CustomerKey, 0, len(f.states))
	for k := range f.states {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b domain.CustomerKey) int { return cmp.Or(cmp.Compare(f.seen[a], f.seen[b]), a.Compare(b)) })
	for held, i := f.objects, 0; keep > 0 && i < len(keys); i++ {
		if held <= keep {
			keys = keys[:i]
			break
		}
		held -= heldObjects(f.states[keys[i]])
	}
	slices.SortFunc(keys, domain.CustomerKey.Compare)
	owners := map[objectKey]objectKey{} // an object's row without its customer → the key of the customer that wrote it last
	for _, k := range keys {
		s := f.states[k]
		to := &fresh
		if f.stored[k] {
			to = &again
		}
		to.customers = append(to.customers, newCustomerRow(s, f.lines[k]))
		to.subscriptions = appendOwned(to.subscriptions, f, owners, subscriptionsTable.name, k, s.Subscriptions)
		to.invoices = appendOwned(to.invoices, f, owners, invoicesTable.name, k, s.Invoices)
		to.charges = appendOwned(to.charges, f, owners, chargesTable.name, k, s.Charges)
		to.disputes = appendOwned(to.disputes, f, owners, disputesTable.name, k, s.Disputes)
	}
	fresh.dropDisowned(owners)
	again.dropDisowned(owners)
	// Each table in a transaction of its own, all at once: the database's
	// writes of them use every core, beside the fold of the next chunks.
	// The customers are new to the schema; their objects are too, unless
	// another customer claimed one in an earlier flush (f.written, read
	// here and noted as the write starts: the next flush writes once it
	// has committed, and a write that fails fails the fill).
	subscriptions, noteSubscriptions := objectWrites(f, subscriptionsTable, fresh.subscriptions, again.subscriptions)
	invoices, noteInvoices := objectWrites(f, invoicesTable, fresh.invoices, again.invoices)
	charges, noteCharges := objectWrites(f, chargesTable, fresh.charges, again.charges)
	disputes, noteDisputes := objectWrites(f, disputesTable, fresh.disputes, again.disputes)
	if err := f.wait(); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, write := range []func(context.Context, pgx.Tx) error{
		func(ctx context.Context, tx pgx.Tx) error {
			if err := copyRows(ctx, tx, f.schema, customersTable, fresh.customers, false); err != nil {
				return err
			}
			return upsertRows(ctx, tx, f.schema, customersTable, again.customers)
		},
		subscriptions, invoices, charges, disputes,
	} {
		g.Go(func() error {
			return f.inTx(gctx, "read model "+f.schema, func(tx pgx.Tx) error { return write(gctx, tx) })
		})
	}
	f.writing = make(chan error, 1)
	go func() { f.writing <- g.Wait() }()
	noteSubscriptions()
	noteInvoices()
	noteCharges()
	noteDisputes()
	for _, k := range keys {
		s := f.states[k]
		f.objects -= heldObjects(s)
		forget(f, k, subscriptionsTable.name, s.Subscriptions)
		forget(f, k, invoicesTable.name, s.Invoices)
		forget(f, k, chargesTable.name, s.Charges)
		forget(f, k, disputesTable.name, s.Disputes)
		delete(f.states, k)
		delete(f.lines, k)
		delete(f.seen, k)
		f.stored[k] = true
	}
	return nil
}

// wait waits for the write of the last flush and returns its error.
func (f *filler) wait() error {
	if f.writing == nil {
		return nil
	}
	err := <-f.writing
	f.writing = nil
	return err
}

// finish writes the states held and the links, each table of links in a
// transaction of its own, all at once: the database's COPYs use every core.
// With f.analyze, each table is analyzed once written, while the others
// are still being written.
func (f *filler) finish(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := f.flush(gctx, 0); err != nil {
			return err
		}
		if err := f.wait(); err != nil || !f.analyze {
			return err
		}
		return f.b.analyze(gctx, f.schema, tableNames(customerTables)...)
	})
	for _, w := range f.links.writes(f.schema) {
		g.Go(func() error {
			if err := f.inTx(gctx, "links of "+f.schema, func(tx pgx.Tx) error { return w.write(gctx, tx) }); err != nil || !f.analyze {
				return err
			}
			return f.b.analyze(gctx, f.schema, w.table)
		})
	}
	return g.Wait()
}

// forget drops what f.touched and f.holder hold of the objects of customer k.
func forget[T any](f *filler, k domain.CustomerKey, table string, objects map[string]T) {
	for id := range objects {
		delete(f.touched, objectKey{table: table, account: k.Account, id: id, customer: k.ID})
		if row := (objectKey{table: table, account: k.Account, id: id}); f.holder[row] == k.ID {
			delete(f.holder, row)
		}
	}
}

// rows are the rows of one flush, by table.
type rows struct {
	customers     []customerRow
	subscriptions []domain.Subscription
	invoices      []domain.Invoice
	charges       []domain.Charge
	disputes      []domain.Dispute
}

// dropDisowned drops the object rows another customer wrote later.
func (r *rows) dropDisowned(owners map[objectKey]objectKey) {
	r.subscriptions = slices.DeleteFunc(r.subscriptions, func(s domain.Subscription) bool {
		return disowned(owners, subscriptionsTable.name, s.Account, s.ID, s.CustomerID)
	})
	r.invoices = slices.DeleteFunc(r.invoices, func(i domain.Invoice) bool {
		return disowned(owners, invoicesTable.name, i.Account, i.ID, i.CustomerID)
	})
	r.charges = slices.DeleteFunc(r.charges, func(c domain.Charge) bool {
		return disowned(owners, chargesTable.name, c.Account, c.ID, c.CustomerID)
	})
	r.disputes = slices.DeleteFunc(r.disputes, func(d domain.Dispute) bool {
		return disowned(owners, disputesTable.name, d.Account, d.ID, d.CustomerID)
	})
}

func disowned(owners map[objectKey]objectKey, table, account, id, customer string) bool {
	owner, ok := owners[objectKey{table: table, account: account, id: id}]
	return ok && owner.customer != customer
}

// appendOwned appends the objects of customer k to out, recording in owners
// which customer touched each last (by log position), so that an object two
// customers claim is written once, as the incremental fold leaves it.
func appendOwned[T any](out []T, f *filler, owners map[objectKey]objectKey, table string, k domain.CustomerKey, objects map[string]T) []T {
	for id, v := range objects {
		row := objectKey{table: table, account: k.Account, id: id}
		mine := objectKey{table: table, account: k.Account, id: id, customer: k.ID}
		if prev, ok := owners[row]; ok {
			if !f.touched[prev].Less(f.touched[mine]) {
				continue
			}
		}
		owners[row] = mine
		out = append(out, v)
	}
	return out
}

// objectWrites returns the write of the object rows of t that a flush
// holds: fresh, of customers new to the schema, with copyRows (straight
// into the table those whose key no flush wrote before, f.written, through
// the upsert those whose key one may have) and again, of customers loaded
// back, with the upsert; and note, to call once the write has started
// (flush), which notes the keys of all of them in f.written.
func objectWrites[T any](f *filler, t table[T], fresh, again []T) (write func(context.Context, pgx.Tx) error, note func()) {
	var claimed []T
	unclaimed := slices.DeleteFunc(fresh, func(row T) bool {
		if _, ok := f.written[writtenKey(f, t, &row)]; ok {
			claimed = append(claimed, row)
			return true
		}
		return false
	})
	write = func(ctx context.Context, tx pgx.Tx) error {
		if err := copyRows(ctx, tx, f.schema, t, unclaimed, false); err != nil {
			return err
		}
		if err := copyRows(ctx, tx, f.schema, t, claimed, true); err != nil {
			return err
		}
		return upsertRows(ctx, tx, f.schema, t, again)
	}
	return write, func() {
		noteWritten(f, t, unclaimed)
		noteWritten(f, t, again)
	}
}

// upsertRows writes rows into schema's table with its upsert.
func upsertRows[T any](ctx context.Context, tx pgx.Tx, schema string, t table[T], rows []T) error {
	var w pgx.Batch
	t.queueUpsert(&w, schema, rows)
	if w.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, &w).Close()
}

// noteWritten records in f.written that the rows of t are in the schema.
func noteWritten[T any](f *filler, t table[T], rows []T) {
	for i := range rows {
		f.written[writtenKey(f, t, &rows[i])] = struct{}{}
	}
}

// writtenKey is the hash under which f.written holds the key of row, an
// object row of t: its table and its primary key's columns (t.key; text in
// every object table: account and id).
func writtenKey[T any](f *filler, t table[T], row *T) uint64 {
	var h maphash.Hash
	h.SetSeed(f.seed)
	h.WriteString(t.name)
	for _, field := range t.fields(row)[:t.key] {
		h.WriteByte(0)
		h.WriteString(*field.(*string))
	}
	return h.Sum64()
}

// copyRows writes rows into schema's table with COPY. With replace, a row
// whose key is stored already (an object another customer claimed in an
// earlier flush) replaces it: the rows go through a temporary table.
func copyRows[T any](ctx context.Context, tx pgx.Tx, schema string, t table[T], rows []T, replace bool) error {
	if len(rows) == 0 {
		return nil
	}
	into := pgx.Identifier{schema, t.name}
	if replace {
		into = pgx.Identifier{"fill_" + t.name}
		cols := make([]string, len(t.columns))
		for i, c := range t.columns {
			cols[i] = c.name + " " + c.sqlType()
		}
		if _, err := tx.Exec(ctx, "CREATE TEMPORARY TABLE "+into.Sanitize()+" ("+strings.Join(cols, ", ")+") ON COMMIT DROP"); err != nil {
			return fmt.Errorf("copy %s.%s: %w", schema, t.name, err)
		}
	}
	err := copyFrom(ctx, tx, into, t, rows)
	if err == nil && replace {
		_, err = tx.Exec(ctx, t.insertSQL(schema, into.Sanitize(), t.upsert()))
	}
	if err != nil {
		return fmt.Errorf("copy %s.%s: %w", schema, t.name, err)
	}
	return nil
}
