package projections

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// ReadStatus reports every projection that has a live version, by name.
func ReadStatus(ctx context.Context, pool *pgxpool.Pool, log eventlog.Log) ([]report.Status, error) {
	rows, err := pool.Query(ctx, `SELECT c.name, c.version, c.schema_name, c.position, c.prepare, c.updated_at, c.plans,
       (SELECT count(*) FROM projection_dead_letters d WHERE d.schema_name = c.schema_name)
  FROM projection_checkpoints c ORDER BY c.name`)
	if err != nil {
		return nil, fmt.Errorf("projection status: %w", err)
	}
	statuses, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (report.Status, error) {
		var s report.Status
		err := row.Scan(&s.Name, &s.Version, &s.Schema, &s.Position.Commit, &s.Position.Prepare, &s.UpdatedAt, &s.Plans, &s.DeadLetters)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("projection status: %w", err)
	}
	if len(statuses) == 0 {
		return statuses, nil
	}
	head, err := log.Head(ctx)
	if err != nil {
		return nil, err
	}
	for i := range statuses {
		statuses[i].Head = head
		if statuses[i].Lag, err = log.CountAfter(ctx, statuses[i].Position); err != nil {
			return nil, err
		}
		if statuses[i].APIVersions, err = readAPIVersions(ctx, pool, statuses[i].Schema); err != nil {
			return nil, err
		}
	}
	return statuses, nil
}

// readAPIVersions lists the API versions recorded in schema; none for a
// schema built before versions were recorded.
func readAPIVersions(ctx context.Context, pool *pgxpool.Pool, schema string) ([]report.APIVersion, error) {
	versions, err := apiVersionsTable.list(ctx, pool, schema, "ORDER BY api_version")
	if err == nil {
		return versions, nil
	}
	if undefinedTable(err) {
		return []report.APIVersion{}, nil
	}
	return nil, fmt.Errorf("projection status: API versions of %s: %w", schema, err)
}
