package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Status is where a projection stands (ledger projections status, /readyz).
type Status struct {
	Name        string            `json:"name"`
	Version     int               `json:"version"`
	Schema      string            `json:"schema"`
	Position    eventlog.Position `json:"position"` // of the last event applied to the live version
	Head        eventlog.Position `json:"head"`     // of the last event in the log
	Lag         int64             `json:"lag"`      // events after Position
	DeadLetters int64             `json:"dead_letters"`
	UpdatedAt   time.Time         `json:"updated_at"`   // when the checkpoint last moved
	Plans       *string           `json:"plans"`        // the LEDGER_PLANS it was folded with, canonical; null: not recorded
	APIVersions []APIVersion      `json:"api_versions"` // of the events folded into the live version
}

// APIVersion is a Stripe API version the projection has seen events of.
type APIVersion struct {
	Version      string `json:"api_version"`
	Tested       bool   `json:"tested"`         // the decoder is tested with it (domain.TestedAPIVersions); else decoded by shape
	FirstEventID string `json:"first_event_id"` // the least event id of that version: one to look at
}

// ReadStatus reports every projection that has a live version, by name.
func ReadStatus(ctx context.Context, pool *pgxpool.Pool, log eventlog.Log) ([]Status, error) {
	rows, err := pool.Query(ctx, `SELECT c.name, c.version, c.schema_name, c.position, c.prepare, c.updated_at, c.plans,
       (SELECT count(*) FROM projection_dead_letters d WHERE d.schema_name = c.schema_name)
  FROM projection_checkpoints c ORDER BY c.name`)
	if err != nil {
		return nil, fmt.Errorf("projection status: %w", err)
	}
	statuses, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Status, error) {
		var s Status
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
func readAPIVersions(ctx context.Context, pool *pgxpool.Pool, schema string) ([]APIVersion, error) {
	versions, err := apiVersionsTable.list(ctx, pool, schema, "ORDER BY api_version")
	if err == nil {
		return versions, nil
	}
	if undefinedTable(err) {
		return []APIVersion{}, nil
	}
	return nil, fmt.Errorf("projection status: API versions of %s: %w", schema, err)
}
