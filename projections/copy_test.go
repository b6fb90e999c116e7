package projections

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// TestCopyRowsWritesWhatUpsertsWrite: the fill's COPY (copyRows, whose
// binary encoding is copyStream's own) stores every table's rows exactly as
// the incremental fold's upsert (pgx's encoding) does, NULL and JSON null
// apart, straight in and through the temporary table that replaces rows
// stored already.
func TestCopyRowsWritesWhatUpsertsWrite(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.NewDatabase(t))
	p := Billing(testPlans(t))
	at := time.Date(2024, 3, 1, 12, 30, 5, 0, time.UTC)
	early := time.Date(1970, 1, 1, 0, 0, 1, 0, time.UTC) // before PostgreSQL's epoch: negative microseconds
	sub := domain.Subscription{Account: "acct_1", ID: "sub_1", CustomerID: "cus_1", Status: "active", PriceID: "price_1", Quantity: 3,
		CurrentPeriodStart: &early, CurrentPeriodEnd: &at, CancelAtPeriodEnd: true, Items: "price_1*3", LastEventID: "evt_1", LastEventCreated: at}
	withPrevious := sub
	withPrevious.ID, withPrevious.Previous = "sub_2", map[string]string{"status": "trialing", "cancel_at": ""}
	withSnapshots := sub
	withSnapshots.ID, withSnapshots.Previous, withSnapshots.Snapshots = "sub_3", map[string]string{}, domain.SubscriptionSnapshots{Latest: []domain.Subscription{sub, withPrevious}}
	paid := domain.Invoice{Account: "", ID: "in_2", CustomerID: "cus_1", Status: "paid", AmountDue: -5, Currency: "eur", PaidAt: &at,
		Payment: &domain.InvoicePayment{ID: "inpay_1", InvoiceID: "in_2", AmountPaid: 900, PaidAt: &early, LastEventCreated: at}, LastEventCreated: at}
	dispute := domain.Fact{EventID: "evt_d", Dispute: &domain.Dispute{ID: "dp_1", ChargeID: "ch_1", Status: "needs_response", Amount: 7, LastEventCreated: at}}
	payment := domain.Fact{EventID: "evt_p", InvoicePayment: &domain.InvoicePayment{ID: "inpay_2", InvoiceID: "in_3", LastEventCreated: at}}
	until := at.Add(time.Hour)

	checkCopy(t, pool, p, customersTable, []customerRow{
		{Account: "", ID: "cus_1", Email: "é@example.com", Name: "Zoë \u2603", Plan: "basic", Entitled: true, AccessUntil: &until, UpdatedAt: at,
			LastEventCreated: &at, Timeline: timeline{{At: at, After: notify.Entitlement{Entitled: true, Plan: "basic", AccessUntil: &until}}}},
		{Account: "acct_1", ID: "cus_2", Deleted: true, Plan: "free", UpdatedAt: early, Timeline: timeline{}},
	})
	checkCopy(t, pool, p, subscriptionsTable, []domain.Subscription{sub, withPrevious, withSnapshots})
	checkCopy(t, pool, p, invoicesTable, []domain.Invoice{{ID: "in_1", CustomerID: "cus_1", Status: "open", LastEventCreated: at}, paid})
	checkCopy(t, pool, p, chargesTable, []domain.Charge{{ID: "ch_1", CustomerID: "cus_1", Amount: 1 << 40, Refunded: true, LastEventCreated: at}})
	checkCopy(t, pool, p, disputesTable, []domain.Dispute{*dispute.Dispute})
	checkCopy(t, pool, p, linksTable, []objectLink{{"", "ch_1", "cus_1"}, {"acct_1", "in_1", "cus_2"}})
	checkCopy(t, pool, p, streamLinksTable, []streamLink{{"", "ch_1", "object-charge-ch_1"}})
	checkCopy(t, pool, p, pendingDisputesTable, []pendingDispute{{account: "acct_1", fact: dispute}})
	checkCopy(t, pool, p, pendingInvoicePaymentsTable, []pendingPayment{{fact: payment}})
}

