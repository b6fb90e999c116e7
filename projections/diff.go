package projections

import (
	"context"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Report is what Diff found: the rows in which a candidate build of a
// projection differs from the live version, by customer.
type Report struct {
	Projection       string            `json:"projection"`
	LiveVersion      int               `json:"live_version"`
	CandidateVersion int               `json:"candidate_version"`
	Position         eventlog.Position `json:"position"`               // both were folded up to it
	DeadLetters      int64             `json:"candidate_dead_letters"` // events the candidate could not apply
	Customers        []CustomerDiff    `json:"customers"`              // by account and customer id; empty when nothing would change
}

// CustomerDiff is what would change for one customer.
type CustomerDiff struct {
	Account    string    `json:"account,omitempty"` // the Connect account, empty for the platform
	CustomerID string    `json:"customer_id"`
	Rows       []RowDiff `json:"rows"` // by table, then key
}

// Kinds of RowDiff.
const (
	RowAdded   = "added"
	RowRemoved = "removed"
	RowChanged = "changed"
)

// RowDiff is one row that the candidate adds, removes or changes.
type RowDiff struct {
	Table   string       `json:"table"`
	Key     string       `json:"key"`    // the row's primary key
	Change  string       `json:"change"` // RowAdded, RowRemoved or RowChanged
	Columns []ColumnDiff `json:"columns,omitempty"`
}

// ColumnDiff is a changed column with both values, as JSON renders them
// (timestamps are strings, absent columns and NULLs nil).
type ColumnDiff struct {
	Column    string `json:"column"`
	Live      any    `json:"live"`
	Candidate any    `json:"candidate"`
}

// Diff builds p from the whole log into a scratch schema beside the live
// version, up to the live checkpoint, compares the two row by row, drops the
// scratch schema and reports the differences (ledger projections diff). It
// swaps nothing.
func Diff(ctx context.Context, pool *pgxpool.Pool, log eventlog.Log, p Projection, opts Options) (*Report, error) {
	p.scratch = true // a diff's build must not add to the outbox
	b, l, err := lockBuild(ctx, pool, log, p, opts)
	if err != nil {
		return nil, err
	}
	defer l.Release()
	ctx = l.Context()
	if err := b.dropStale(ctx); err != nil {
		return nil, err
	}
	live, ok, err := loadCheckpoint(ctx, pool, p.Name, "")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("diff %s: no version is live yet", p.Name)
	}
	schema, err := b.createSchema(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := b.dropSchema(context.WithoutCancel(ctx), schema); err != nil {
			b.logger.WarnContext(ctx, "could not drop the diff's scratch schema", "schema", schema, "err", err)
		}
	}()
	// Every record up to the live checkpoint is folded, which may itself lie
	// past the last record (a filtered subscription's checkpoint).
	if _, err := b.fill(ctx, schema, &live.Position); err != nil {
		return nil, err
	}
	pos := live.Position
	// Compare both sides at the same position: fold the candidate up to the
	// live checkpoint outside any transaction (a writing transaction must not
	// read the log: it would hold back the log's horizon and wait for
	// itself), then compare in a read-only snapshot in which the checkpoint is
	// still there; if the live version moved on meanwhile, fold further.
	var report *Report
	for attempt := 1; report == nil; attempt++ {
		if attempt > swapAttempts*10 {
			return nil, fmt.Errorf("diff %s: the live version kept moving ahead in %d attempts", p.Name, attempt-1)
		}
		err = pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			now, _, err := loadCheckpoint(ctx, tx, p.Name, "")
			if err != nil {
				return err
			}
			if now.Schema != live.Schema || now.Position != pos {
				live = now
				return nil
			}
			r, err := compare(ctx, tx, live.Schema, schema)
			if err != nil {
				return err
			}
			r.Projection, r.LiveVersion, r.CandidateVersion, r.Position = p.Name, live.Version, p.Version, live.Position
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM projection_dead_letters WHERE schema_name = $1`, schema).Scan(&r.DeadLetters); err != nil {
				return err
			}
			report = r
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("diff %s: %w", p.Name, err)
		}
		if report == nil && pos.Less(live.Position) {
			if _, err := b.catchUp(ctx, schema, pos, &live.Position); err != nil {
				return nil, err
			}
			pos = live.Position
		}
	}
	return report, nil
}

// compare reports the rows of every read model table that differ between
// the live and candidate schemas; subscriptions.snapshots, the fold's own
// bookkeeping, is left out.
func compare(ctx context.Context, tx pgx.Tx, live, candidate string) (*Report, error) {
	byCustomer := map[domain.CustomerKey][]RowDiff{}
	for _, t := range customerTables {
		sql := fmt.Sprintf(`SELECT coalesce(l.account, c.account), coalesce(l.customer_id, c.customer_id), coalesce(l.%[1]s, c.%[1]s),
       to_jsonb(l) - 'snapshots', to_jsonb(c) - 'snapshots'
  FROM %[2]s.%[3]s l FULL JOIN %[4]s.%[3]s c ON l.account = c.account AND l.%[1]s = c.%[1]s
 WHERE to_jsonb(l) - 'snapshots' IS DISTINCT FROM to_jsonb(c) - 'snapshots'
 ORDER BY 1, 3`, t.keyColumn(), ident(live), t.tableName(), ident(candidate))
		rows, err := tx.Query(ctx, sql)
		if err != nil {
			return nil, fmt.Errorf("compare %s: %w", t.tableName(), err)
		}
		var (
			account, customerID, key string
			l, c                     map[string]any
		)
		_, err = pgx.ForEachRow(rows, []any{&account, &customerID, &key, &l, &c}, func() error {
			k := domain.CustomerKey{Account: account, ID: customerID}
			byCustomer[k] = append(byCustomer[k], rowDiff(t.tableName(), key, l, c))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("compare %s: %w", t.tableName(), err)
		}
	}
	r := &Report{Customers: []CustomerDiff{}}
	keys := slices.SortedFunc(maps.Keys(byCustomer), domain.CustomerKey.Compare)
	for _, k := range keys {
		r.Customers = append(r.Customers, CustomerDiff{Account: k.Account, CustomerID: k.ID, Rows: byCustomer[k]})
	}
	return r, nil
}

func rowDiff(table, key string, live, candidate map[string]any) RowDiff {
	d := RowDiff{Table: table, Key: key, Change: RowChanged}
	switch {
	case live == nil:
		d.Change = RowAdded
	case candidate == nil:
		d.Change = RowRemoved
	default:
		columns := maps.Clone(live)
		maps.Copy(columns, candidate)
		for _, col := range slices.Sorted(maps.Keys(columns)) {
			if l, c := live[col], candidate[col]; !reflect.DeepEqual(l, c) {
				d.Columns = append(d.Columns, ColumnDiff{Column: col, Live: l, Candidate: c})
			}
		}
	}
	return d
}

// Empty reports whether the candidate would change nothing.
func (r *Report) Empty() bool { return len(r.Customers) == 0 }

// WriteText writes r for a terminal: one line per row, with its changed columns.
func (r *Report) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("%s: live version %d vs candidate version %d at position %s\n",
		r.Projection, r.LiveVersion, r.CandidateVersion, r.Position)
	if r.DeadLetters > 0 {
		ew.printf("candidate dead letters: %d\n", r.DeadLetters)
	}
	if r.Empty() {
		ew.printf("no changes\n")
	}
	for _, c := range r.Customers {
		if c.Account != "" {
			ew.printf("customer %s (account %s)\n", c.CustomerID, c.Account)
		} else {
			ew.printf("customer %s\n", c.CustomerID)
		}
		for _, row := range c.Rows {
			ew.printf("  %-8s %s %s\n", row.Change, row.Table, row.Key)
			for _, col := range row.Columns {
				ew.printf("           %s: %v -> %v\n", col.Column, col.Live, col.Candidate)
			}
		}
	}
	return ew.err
}

// errWriter keeps the first write error, so WriteText checks once.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}
