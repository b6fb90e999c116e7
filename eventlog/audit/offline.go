package audit

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// maxLine bounds one line of an export: a 1 MiB payload, escaped, and its metadata.
const maxLine = 16 << 20

// VerifyJSONL verifies an export written by JSONLWriter (ledger history)
// without the log: every stream's hash chain and payload digests, the
// metadata against the payload, and, with secrets, the stored signatures.
// A stream whose first line in the export is not version 0 (an export cut
// with --since) is checked from there on, trusting that line's prev_hash;
// Report.Anchored counts them. It fails only when r cannot be read or a
// line is not an export line.
func VerifyJSONL(r io.Reader, secrets []string) (Report, error) {
	v := NewVerifier(secrets, nil)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		rec, err := parseJSONLLine(sc.Bytes())
		if err != nil {
			return v.report, fmt.Errorf("line %d: %w", n, err)
		}
		if _, seen := v.heads[rec.Stream]; !seen && rec.StreamVersion > 0 {
			v.heads[rec.Stream] = link{version: rec.StreamVersion - 1, hash: rec.PrevHash}
			v.report.Anchored++
		}
		v.Check(rec)
	}
	if err := sc.Err(); err != nil {
		return v.report, fmt.Errorf("read export: %w", err)
	}
	return v.Finish(nil), nil
}

func parseJSONLLine(line []byte) (eventlog.Record, error) {
	var l jsonlLine
	if err := json.Unmarshal(line, &l); err != nil {
		return eventlog.Record{}, fmt.Errorf("not an export line: %v", err)
	}
	r := eventlog.Record{
		Event: eventlog.Event{ID: l.EventID, Stream: l.Stream, Type: l.Type, APIVersion: l.APIVersion,
			Created: l.Created, Account: l.Account, Signature: l.Signature, Source: eventlog.Source(l.Source)},
		StreamVersion: l.StreamVersion,
		Position:      l.Position,
		ReceivedAt:    l.ReceivedAt,
	}
	switch {
	case l.Payload != nil:
		r.Payload = []byte(*l.Payload)
	case l.PayloadBase64 != nil:
		p, err := base64.StdEncoding.DecodeString(*l.PayloadBase64)
		if err != nil {
			return r, fmt.Errorf("event %s: payload_base64: %v", l.EventID, err)
		}
		r.Payload = p
	default:
		return r, fmt.Errorf("event %s has no payload", l.EventID)
	}
	for _, f := range []struct {
		name string
		hex  string
		dst  *[]byte
	}{{"payload_sha256", l.PayloadSHA256, &r.PayloadSHA256}, {"prev_hash", l.PrevHash, &r.PrevHash}, {"hash", l.Hash, &r.Hash}} {
		b, err := hex.DecodeString(f.hex)
		if err != nil {
			return r, fmt.Errorf("event %s: %s is not hex", l.EventID, f.name)
		}
		*f.dst = b
	}
	return r, nil
}
