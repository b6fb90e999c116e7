// Package report holds what the ledger's machinery reports to operators:
// where the projections stand, their dead letters and retries, the push
// receivers' progress, what a rebuild would change (Diff), a reconcile's
// drift, and the customers a search finds. They are plain values: the
// packages that produce them (projections, internal/stripesync) read
// PostgreSQL and Stripe, and the ones that render them (the console, the
// ledger CLI) need none of that.
package report

import (
	"errors"
	"fmt"
	"io"
	"time"

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

// DeadLetter is an event a projection's live version could not apply
// (ledger projections dead-letters).
type DeadLetter struct {
	Projection string            `json:"projection"`
	Version    int               `json:"version"`
	EventID    string            `json:"event_id"`
	EventType  string            `json:"event_type"`
	Position   eventlog.Position `json:"position"`
	Stream     string            `json:"stream"` // empty when recorded before streams were kept
	// StreamVersion is the event's place in Stream, which projections.Retry reads it back by.
	StreamVersion int64     `json:"stream_version"`
	Error         string    `json:"error"`
	RecordedAt    time.Time `json:"recorded_at"`
}

// RetryResult is what projections.Retry did.
type RetryResult struct {
	Applied      []string `json:"applied"`       // event ids applied this time
	DeadLettered []string `json:"dead_lettered"` // event ids that failed again, recorded anew
}

// ErrNoDeadLetter reports that projections.Retry was given an event id that is not a
// dead letter of the projection's live version.
var ErrNoDeadLetter = errors.New("not a dead letter of the live version")

// ReceiverStatus is one push receiver's progress (ledger notifications status).
type ReceiverStatus struct {
	Receiver     string     `json:"receiver"`
	Position     int64      `json:"position"`  // the last notification acknowledged
	Pending      int64      `json:"pending"`   // notifications after it
	Delivered    int64      `json:"delivered"` // acknowledged in all
	FailingID    string     `json:"failing_id,omitempty"`
	FailingSince *time.Time `json:"failing_since,omitempty"`
	Attempts     int        `json:"attempts"`
	LastError    string     `json:"last_error,omitempty"`
	Abandoned    int64      `json:"abandoned"` // skipped after the retry window
	UpdatedAt    time.Time  `json:"updated_at"`
}

// ErrBuildInProgress reports that another process is building the projection
// (a new version, a rebuild or a diff) and projections.Options.Wait was not set.
var ErrBuildInProgress = errors.New("another build of this projection is in progress")

// Diff is what projections.Diff found: the rows in which a candidate build of a
// projection differs from the live version, by customer.
type Diff struct {
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

// Empty reports whether the candidate would change nothing.
func (r *Diff) Empty() bool { return len(r.Customers) == 0 }

// WriteText writes r for a terminal: one line per row, with its changed columns.
func (r *Diff) WriteText(w io.Writer) error {
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

// CustomerMatch is a customer of the live read model found by projections.Queries.FindCustomers.
type CustomerMatch struct {
	Account     string // the Connect account, "" for the platform
	CustomerID  string
	Email       string
	Name        string
	Deleted     bool
	Plan        string
	Entitled    bool
	AccessUntil *time.Time
	UpdatedAt   time.Time
}

// Drift is one field on which the read model and Stripe disagree.
type Drift struct {
	Object   string `json:"object"` // customer, subscription or invoice
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Account  string `json:"account,omitempty"`
	Field    string `json:"field"` // a read-model column, or "exists" for an object the ledger has never seen
	Ledger   string `json:"ledger"`
	Stripe   string `json:"stripe"`
}

// Reconciliation is what a reconcile (stripesync.Syncer.Reconcile) found and did.
type Reconciliation struct {
	Customers     int     `json:"customers"`
	Subscriptions int     `json:"subscriptions"`
	Invoices      int     `json:"invoices"`
	Drift         []Drift `json:"drift"`
	Appended      int     `json:"appended"` // observed snapshots added to the log (none with DryRun)
	DryRun        bool    `json:"dry_run"`
}
