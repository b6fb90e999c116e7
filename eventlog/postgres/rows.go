package postgres

import (
	"bytes"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// A rowScanner scans the rows of one query into records. Rebuilds and
// catch-ups read the whole log, and pgx's scan into a string or []byte
// allocates for every column: the text columns are scanned as the driver
// holds them (pgtype.DriverBytes, valid until the next row), an event's id
// and stream become one string, its type, API version and account (few
// distinct values) are shared with the query's earlier rows, and the
// payloads of a fold read share blocks.
type rowScanner struct {
	texts map[string]string // type, api_version and account texts met so far

	id, stream, typ, apiVersion, account, payload pgtype.DriverBytes

	block []byte // foldRecord's payloads
}

// scanFunc is (*rowScanner).record or (*rowScanner).foldRecord.
type scanFunc func(*rowScanner, pgx.CollectableRow) (eventlog.Record, error)

// record scans a row of recordColumns.
func (rs *rowScanner) record(row pgx.CollectableRow) (eventlog.Record, error) {
	var r eventlog.Record
	var signature, source pgtype.DriverBytes
	err := row.Scan(&r.Position.Commit, &r.Position.Prepare, &rs.id, &rs.stream, &r.StreamVersion, &rs.typ, &rs.apiVersion,
		&r.Created, &r.ReceivedAt, &rs.account, &rs.payload, &signature, &source,
		&r.PayloadSHA256, &r.PrevHash, &r.Hash)
	if err != nil {
		return r, err
	}
	rs.setTexts(&r)
	r.Payload = bytes.Clone(rs.payload)
	r.Signature, r.Source = string(signature), eventlog.Source(rs.text(source))
	r.Created, r.ReceivedAt = r.Created.UTC(), r.ReceivedAt.UTC()
	return r, nil
}

// foldRecord scans a row of foldColumns. The payloads of its records are
// cut from blocks of payloadBlock bytes (or one payload's, when larger), one
// allocation for many rows: a record kept keeps its block.
func (rs *rowScanner) foldRecord(row pgx.CollectableRow) (eventlog.Record, error) {
	var r eventlog.Record
	err := row.Scan(&r.Position.Commit, &r.Position.Prepare, &rs.id, &rs.stream, &r.StreamVersion, &rs.typ, &rs.apiVersion,
		&r.Created, &rs.account, &rs.payload)
	if err != nil {
		return r, err
	}
	rs.setTexts(&r)
	if len(rs.payload) > cap(rs.block)-len(rs.block) {
		rs.block = make([]byte, 0, max(payloadBlock, len(rs.payload)))
	}
	start := len(rs.block)
	rs.block = append(rs.block, rs.payload...)
	r.Payload = rs.block[start:len(rs.block):len(rs.block)] // appending to one copies it
	r.Created = r.Created.UTC()
	return r, nil
}

// payloadBlock is the size of foldRecord's payload blocks.
const payloadBlock = 256 << 10

// setTexts sets the id, stream, type, API version and account of r.
func (rs *rowScanner) setTexts(r *eventlog.Record) {
	ids := string(rs.id) + string(rs.stream) // one allocation
	r.ID, r.Stream = ids[:len(rs.id)], ids[len(rs.id):]
	r.Type, r.APIVersion, r.Account = rs.text(rs.typ), rs.text(rs.apiVersion), rs.text(rs.account)
}

// text is b as a string, the one met before when there was one.
func (rs *rowScanner) text(b []byte) string {
	if s, ok := rs.texts[string(b)]; ok {
		return s
	}
	s := string(b)
	rs.texts[s] = s
	return s
}
