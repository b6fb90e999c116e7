package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

const testSecret = "whsec_cmd_test"

// auditDB is a fresh, migrated database holding customers' signed events.
type auditDB struct {
	url    string
	pool   *pgxpool.Pool
	events map[string][]eventlog.Event // by customer id, in stream order
}

func newAuditDB(t *testing.T, customers, perCustomer int) *auditDB {
	t.Helper()
	pool, url := pgtest.NewPool(t)
	l := postgres.New(pool, nil)
	db := &auditDB{url: url, pool: pool, events: map[string][]eventlog.Event{}}
	for range customers {
		stream := eventlogtest.NewStream("cmd")
		customer := strings.TrimPrefix(stream, "customer-")
		for range perCustomer {
			e := eventlogtest.NewEvent(stream)
			e.Signature = webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: e.Payload, Secret: testSecret, Timestamp: time.Now()}).Header
			if _, err := l.Append(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			db.events[customer] = append(db.events[customer], e)
		}
	}
	return db
}

// anyCustomer is one of db's customers.
func (db *auditDB) anyCustomer() string {
	for c := range db.events {
		return c
	}
	return ""
}

// ledger runs the command line as main does, with DATABASE_URL set to db and
// the other variables given as name, value pairs.
func (db *auditDB) ledger(vars []string, args ...string) (stdout string, err error) {
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, env(append([]string{"DATABASE_URL", db.url}, vars...)...), &out, &errOut)
	return out.String(), err
}

func TestVerifyCommand(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t, 2, 4)
	withSecret := []string{"STRIPE_WEBHOOK_SECRET", "whsec_rotated_out," + testSecret}

	out, err := db.ledger(withSecret, "verify")
	if err != nil || !strings.Contains(out, "checked 2 stream(s), 8 event(s)") || !strings.Contains(out, "against 2 webhook secret(s)") || !strings.Contains(out, "OK") {
		t.Fatalf("untouched log: %v\n%s", err, out)
	}
	out, err = db.ledger(nil, "verify")
	if err != nil || !strings.Contains(out, "signatures NOT checked") {
		t.Fatalf("without a secret: %v\n%s", err, out)
	}
	if _, err = db.ledger(withSecret, "verify", "--customer", "cus_nobody"); err == nil || !strings.Contains(err.Error(), "holds no events") {
		t.Fatalf("verify of a customer without events: err = %v, want a failure saying the stream is empty", err)
	}

	customer := db.anyCustomer()
	victim := db.events[customer][1]
	pgtest.AsSuperuser(t, db.pool,
		`UPDATE events SET payload = overlay(payload PLACING '\x21'::bytea FROM 5 FOR 1) WHERE event_id = $1`, victim.ID)
	for _, args := range [][]string{{"verify"}, {"verify", "--customer", customer}} {
		out, err = db.ledger(withSecret, args...)
		if err == nil || !strings.Contains(err.Error(), "verification failed") {
			t.Errorf("%v after tampering: err = %v, want a failure", args, err)
		}
		if !strings.Contains(out, "PROBLEM event "+victim.ID) || !strings.Contains(out, "version 1") || !strings.Contains(out, "payload was altered") {
			t.Errorf("%v: the report does not name event %s:\n%s", args, victim.ID, out)
		}
	}
}

func TestVerifyUsage(t *testing.T) {
	t.Parallel()
	db := &auditDB{url: "postgres://127.0.0.1:1/unused"}
	for _, args := range [][]string{
		{"verify", "extra"},
		{"verify", "--account", "acct_1"},
		{"verify", "--customer", "cus 1"},
		{"history"},
		{"history", "cus_1", "cus_2"},
		{"history", "--all", "cus_1"},
		{"history", "cus_1", "--format", "xml"},
		{"history", "cus_1", "--since", "last week"},
	} {
		if _, err := db.ledger(nil, args...); !isUsage(err) {
			t.Errorf("%v: err = %v, want a usage error", args, err)
		}
	}
}

func isUsage(err error) bool {
	_, ok := err.(usageError)
	return ok
}

