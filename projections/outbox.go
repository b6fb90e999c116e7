package projections

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// The outbox (DESIGN §12): fold derives notifications in the transaction of
// the batch and writes them to the notifications table. Subscription status
// changes, invoices paid and failed and disputes opened come from the
// transition each fact makes to a customer's state, one fact at a time in
// log order; entitlement changes from the customer's timeline (timeline.go).
//
// A notification's id is a hash of its type, customer and what identifies
// the transition (the invoice for invoice.paid, the dispute for
// charge.dispute.opened, the invoice and attempt for invoice.payment_failed,
// the subscription and causing event for subscription.status_changed, the
// after-state and occurrence for customer.entitlement_changed), never of the
// batch or the time it was derived, and the insert keeps the row already
// there (it inserts new ids only), so every delivery cursor (a position)
// stays valid. A build writes none while it folds and, once live, inserts what
// its final state implies (announceFinal), which the live runner derived
// already when the logic is the same.

// notificationLockClass is the transaction-scoped advisory lock that every
// writer of notifications holds from taking positions to its commit, so that
// positions commit in order: a reader that has seen position P never later
// meets a row below P (the live runner and a rebuild both write). Under it
// no other writer inserts, and the insert (a statement of a read-committed
// transaction, after the lock's) sees what every earlier holder committed,
// so its NOT EXISTS is all it needs to insert new ids only: no ON CONFLICT
// arbiter, whose speculative insertion cost each row a second probe of the
// id index and one more WAL record.
const notificationLockClass = 0x4c4e5446 // 'LNTF'

// NotificationsChannel is the LISTEN channel a commit of new notifications
// signals.
const NotificationsChannel = "ledger_notifications"

// applyNoting applies f to s and appends to *notes the notifications its
// transition makes, but for entitlement changes, which follow the timeline
// (timeline.go); with notes nil, it only applies f. eventType names the
// type of a batch's event by id.
func applyNoting(notes *[]notify.Notification, s *domain.CustomerState, f domain.Fact, eventType func(string) string) {
	if notes == nil {
		s.Apply(f)
		return
	}
	var oldSub domain.Subscription
	if f.Subscription != nil {
		oldSub = s.Subscriptions[f.Subscription.ID]
	}
	invoiceID := factInvoice(f)
	oldInv := s.Invoices[invoiceID]
	hadDispute := false
	if f.Dispute != nil {
		_, hadDispute = s.Disputes[f.Dispute.ID]
	}
	s.Apply(f)
	add := func(typ, key string, data any) {
		*notes = append(*notes, notify.Notification{
			ID: notificationID(typ, s.Account, s.Customer.ID, key), Type: typ, Account: s.Account, CustomerID: s.Customer.ID,
			EventIDs: []string{f.EventID}, OccurredAt: f.Created.UTC(), Data: mustJSON(data),
		})
	}
	if f.Subscription != nil {
		sub := s.Subscriptions[f.Subscription.ID]
		if sub.Status != oldSub.Status {
			add(notify.SubscriptionStatus, sub.ID+"/"+f.EventID,
				notify.SubscriptionStatusData{SubscriptionID: sub.ID, Before: oldSub.Status, After: sub.Status})
		}
	}
	if invoiceID != "" {
		inv := s.Invoices[invoiceID]
		switch {
		case inv.Status == "paid" && oldInv.Status != "paid":
			add(notify.InvoicePaid, inv.ID, invoiceData(inv))
		case inv.Status != "paid" && inv.AttemptCount > oldInv.AttemptCount && eventType(f.EventID) == "invoice.payment_failed":
			add(notify.InvoicePaymentFailed, inv.ID+"/"+itoa(inv.AttemptCount), invoiceData(inv))
		}
	}
	if f.Dispute != nil && !hadDispute {
		d := s.Disputes[f.Dispute.ID]
		add(notify.DisputeOpened, d.ID, notify.DisputeData{DisputeID: d.ID, ChargeID: d.ChargeID, Status: d.Status, Amount: d.Amount, Currency: d.Currency})
	}
}

// mustJSON encodes the plain structs of notification data, which never fails.
func mustJSON(data any) []byte {
	raw, _ := json.Marshal(data)
	return raw
}

// factInvoice is the invoice f is about, "" when none.
func factInvoice(f domain.Fact) string {
	switch {
	case f.Invoice != nil:
		return f.Invoice.ID
	case f.InvoicePayment != nil:
		return f.InvoicePayment.InvoiceID
	}
	return ""
}

