package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/migrations/pgtest"
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

	var customer string
	for c := range db.events {
		customer = c
	}
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