func TestSealThenVerifyExitCodes(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t, 2, 4)
	out, err := db.ledger(nil, "seal")
	fields := strings.Fields(out)
	if err != nil || len(fields) < 3 || fields[0] != "seal" || fields[1] != "1" || len(fields[2]) != 64 {
		t.Fatalf("ledger seal: %v\n%s", err, out)
	}
	hash := fields[2]
	if out, err = db.ledger(nil, "seal"); err != nil || !strings.Contains(out, "seal 1 "+hash+" (the log has not grown since)") {
		t.Fatalf("second ledger seal: %v\n%s", err, out)
	}
	if out, err = db.ledger(nil, "verify", "--seal", hash); exitCode(err) != exitOK || !strings.Contains(out, "seal "+hash+" is in the chain") {
		t.Fatalf("verify --seal of an untouched log: exit %d (%v)\n%s", exitCode(err), err, out)
	}
	unknown := strings.Repeat("ab", 32)
	if out, err = db.ledger(nil, "verify", "--seal", unknown); exitCode(err) != exitProblem || !strings.Contains(out, "seal "+unknown+" is not in the chain") {
		t.Fatalf("verify --seal of a hash not in the chain: exit %d (%v)\n%s", exitCode(err), err, out)
	}

	customer := db.anyCustomer()
	stream := "customer-" + customer
	pgtest.AsSuperuser(t, db.pool, `DELETE FROM events WHERE stream = $1 AND stream_version = 3`, stream)
	for _, args := range [][]string{{"verify"}, {"verify", "--customer", customer}} {
		out, err = db.ledger(nil, args...)
		if exitCode(err) != exitProblem || !strings.Contains(out, "PROBLEM stream "+stream+": seal 1 recorded the stream at version 3") ||
			!strings.Contains(out, "its tail was removed") {
			t.Errorf("%v after the tail was removed: exit %d (%v)\n%s", args, exitCode(err), err, out)
		}
	}
	out, err = db.ledger(nil, "verify", "--format", "json")
	var res struct {
		OK       bool
		Seals    struct{ Count int64 }
		Problems []struct {
			Stream string
			Seal   int64
			What   string
		}
	}
	if exitCode(err) != exitProblem || json.Unmarshal([]byte(out), &res) != nil || res.OK || res.Seals.Count != 1 ||
		len(res.Problems) != 1 || res.Problems[0].Stream != stream || res.Problems[0].Seal != 1 {
		t.Fatalf("verify --format json: exit %d (%v), %+v\n%s", exitCode(err), err, res, out)
	}

	down := &auditDB{url: "postgres://postgres@127.0.0.1:1/ledger?sslmode=disable&connect_timeout=2"}
	for _, args := range [][]string{{"verify"}, {"verify", "--seal", hash}, {"seal"}} {
		if _, err := down.ledger(nil, args...); exitCode(err) != exitFailed {
			t.Errorf("%v with the database down: exit %d (%v), want %d", args, exitCode(err), err, exitFailed)
		}
	}
	if _, err := db.ledger(nil, "verify", "--seal", "not-hex"); exitCode(err) != exitFailed || !isUsage(err) {
		t.Errorf("verify --seal not-hex: %v, want a usage error", err)
	}
}

func TestVerifyExportFile(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t, 1, 5)
	customer := db.anyCustomer()
	out, err := db.ledger(nil, "history", customer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	export := filepath.Join(dir, "export.jsonl")
	if err := os.WriteFile(export, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	offline := &auditDB{url: "postgres://postgres@127.0.0.1:1/ledger?sslmode=disable&connect_timeout=2"} // no database needed
	got, err := offline.ledger([]string{"STRIPE_WEBHOOK_SECRET", testSecret}, "verify", "--file", export)
	if exitCode(err) != exitOK || !strings.Contains(got, "checked 1 stream(s), 5 event(s) in "+export) || !strings.Contains(got, "re-verified against 1 webhook secret(s)") {
		t.Fatalf("verify --file of an untouched export: exit %d (%v)\n%s", exitCode(err), err, got)
	}
	if got, err = offline.ledger([]string{"STRIPE_WEBHOOK_SECRET", "whsec_other"}, "verify", "--file", export); exitCode(err) != exitProblem ||
		!strings.Contains(got, "matches the stored payload under none") {
		t.Fatalf("verify --file under another secret: exit %d (%v)\n%s", exitCode(err), err, got)
	}

	lines := strings.SplitAfter(out, "\n")
	victim := db.events[customer][2]
	edited := strings.Replace(lines[2], "1999", "1998", 1)
	if edited == lines[2] || !strings.Contains(lines[2], victim.ID) {
		t.Fatalf("line 3 of the export is not event %s with an amount to edit: %s", victim.ID, lines[2])
	}
	cases := map[string]struct{ text, want string }{
		"payload byte edited": {strings.Join(append(append(slices.Clone(lines[:2]), edited), lines[3:]...), ""),
			"PROBLEM event " + victim.ID},
		"line removed": {strings.Join(append(slices.Clone(lines[:2]), lines[3:]...), ""),
			"earlier record(s) of the stream are missing"},
	}
	for name, tc := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".jsonl")
		if err := os.WriteFile(path, []byte(tc.text), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := offline.ledger(nil, "verify", "--file", path)
		if exitCode(err) != exitProblem || !strings.Contains(got, tc.want) {
			t.Errorf("%s: exit %d (%v), want 1 and %q:\n%s", name, exitCode(err), err, tc.want, got)
		}
	}
	if _, err := offline.ledger(nil, "verify", "--file", filepath.Join(dir, "missing.jsonl")); exitCode(err) != exitFailed {
		t.Errorf("verify --file of a missing file: exit %d (%v), want %d", exitCode(err), err, exitFailed)
	}
	if _, err := offline.ledger(nil, "verify", "--file", export, "--customer", customer); !isUsage(err) {
		t.Errorf("verify --file --customer: %v, want a usage error", err)
	}
}