func entitlementOf(s *domain.CustomerState) notify.Entitlement {
	e := notify.Entitlement{Entitled: s.Entitled, Plan: s.Plan, AccessUntil: s.AccessUntil}
	if e.Plan == "" { // a state never derived: nothing seen of the customer yet
		e.Plan = domain.FreePlan
	}
	if e.AccessUntil != nil {
		t := e.AccessUntil.UTC()
		e.AccessUntil = &t
	}
	return e
}

func invoiceData(inv domain.Invoice) notify.InvoiceData {
	return notify.InvoiceData{InvoiceID: inv.ID, SubscriptionID: inv.SubscriptionID, Status: inv.Status, AmountDue: inv.AmountDue,
		AmountPaid: inv.AmountPaid, Currency: inv.Currency, AttemptCount: inv.AttemptCount}
}

// notificationID is the stable id of a transition: ntf_ and 128 bits of
// SHA-256 over what identifies it.
func notificationID(typ, account, customer, key string) string {
	h := sha256.Sum256([]byte(typ + "\x00" + account + "\x00" + customer + "\x00" + key))
	return "ntf_" + hex.EncodeToString(h[:16])
}

// arrayLiteral is ss as the text of a PostgreSQL text[], every element
// quoted, so that any string (commas, braces, quotes, "NULL") reads back
// as itself.
func arrayLiteral(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, c := range []byte(s) {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// eventTypes returns the lookup of the type of b's events by id, safe for
// concurrent use (the fill folds customers in parallel).
func (b *batch) eventTypes() func(string) string {
	types := sync.OnceValue(func() map[string]string {
		types := make(map[string]string, len(b.recs))
		for _, r := range b.recs {
			types[r.ID] = r.Type
		}
		return types
	})
	return func(id string) string { return types()[id] }
}

// queueNotifications queues the insert of notes, new ids only, in their
// order (an id that notes repeat as its first), under
// notificationLockClass, and the signal to listeners; the rows inserted are
// added to added once the batch has run. Each
// notification's event ids travel as one text[] literal (arrayLiteral),
// which the insert casts: PostgreSQL arrays cannot be ragged, and
// unpacking a JSON array per row cost a subquery per row.
func queueNotifications(b *pgx.Batch, notes []notify.Notification, added *int64) {
	if len(notes) == 0 {
		return
	}
	var (
		ids, types, accounts, customers, events []string
		occurred                                []time.Time
		data                                    []string
	)
	seen := make(map[string]bool, len(notes))
	for _, n := range notes {
		if seen[n.ID] {
			continue
		}
		seen[n.ID] = true
		ids, types, accounts, customers = append(ids, n.ID), append(types, n.Type), append(accounts, n.Account), append(customers, n.CustomerID)
		events, occurred, data = append(events, arrayLiteral(n.EventIDs)), append(occurred, n.OccurredAt), append(data, string(n.Data))
	}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(notificationLockClass))
	// Planned for its own arguments (queueCustomPlans): a generic plan
	// settled while the outbox was small (a first start, the first minute
	// of a new database) hashes the whole table for the NOT EXISTS, every
	// batch, until autovacuum analyzes it: 130 µs a notification in
	// BenchmarkLiveFold, where the probe of the id index costs about 2.
	queueCustomPlans(b, func() { queueInsertNotifications(b, ids, types, accounts, customers, events, occurred, data, added) })
	b.Queue(`SELECT pg_notify($1, '')`, NotificationsChannel)
}

// queueInsertNotifications queues queueNotifications' insert of the
// notifications given column by column.
func queueInsertNotifications(b *pgx.Batch, ids, types, accounts, customers, events []string, occurred []time.Time, data []string, added *int64) {
	b.Queue(`INSERT INTO notifications (id, position, type, account, customer_id, event_ids, occurred_at, data)
SELECT n.id, nextval('notifications_position_seq'), n.type, n.account, n.customer_id,
       n.event_ids::text[], n.occurred_at, n.data::jsonb
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
       WITH ORDINALITY AS n(id, type, account, customer_id, event_ids, occurred_at, data, ord)
 WHERE NOT EXISTS (SELECT FROM notifications o WHERE o.id = n.id)
 ORDER BY n.ord`, ids, types, accounts, customers, events, occurred, data).Exec(func(tag pgconn.CommandTag) error {
		*added += tag.RowsAffected()
		return nil
	})
}

// announceFinal adds to the outbox, once a build made schema live, the
// notifications its final state implies: every entitlement change of every
// customer's timeline, every paid invoice, every dispute of a customer. The
// live runner announced each of them when it first held it (a timeline's
// transitions as they appear in it, an invoice when it becomes paid, which
// it stays, a dispute when it is first seen), so with the live version's
// logic nothing is added: the count says so. Subscription status changes
// and failed attempts are announced per event in log order, which the
// final state does not keep: a build does not derive them again.
//
// replaced is the live version the build's swap replaced, 0 for none. One older
// than timelineIDsSince announced entitlement changes under ids of their
// causing event: under timeline ids every one of them would be new, and
// announcing them would send every customer's whole entitlement history
// again, years old. So a build that replaces such a version announces no
// entitlement change (the live runner announces the next ones), and logs
// that it held them back.
func (b *builder) announceFinal(ctx context.Context, schema string, replaced int) error {
	if b.p.outbox != outboxBuild {
		return nil
	}
	var err error
	if replaced == 0 || replaced >= timelineIDsSince {
		err = b.announceTimelines(ctx, schema)
	} else {
		b.logger.InfoContext(ctx, "entitlement changes not announced again: the replaced version identified them by their causing event",
			"replaced_version", replaced)
	}
	if err == nil {
		// As invoiceData and applyNoting make them.
		err = b.announce(ctx, invoicesTable, schema, "status = 'paid'", notify.InvoicePaid, `SELECT `+
			notificationIDSQL("$3", "p.account", "p.customer_id", "p.invoice_id")+` AS id, p.account, p.customer_id,
       ARRAY[p.last_event_id] AS event_ids, p.last_event_created AS occurred_at,
       jsonb_build_object('invoice_id', p.invoice_id, 'subscription_id', p.subscription_id, 'status', p.status,
         'amount_due', p.amount_due, 'amount_paid', p.amount_paid, 'currency', p.currency, 'attempt_count', p.attempt_count) AS data,
       p.account AS k1, p.invoice_id AS k2, 0::bigint AS k3
  FROM page p`)
	}
	if err == nil {
		// As applyNoting makes them.
		err = b.announce(ctx, disputesTable, schema, "customer_id <> ''", notify.DisputeOpened, `SELECT `+
			notificationIDSQL("$3", "p.account", "p.customer_id", "p.dispute_id")+` AS id, p.account, p.customer_id,
       ARRAY[p.last_event_id] AS event_ids, p.last_event_created AS occurred_at,
       jsonb_build_object('dispute_id', p.dispute_id, 'charge_id', p.charge_id, 'status', p.status,
         'amount', p.amount, 'currency', p.currency) AS data,
       p.account AS k1, p.dispute_id AS k2, 0::bigint AS k3
  FROM page p`)
	}
	return err
}

// timelineIDsSince is the first BillingVersion whose entitlement changes
// are identified by their place in the customer's timeline (after-state and
// occurrence) rather than by the event that caused them: 0286a8b's, which
// BillingVersion 8 numbers (version 7, 4a21f76..9409154, still used the
// causing event's ids).
const timelineIDsSince = 8

// announceTimelines adds every transition of every customer's timeline in
// schema to the outbox, each as transition.note makes it with no events:
// the key is its after-state (untilText: the Unix second of access_until,
// or -) and occurrence, the data its before and after entitlements as the
// timeline stores them.
func (b *builder) announceTimelines(ctx context.Context, schema string) error {
	return b.announce(ctx, customersTable, schema, "true", notify.EntitlementChanged, `SELECT `+
		notificationIDSQL("$3", "p.account", "p.customer_id", `(tr.t->'after'->>'entitled') || '/' || (tr.t->'after'->>'plan') || '/' ||
         coalesce(floor(extract(epoch FROM (tr.t->'after'->>'access_until')::timestamptz))::bigint::text, '-') || '#' || (tr.t->>'occurrence')`)+
		` AS id, p.account, p.customer_id, '{}'::text[] AS event_ids, (tr.t->>'at')::timestamptz AS occurred_at,
       jsonb_build_object('before', tr.t->'before', 'after', tr.t->'after') AS data,
       p.account AS k1, p.customer_id AS k2, tr.ord AS k3
  FROM page p, jsonb_array_elements(p.entitlement_timeline) WITH ORDINALITY AS tr(t, ord)`)
}

// announcePage is how many rows of a table one transaction of announce
// derives notifications from: each holds notificationLockClass, which the
// live runner's writes of notifications wait for, for a few milliseconds.
const announcePage = 5000

// announce inserts into the outbox, new ids only, the notifications of type
// typ ($3) that notes derives from the rows of t in schema that where
// selects, a page of announcePage rows at a time in key order (b.announced
// rows, when set). notes selects from page (the page's rows) each
// notification's id, account, customer_id, event_ids, occurred_at and
// data, and k1, k2 and k3, the order its positions are taken in: k1 and k2
// the key of its row (account and t's key column), k3 its order within
// the row. The notifications are derived in SQL from the rows where they
// lie: read into Go, built and sent back, they cost a build about a fifth
// of its time (129 µs a notification at 1M events).
//
// Each page is a transaction of its own that first derives the page's
// notifications into a temporary table, then takes notificationLockClass and
// inserts them; two pages run at once, and each takes the lock only once
// the page before has committed. So the next page is derived while one is
// inserted (the inserts, under the lock, are serial by design; deriving and
// inserting in one statement kept one core busy and the other idle). Once
// it holds the lock, a page derives again the rows that a commit changed
// since it derived them (by their xmin): a live runner's batch that
// rewrote a timeline and announced its new transitions meanwhile must not
// be followed by the transitions it removed. So the page inserts what the
// rows hold once it holds the lock, as when it derived them under it.
func (b *builder) announce(ctx context.Context, t schemaTable, schema, where, typ, notes string) error {
	key := t.keyColumn()
	page := cmp.Or(b.announced, announcePage)
	// The last key of every full page, so that pages are derived without
	// waiting for the page before.
	rows, err := b.pool.Query(ctx, fmt.Sprintf(`SELECT account, id FROM (
  SELECT account, %[4]s AS id, row_number() OVER (ORDER BY account, %[4]s) AS n FROM %[1]s.%[2]s WHERE %[3]s) r
 WHERE n %% $1 = 0 ORDER BY n`, ident(schema), t.tableName(), where, key), page)
	if err != nil {
		return fmt.Errorf("announce %s of %s: %w", t.tableName(), schema, err)
	}
	var bounds []linkKey
	var bound linkKey
	if _, err := pgx.ForEachRow(rows, []any{&bound.account, &bound.object}, func() error {
		bounds = append(bounds, bound)
		return nil
	}); err != nil {
		return fmt.Errorf("announce %s of %s: %w", t.tableName(), schema, err)
	}
	// Page i holds the rows after bounds[i-1] (or the first) up to
	// bounds[i] (or the last), whatever their number: a row the live runner
	// inserts into a page's range before the page reads it must not push
	// bounds[i] out of the page, as a LIMIT would, since page i+1 starts
	// after it.
	fill, refill, insert := announceSQL(t, schema, where, notes, false)
	lastFill, lastRefill, _ := announceSQL(t, schema, where, notes, true)
	// A page holds its connection while it waits for the page before to
	// commit, so it takes one only once the page before holds its own
	// (begun): on a pool with one connection to spare, the page before
	// would otherwise wait for it forever.
	committed := make([]chan struct{}, len(bounds)+1) // closed once page i has committed
	begun := make([]chan struct{}, len(bounds)+1)     // closed once page i holds its connection
	for i := range committed {
		committed[i], begun[i] = make(chan struct{}), make(chan struct{})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for i := range committed {
		var from linkKey
		if i > 0 {
			from = bounds[i-1]
		}
		fill, refill, args := fill, refill, []any{from.account, from.object, typ}
		if i < len(bounds) {
			args = append(args, bounds[i].account, bounds[i].object)
		} else {
			fill, refill = lastFill, lastRefill
		}
		g.Go(func() error {
			if i > 0 {
				select {
				case <-begun[i-1]:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			var added int64
			err := pgx.BeginFunc(gctx, b.pool, func(tx pgx.Tx) error {
				close(begun[i])
				if _, err := tx.Exec(gctx, announceDerive); err != nil {
					return err
				}
				if _, err := tx.Exec(gctx, fill, args...); err != nil {
					return err
				}
				if i > 0 {
					select {
					case <-committed[i-1]:
					case <-gctx.Done():
						return gctx.Err()
					}
				}
				if _, err := tx.Exec(gctx, `SELECT pg_advisory_xact_lock($1)`, int64(notificationLockClass)); err != nil {
					return err
				}
				if _, err := tx.Exec(gctx, refill, args...); err != nil {
					return err
				}
				tag, err := tx.Exec(gctx, insert, typ)
				if err != nil {
					return err
				}
				if added = tag.RowsAffected(); added > 0 {
					_, err := tx.Exec(gctx, `SELECT pg_notify($1, '')`, NotificationsChannel)
					return err
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("announce %s of %s: %w", t.tableName(), schema, err)
			}
			b.added += added // after the page before's, which closed committed[i-1] after its own
			close(committed[i])
			return nil
		})
	}
	return g.Wait()
}

// announceDerive begins a page of announce: announce_page holds its
// notifications, announce_rows the version (xmin) of each row derived, and
// its statements are planned for their bounds (announceSQL).
const announceDerive = `CREATE TEMPORARY TABLE announce_page (id text, account text, customer_id text, event_ids text[],
  occurred_at timestamptz, data jsonb, k1 text, k2 text, k3 bigint) ON COMMIT DROP;
CREATE TEMPORARY TABLE announce_rows (account text, id text, row_xmin text, PRIMARY KEY (account, id)) ON COMMIT DROP;
SET LOCAL plan_cache_mode = force_custom_plan`

// announceSQL returns announce's statements for the rows of t in schema
// that where selects: fill derives into announce_page the notifications
// that notes derives from the page of rows after ($1, $2) in key order, up
// to ($4, $5) unless last, noting each row's xmin in announce_rows; refill
// derives again, in place of theirs, the rows of the page whose xmin
// differs or that are new (a row never leaves where: an invoice stays
// paid, a dispute keeps its customer); insert adds those new to the outbox
// in their order, of type $1. None reads more than its page, planned for
// its bounds (announce runs them with plan_cache_mode force_custom_plan):
// the generic plan that pgx's cached statement comes to, which cannot
// know the bounds, expects a third of the table for each row comparison
// and scans the whole table for every page, filtered. For NOT EXISTS the planner, which has no statistics of the temporary table,
// chose a hash anti join over the whole outbox, every page. A LATERAL
// subquery with LIMIT is never made a join: each row probes the outbox's
// id index.
func announceSQL(t schemaTable, schema, where, notes string, last bool) (fill, refill, insert string) {
	key := t.keyColumn()
	table := ident(schema) + "." + t.tableName()
	inPage := fmt.Sprintf(`%[1]s r WHERE %[2]s AND (account, %[3]s) > ($1, $2)`, table, where, key)
	if !last {
		inPage += fmt.Sprintf(` AND (account, %[1]s) <= ($4, $5)`, key)
	}
	fill = fmt.Sprintf(`WITH page AS (SELECT r.*, r.xmin::text AS row_xmin FROM %[1]s),
noted AS (INSERT INTO announce_rows SELECT account, %[2]s, row_xmin FROM page),
n AS (%[3]s)
INSERT INTO announce_page SELECT * FROM n`, inPage, key, notes)
	refill = fmt.Sprintf(`WITH changed AS (
  SELECT account, %[2]s AS id FROM %[1]s
     AND NOT EXISTS (SELECT FROM announce_rows a WHERE a.account = r.account AND a.id = r.%[2]s AND a.row_xmin = r.xmin::text)),
gone AS (DELETE FROM announce_page a USING changed c WHERE a.k1 = c.account AND a.k2 = c.id),
page AS (SELECT r.* FROM changed c JOIN %[3]s r ON r.account = c.account AND r.%[2]s = c.id),
n AS (%[4]s)
INSERT INTO announce_page SELECT * FROM n`, inPage, key, table, notes)
	insert = `INSERT INTO notifications (id, position, type, account, customer_id, event_ids, occurred_at, data)
SELECT n.id, nextval('notifications_position_seq'), $1, n.account, n.customer_id, n.event_ids, n.occurred_at, n.data
  FROM announce_page n LEFT JOIN LATERAL (SELECT true AS stored FROM notifications o WHERE o.id = n.id LIMIT 1) o ON true
 WHERE o.stored IS NULL
 ORDER BY n.k1, n.k2, n.k3`
	return fill, refill, insert
}

// notificationIDSQL is the SQL of notificationID over the SQL text
// expressions typ, account, customer and key: the bytes hashed are the
// same, NULs included, which text cannot hold but bytea can.
func notificationIDSQL(typ, account, customer, key string) string {
	utf8 := func(expr string) string { return "convert_to(" + expr + ", 'UTF8')" }
	return `'ntf_' || left(encode(sha256(` + strings.Join([]string{utf8(typ), utf8(account), utf8(customer), utf8(key)}, ` || '\x00'::bytea || `) +
		`), 'hex'), 32)`
}
