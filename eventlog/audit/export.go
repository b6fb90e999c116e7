package audit

import (
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// Entry is a record's metadata as the exports show it: hashes in hex, times
// in RFC 3339 UTC.
type Entry struct {
	EventID       string            `json:"event_id"`
	Stream        string            `json:"stream"`
	Account       string            `json:"account,omitempty"`
	Type          string            `json:"type"`
	APIVersion    string            `json:"api_version"`
	Created       time.Time         `json:"created"`
	ReceivedAt    time.Time         `json:"received_at"`
	StreamVersion int64             `json:"stream_version"`
	Position      eventlog.Position `json:"position"` // in the log's global order: a history's order and its page cursor
	Source        string            `json:"source"`   // provenance: webhook, backfill, reconcile or thin
	PayloadSHA256 string            `json:"payload_sha256"`
	PrevHash      string            `json:"prev_hash"`
	Hash          string            `json:"hash"`
	Signature     string            `json:"signature"` // the Stripe-Signature header as received: exports verify offline
}

// NewEntry returns r's metadata.
func NewEntry(r eventlog.Record) Entry {
	return Entry{
		EventID:       r.ID,
		Stream:        r.Stream,
		Account:       r.Account,
		Type:          r.Type,
		APIVersion:    r.APIVersion,
		Created:       r.Created.UTC(),
		ReceivedAt:    r.ReceivedAt.UTC(),
		StreamVersion: r.StreamVersion,
		Position:      r.Position,
		Source:        string(r.Source.OrWebhook()),
		PayloadSHA256: hex.EncodeToString(r.PayloadSHA256),
		PrevHash:      hex.EncodeToString(r.PrevHash),
		Hash:          hex.EncodeToString(r.Hash),
		Signature:     r.Signature,
	}
}

// AppendJSON appends r as one JSON object: its Entry fields and "payload",
// the stored payload embedded verbatim as JSON (whitespace and all, so that
// its sha256 and signature can be checked on the response bytes). json.Marshal
// would compact a json.RawMessage, hence the splicing. A payload that is not
// valid JSON (only possible if it was altered in storage) is embedded as a
// JSON string instead, so the document stays valid.
func AppendJSON(dst []byte, r eventlog.Record) ([]byte, error) {
	meta, err := json.Marshal(NewEntry(r))
	if err != nil {
		return dst, fmt.Errorf("encode event %s: %w", r.ID, err)
	}
	dst = append(dst, meta[:len(meta)-1]...) // without the closing brace
	dst = append(dst, `,"payload":`...)
	if json.Valid(r.Payload) {
		dst = append(dst, r.Payload...)
	} else {
		dst = strconv.AppendQuote(dst, string(r.Payload))
	}
	return append(dst, '}'), nil
}

// JSONLWriter writes records as JSON Lines: one object per line with the Entry
// fields and the payload. Stripe's bodies contain line breaks, which raw JSON
// would carry into the line, so the payload is a JSON string holding the exact
// bytes ("payload"), or, for bytes that are not UTF-8 and so cannot survive a
// JSON string, their base64 ("payload_base64"). Decoding either gives the
// stored bytes back exactly.
type JSONLWriter struct {
	enc *json.Encoder
}

// NewJSONLWriter returns a JSONLWriter on w. Wrap w in a bufio.Writer for throughput.
func NewJSONLWriter(w io.Writer) *JSONLWriter {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &JSONLWriter{enc: enc}
}

type jsonlLine struct {
	Entry
	Payload       *string `json:"payload,omitempty"`
	PayloadBase64 *string `json:"payload_base64,omitempty"`
}

// Write writes one record.
func (w *JSONLWriter) Write(r eventlog.Record) error {
	line := jsonlLine{Entry: NewEntry(r)}
	if utf8.Valid(r.Payload) {
		s := string(r.Payload)
		line.Payload = &s
	} else {
		s := base64.StdEncoding.EncodeToString(r.Payload)
		line.PayloadBase64 = &s
	}
	if err := w.enc.Encode(line); err != nil {
		return fmt.Errorf("write event %s: %w", r.ID, err)
	}
	return nil
}

// CSVHeader is the first row CSVWriter writes.
var CSVHeader = []string{"event_id", "stream", "type", "api_version", "created", "received_at",
	"stream_version", "source", "payload_sha256", "prev_hash", "hash", "payload"}

// CSVWriter writes records as CSV (RFC 4180), one row per record under
// CSVHeader; the payload is the last column, as text. Auditors open the CSV in
// spreadsheets, which run a cell that starts with =, +, -, @, a tab or a
// carriage return as a formula, so such a cell gets a leading single quote
// (OWASP's CSV injection advice), and so does a cell that already starts with
// one, which keeps the rule reversible: drop the first character of every
// cell that starts with ' to get the stored value back. The JSON and JSON
// Lines exports are exact and are the ones `ledger verify --file` checks.
type CSVWriter struct {
	w      *csv.Writer
	header bool
}

// NewCSVWriter returns a CSVWriter on w; it writes the header before the first record.
func NewCSVWriter(w io.Writer) *CSVWriter { return &CSVWriter{w: csv.NewWriter(w)} }

// Write writes one record; call Flush when done.
func (w *CSVWriter) Write(r eventlog.Record) error {
	if !w.header {
		w.header = true
		if err := w.w.Write(CSVHeader); err != nil {
			return fmt.Errorf("write CSV header: %w", err)
		}
	}
	e := NewEntry(r)
	row := []string{e.EventID, e.Stream, e.Type, e.APIVersion,
		e.Created.Format(time.RFC3339Nano), e.ReceivedAt.Format(time.RFC3339Nano),
		strconv.FormatInt(e.StreamVersion, 10), e.Source, e.PayloadSHA256, e.PrevHash, e.Hash, string(r.Payload)}
	for i, cell := range row {
		row[i] = neutralizeCell(cell)
	}
	if err := w.w.Write(row); err != nil {
		return fmt.Errorf("write event %s: %w", r.ID, err)
	}
	return nil
}

// neutralizeCell prefixes a single quote to a cell a spreadsheet would run as
// a formula (or that starts with a quote already); see CSVWriter.
func neutralizeCell(cell string) string {
	if cell != "" && strings.IndexByte("=+-@\t\r'", cell[0]) >= 0 {
		return "'" + cell
	}
	return cell
}

// Flush writes any buffered rows (and the header, if no record was written) and reports the first write error.
func (w *CSVWriter) Flush() error {
	if !w.header {
		w.header = true
		_ = w.w.Write(CSVHeader) // an error here is kept by the csv.Writer and reported below
	}
	w.w.Flush()
	return w.w.Error()
}
