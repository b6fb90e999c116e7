package projections

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// Diff builds p from the whole log into a scratch schema beside the live
// version, up to the live checkpoint, compares the two row by row, drops the
// scratch schema and reports the differences (ledger projections diff). It
// swaps nothing.
func Diff(ctx context.Context, pool *pgxpool.Pool, log eventlog.Log, p Projection, opts Options) (*report.Diff, error) {
	p.outbox = outboxNone // a diff's build must not add to the outbox
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
	if _, err := b.fill(ctx, schema, &live.Position, false); err != nil {
		return nil, err
	}
	pos := live.Position
	// Compare both sides at the same position: fold the candidate up to the
	// live checkpoint outside any transaction (a writing transaction must not
	// read the log: it would hold back the log's horizon and wait for
	// itself), then compare in a read-only snapshot in which the checkpoint is
	// still there; if the live version moved on meanwhile, fold further.
	var diff *report.Diff
	for attempt := 1; diff == nil; attempt++ {
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
			diff = r
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("diff %s: %w", p.Name, err)
		}
		if diff == nil && pos.Less(live.Position) {
			if _, err := b.catchUp(ctx, b.p, schema, pos, &live.Position); err != nil {
				return nil, err
			}
			pos = live.Position
		}
	}
	return diff, nil
}

// compare reports the rows of every read model table that differ between
// the live and candidate schemas; subscriptions.snapshots, the fold's own
// bookkeeping, is left out.
func compare(ctx context.Context, tx pgx.Tx, live, candidate string) (*report.Diff, error) {
	byCustomer := map[domain.CustomerKey][]report.RowDiff{}
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
	r := &report.Diff{Customers: []report.CustomerDiff{}}
	keys := slices.SortedFunc(maps.Keys(byCustomer), domain.CustomerKey.Compare)
	for _, k := range keys {
		r.Customers = append(r.Customers, report.CustomerDiff{Account: k.Account, CustomerID: k.ID, Rows: byCustomer[k]})
	}
	return r, nil
}

func rowDiff(table, key string, live, candidate map[string]any) report.RowDiff {
	d := report.RowDiff{Table: table, Key: key, Change: report.RowChanged}
	switch {
	case live == nil:
		d.Change = report.RowAdded
	case candidate == nil:
		d.Change = report.RowRemoved
	default:
		columns := maps.Clone(live)
		maps.Copy(columns, candidate)
		for _, col := range slices.Sorted(maps.Keys(columns)) {
			if l, c := live[col], candidate[col]; !reflect.DeepEqual(l, c) {
				d.Columns = append(d.Columns, report.ColumnDiff{Column: col, Live: l, Candidate: c})
			}
		}
	}
	return d
}
