package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
)

type historyLine struct {
	EventID       string  `json:"event_id"`
	Stream        string  `json:"stream"`
	StreamVersion int64   `json:"stream_version"`
	Hash          string  `json:"hash"`
	Payload       *string `json:"payload"`
	PayloadBase64 string  `json:"payload_base64"`
}

func (l historyLine) payload() []byte {
	if l.Payload != nil {
		return []byte(*l.Payload)
	}
	b, _ := base64.StdEncoding.DecodeString(l.PayloadBase64)
	return b
}

func parseJSONL(t *testing.T, out string) []historyLine {
	t.Helper()
	var lines []historyLine
	for i, raw := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var l historyLine
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i+1, err, raw)
		}
		lines = append(lines, l)
	}
	return lines
}

// TestHistoryAllRoundTripsPayloads exports the whole log and compares every
// line, in order, with the stored rows byte for byte.
func TestHistoryAllRoundTripsPayloads(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t, 3, 5)
	odd := eventlog.Event{ID: "evt_not_utf8", Stream: "object-unknown-evt_not_utf8", Type: "x", Created: time.Unix(1_700_000_000, 0),
		Payload: []byte("{\"text\": \"\xff\xfe\"}\n"), Signature: "t=1,v1=00"}
	if _, err := postgres.New(db.pool, nil).Append(context.Background(), odd); err != nil {
		t.Fatal(err)
	}
	out, err := db.ledger(nil, "history", "--all")
	if err != nil {
		t.Fatal(err)
	}
	lines := parseJSONL(t, out)
	rows, err := db.pool.Query(context.Background(), `SELECT event_id, payload FROM events ORDER BY global_position`)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for rows.Next() {
		var id string
		var payload []byte
		if err := rows.Scan(&id, &payload); err != nil {
			t.Fatal(err)
		}
		if n >= len(lines) || lines[n].EventID != id || !bytes.Equal(lines[n].payload(), payload) {
			t.Fatalf("line %d does not match stored event %s", n+1, id)
		}
		n++
	}
	if rows.Err() != nil || n != 16 || len(lines) != n {
		t.Fatalf("%d lines for %d stored events (%v), want 16", len(lines), n, rows.Err())
	}
}

func TestHistoryOfOneCustomer(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t, 2, 5)
	customer := db.anyCustomer()
	events := db.events[customer]

	out, err := db.ledger(nil, "history", customer)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, l := range parseJSONL(t, out) {
		ids = append(ids, l.EventID)
	}
	if want := eventIDs(events); !slices.Equal(ids, want) {
		t.Errorf("JSONL ids = %v, want %v", ids, want)
	}

	since, until := events[1].Created.Format(time.RFC3339), events[3].Created.Format(time.RFC3339)
	out, err = db.ledger(nil, "history", customer, "--format", "csv", "--since", since, "--until", until)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(rows) != 4 || rows[0][0] != "event_id" {
		t.Fatalf("CSV %q, %v; want a header and 3 rows", rows, err)
	}
	for i, row := range rows[1:] {
		if row[0] != events[i+1].ID {
			t.Errorf("CSV row %d is %s, want %s", i+1, row[0], events[i+1].ID)
		}
	}

	if _, err := db.ledger(nil, "history", "cus_nobody"); err == nil || !strings.Contains(err.Error(), "has no events") {
		t.Errorf("unknown customer: err = %v", err)
	}
}

func eventIDs(es []eventlog.Event) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}
