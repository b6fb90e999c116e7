package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog"

	"github.com/stripe-ledger/stripe-ledger/internal/report"
)

// TestRebuildsOneAtATimeAndStoppedByClose: while a rebuild started from the
// console runs, a second one of the same projection is refused (another
// projection's starts); Close cancels the running ones and waits for them,
// whose errors the runs keep; after Close nothing starts. The rebuild here
// blocks until its context ends, as projections.Rebuild does between
// batches; TestConsoleRebuildAndReconcile (cmd/ledger) runs the real one.
func TestRebuildsOneAtATimeAndStoppedByClose(t *testing.T) {
	t.Parallel()
	c := &Console{rebuilds: newRebuilds()}
	started := make(chan string, 2)
	block := func(ctx context.Context, name string) error {
		started <- name
		<-ctx.Done()
		return fmt.Errorf("rebuild %s: %w", name, ctx.Err())
	}
	var logged []string
	logger := func(msg string, _ ...any) { logged = append(logged, msg) }
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	first, err := c.rebuilds.start("billing", now, block, logger)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if again, err := c.rebuilds.start("billing", now.Add(time.Second), block, logger); !errors.Is(err, errRebuildRunning) || again != first {
		t.Fatalf("a second rebuild of billing while one runs: %v, want errRebuildRunning and the running one", err)
	}
	if _, err := c.rebuilds.start("other", now, block, logger); err != nil {
		t.Fatalf("a rebuild of another projection: %v", err)
	}
	<-started
	if runs := c.rebuilds.snapshot(); !runs["billing"].Running() || !runs["other"].Running() || !runs["billing"].Started.Equal(now) {
		t.Fatalf("runs %+v, want both running", runs)
	}

	c.Close() // returns only once both rebuilds returned
	for name, run := range c.rebuilds.snapshot() {
		if run.Running() || run.Err != "rebuild "+name+": context canceled" || run.Refused {
			t.Errorf("%s after Close: %+v, want finished with the cancellation", name, run)
		}
	}
	if len(logged) != 2 {
		t.Errorf("logged %q, want both failures", logged)
	}
	if _, err := c.rebuilds.start("billing", now, block, logger); err == nil {
		t.Error("a rebuild started after Close")
	}

	// A rebuild refused by the build lock is marked so.
	r := newRebuilds()
	run, err := r.start("billing", now, func(context.Context, string) error {
		return fmt.Errorf("billing: %w", report.ErrBuildInProgress)
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	<-run.done
	if got := r.snapshot()["billing"]; !got.Refused || got.Running() {
		t.Errorf("a rebuild refused by the lock: %+v, want Refused", got)
	}
}

// engineerFake is the projections side in memory: what Retry and Diff
// answer is set per test.
type engineerFake struct {
	retryErr, diffErr error
	retried           *[]string
}

func (engineerFake) Status(context.Context) ([]report.Status, error) {
	return []report.Status{{Name: "billing", Version: 7, Schema: "rm_billing_v7_0a1b2c3d", Lag: 3}}, nil
}
func (engineerFake) DeadLetters(context.Context) ([]report.DeadLetter, error) { return nil, nil }
func (engineerFake) Receivers(context.Context) ([]report.ReceiverStatus, error) {
	return nil, nil
}

func (f engineerFake) Retry(_ context.Context, ids ...string) (report.RetryResult, error) {
	*f.retried = append(*f.retried, ids...)
	return report.RetryResult{Applied: ids}, f.retryErr
}

func (f engineerFake) Diff(context.Context) (*report.Diff, error) {
	return &report.Diff{Projection: "billing", LiveVersion: 7, CandidateVersion: 7}, f.diffErr
}

// revocationsFake revokes nothing.
type revocationsFake struct{}

func (revocationsFake) Revoke(context.Context, string, time.Time) error { return nil }
func (revocationsFake) Revoked(context.Context, string) (bool, error)   { return false, nil }

// TestEngineerErrorMapping runs the projections pages on in-memory
// backends: the page lists what Engineer reports, a retry of an event that
// is no dead letter is a 404 naming it, a diff while another build runs a
// 409, the database down a 503, and any other failure a 500 that shows
// nothing of the error.
func TestEngineerErrorMapping(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		engineer engineerFake
		path     string
		form     url.Values
		status   int
		shows    string
	}{
		"page":  {engineerFake{}, "/console/projections", nil, http.StatusOK, "rm_billing_v7_0a1b2c3d"},
		"retry": {engineerFake{}, "/console/projections/retry", url.Values{"event_id": {"evt_1"}}, http.StatusOK, "Retried: 1 applied, 0 failed again."},
		"retry no dead letter": {engineerFake{retryErr: fmt.Errorf("retry evt_2: %w", report.ErrNoDeadLetter)},
			"/console/projections/retry", url.Values{"event_id": {"evt_2"}}, http.StatusNotFound, "retry evt_2: not a dead letter"},
		"diff": {engineerFake{}, "/console/projections/diff", url.Values{}, http.StatusOK, "billing"},
		"diff during a build": {engineerFake{diffErr: fmt.Errorf("diff billing: %w", report.ErrBuildInProgress)},
			"/console/projections/diff", url.Values{}, http.StatusConflict, "A build of the projection is in progress"},
		"database down": {engineerFake{retryErr: fmt.Errorf("retry: %w", eventlog.ErrUnavailable)},
			"/console/projections/retry", url.Values{}, http.StatusServiceUnavailable, "The database is unavailable"},
		"failure": {engineerFake{diffErr: errors.New(`ERROR: relation "rm_x" does not exist (SQLSTATE 42P01)`)},
			"/console/projections/diff", url.Values{}, http.StatusInternalServerError, "Something went wrong"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var retried []string
			tc.engineer.retried = &retried
			var u unreached
			c, err := New(Config{Token: "secret-token", Log: u, ReadModel: u, Auditor: u, Engineer: tc.engineer,
				Revocations: revocationsFake{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			session := logIn(t, c, "secret-token")
			page := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/console/projections", nil)
			req.AddCookie(session)
			c.ServeHTTP(page, req)
			m := loginCSRF.FindStringSubmatch(page.Body.String())
			if page.Code != http.StatusOK || m == nil {
				t.Fatalf("GET /console/projections: %d, no CSRF field", page.Code)
			}
			req = httptest.NewRequest(http.MethodGet, tc.path, nil)
			if tc.form != nil {
				tc.form.Set(csrfField, m[1])
				req = httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.form.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
			req.AddCookie(session)
			rec := httptest.NewRecorder()
			c.ServeHTTP(rec, req)
			body := rec.Body.String()
			if rec.Code != tc.status || !strings.Contains(body, tc.shows) {
				t.Errorf("%s %s: %d, want %d showing %q:\n%s", req.Method, tc.path, rec.Code, tc.status, tc.shows, body)
			}
			if strings.Contains(body, "SQLSTATE") {
				t.Errorf("%s %s shows the error's SQL", req.Method, tc.path)
			}
			if id := tc.form.Get("event_id"); id != "" && (len(retried) != 1 || retried[0] != id) {
				t.Errorf("Retry got %v, want [%s]", retried, id)
			}
		})
	}
}