// checkCopy writes rows into t of three schemas of p, by the insert of an
// upsert, by COPY, and by COPY replacing rows of the same keys stored
// first, and fails unless the three tables hold the same rows.
func checkCopy[T any](t *testing.T, pool *pgxpool.Pool, p Projection, tab table[T], rows []T) {
	t.Helper()
	ctx := context.Background()
	upserted, copied, replaced := scratch(t, pool, p), scratch(t, pool, p), scratch(t, pool, p)
	stale := slices.Clone(rows)
	for i := range stale {
		for _, f := range tab.fields(&stale[i])[tab.key:] {
			if s, ok := f.(*string); ok {
				*s = "stale" // the replaced rows: keys kept, other text changed
			}
		}
	}
	for _, write := range []struct {
		schema string
		write  func(tx pgx.Tx, schema string) error
	}{
		{upserted, func(tx pgx.Tx, schema string) error {
			var w pgx.Batch
			tab.queueInsert(&w, schema, rows, keepStored) // the arrays of an upsert, into an empty table
			return tx.SendBatch(ctx, &w).Close()
		}},
		{copied, func(tx pgx.Tx, schema string) error { return copyRows(ctx, tx, schema, tab, rows, false) }},
		{replaced, func(tx pgx.Tx, schema string) error {
			if tab.key == len(tab.columns) { // nothing to replace: the key is the row
				return copyRows(ctx, tx, schema, tab, rows, false)
			}
			if err := copyRows(ctx, tx, schema, tab, stale, false); err != nil {
				return err
			}
			return copyRows(ctx, tx, schema, tab, rows, true)
		}},
	} {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return write.write(tx, write.schema) }); err != nil {
			t.Fatalf("%s: %v", tab.name, err)
		}
	}
	// A record's text renders NULL as nothing and JSON null as null.
	read := func(schema string) []string {
		var out []string
		err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(array_agg(t::text ORDER BY t::text), '{}') FROM %s.%s t`,
			ident(schema), tab.name)).Scan(&out)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := read(upserted)
	if len(want) != len(rows) {
		t.Fatalf("%s: upserted %d rows of %d", tab.name, len(want), len(rows))
	}
	for _, schema := range []string{copied, replaced} {
		if got := read(schema); !slices.Equal(got, want) {
			t.Errorf("%s: COPY wrote\n %q\nthe upsert\n %q", tab.name, got, want)
		}
	}
}

// TestCopyStreamReadsInAnyPieces: read in pieces of any size, a copyStream
// gives the same bytes as read whole: the header, each row once, the
// trailer.
func TestCopyStreamReadsInAnyPieces(t *testing.T) {
	t.Parallel()
	rows := []objectLink{{"", "ch_1", "cus_1"}, {"acct_1", "in_123456789", "cus_2"}, {"", "pi_1", "cus_3"}}
	whole, err := io.ReadAll(&copyStream[objectLink]{t: linksTable, rows: rows, pending: copyHeader})
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(copyHeader)
	for i := range rows {
		if want, err = appendCopyRow(want, linksTable, &rows[i]); err != nil {
			t.Fatal(err)
		}
	}
	want = append(want, copyTrailer...)
	if !bytes.Equal(whole, want) {
		t.Fatalf("read whole\n%q\nwant\n%q", whole, want)
	}
	for size := 1; size <= len(want); size++ {
		c := &copyStream[objectLink]{t: linksTable, rows: rows, pending: copyHeader}
		var got []byte
		p := make([]byte, size)
		for {
			n, err := c.Read(p)
			got = append(got, p[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil || n == 0 {
				t.Fatalf("read of %d: %d bytes, %v", size, n, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes at a time:\n%q\nwant\n%q", size, got, want)
		}
	}
}
