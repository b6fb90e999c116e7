// Package audit is the auditor's side of the event log, independent of its
// backend: Verify re-proves every stream's hash chain, payload digests and
// stored Stripe signatures, and the export writers render records as JSON,
// JSON Lines and CSV with the payload bytes exactly as they were received.
// The api package and the ledger command share it.
package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// MaxProblems is how many problems a Report details; past it they are only
// counted, so that verifying a log against the wrong secret stays in bounded memory.
const MaxProblems = 1000

// Report is what Verify found.
type Report struct {
	Streams          int64     // streams with at least one record
	Events           int64     // records checked
	SignaturesTested bool      // whether stored signatures were checked against webhook secrets
	UnsignedByDesign int64     // records fetched from Stripe's API, which no Stripe-Signature covers (see Verify)
	ProblemCount     int64     // every problem found
	Problems         []Problem // the first MaxProblems of them, in the order found
}

// OK reports whether nothing was wrong.
func (r Report) OK() bool { return r.ProblemCount == 0 }

// Problem is one thing wrong with one stored record.
type Problem struct {
	EventID       string
	Stream        string
	StreamVersion int64
	Position      eventlog.Position
	What          string
}

func (p Problem) String() string {
	return fmt.Sprintf("event %s (stream %s, version %d, position %s): %s",
		p.EventID, p.Stream, p.StreamVersion, p.Position, p.What)
}

// Verify re-checks the records of the given streams, or of the whole log when
// streams is empty, and reports every record that is not what the log wrote:
//
//   - versions must be dense from 0 (a gap means records were deleted);
//   - payload_sha256 must be sha256 of the stored payload;
//   - prev_hash must be the previous record's hash (GenesisHash for version 0);
//   - hash must be ChainHash(prev_hash, payload_sha256);
//   - with secrets, the stored Stripe-Signature must match the stored payload
//     under one of them (the timestamp's age is ignored: it was checked on receipt).
//     A record whose provenance says the ledger fetched it from Stripe's API
//     (backfill, reconcile, or the snapshot fetched for a thin event) has no
//     signature by design: it is counted in UnsignedByDesign, not a problem.
//     A webhook delivery or a thin event's notification without one is.
//
// Each link is checked against the stored neighbour, so one edit is reported
// where it was made instead of at every later record. Deleting a stream's last
// records leaves a shorter valid chain: compare the stream head (see Head)
// with one recorded earlier to catch that.
//
// The whole log is read in global order, keeping each stream's last version
// and hash in memory: O(streams), not O(events). progress, when not nil, is
// called after every batch with the number of records checked so far. An
// error is returned only when the log cannot be read.
func Verify(ctx context.Context, l eventlog.Log, streams []string, secrets []string, progress func(done int64)) (Report, error) {
	v := &verifier{secrets: secrets, heads: map[string]link{}, report: Report{SignaturesTested: len(secrets) > 0}}
	check := func(batch []eventlog.Record) {
		for _, r := range batch {
			v.check(r)
		}
		if progress != nil {
			progress(v.report.Events)
		}
	}
	if len(streams) == 0 {
		if err := EachInLog(ctx, l, func(batch []eventlog.Record) error {
			check(batch)
			return nil
		}); err != nil {
			return v.report, err
		}
	}
	for _, stream := range streams {
		if err := EachInStream(ctx, l, stream, 0, func(batch []eventlog.Record) error {
			check(batch)
			return nil
		}); err != nil {
			return v.report, err
		}
	}
	v.report.Streams = int64(len(v.heads))
	return v.report, nil
}

// link is what the next record of a stream must continue from.
type link struct {
	version int64
	hash    []byte
}

type verifier struct {
	secrets []string
	heads   map[string]link
	report  Report
}

func (v *verifier) check(r eventlog.Record) {
	v.report.Events++
	fail := func(format string, args ...any) {
		if v.report.ProblemCount++; v.report.ProblemCount > MaxProblems {
			return
		}
		v.report.Problems = append(v.report.Problems, Problem{
			EventID: r.ID, Stream: r.Stream, StreamVersion: r.StreamVersion, Position: r.Position,
			What: fmt.Sprintf(format, args...),
		})
	}
	prev, seen := v.heads[r.Stream]
	if !seen {
		prev = link{version: -1, hash: eventlog.GenesisHash}
	}
	v.heads[r.Stream] = link{version: r.StreamVersion, hash: r.Hash}

	switch want := prev.version + 1; {
	case r.StreamVersion > want:
		fail("stream_version is %d, expected %d: %d earlier record(s) of the stream are missing",
			r.StreamVersion, want, r.StreamVersion-want)
	case r.StreamVersion < want:
		fail("stream_version is %d, expected %d: the stream's versions are out of order or repeated",
			r.StreamVersion, want)
	}
	if sum := sha256.Sum256(r.Payload); !bytes.Equal(sum[:], r.PayloadSHA256) {
		fail("payload does not match its payload_sha256 %x (sha256 of the stored payload is %x): the payload was altered",
			r.PayloadSHA256, sum)
	}
	if !bytes.Equal(r.PrevHash, prev.hash) {
		fail("prev_hash %x is not the hash %x of the stream's previous record", r.PrevHash, prev.hash)
	}
	if want := eventlog.ChainHash(r.PrevHash, r.PayloadSHA256); !bytes.Equal(r.Hash, want) {
		fail("hash %x is not sha256(prev_hash || payload_sha256) = %x", r.Hash, want)
	}
	env, envOK := checkMetadata(r, fail)
	if r.Signature == "" && envOK && unsignedByDesign(r.Source, env) {
		v.report.UnsignedByDesign++
		return
	}
	if len(v.secrets) > 0 {
		if err := verifySignature(r, v.secrets); err != nil {
			fail("%v", err)
		}
	}
}

// unsignedByDesign reports whether a record of this provenance was fetched
// from Stripe's API rather than delivered, so no Stripe-Signature covers it.
// A thin event's notification is delivered (and signed); what the ledger
// fetched for it is not.
func unsignedByDesign(source eventlog.Source, env domain.Envelope) bool {
	switch source {
	case eventlog.SourceBackfill, eventlog.SourceReconcile:
		return true
	case eventlog.SourceThin:
		return !env.Thin
	}
	return false
}

// checkMetadata compares the record's columns with what its payload says:
// the projections and the point-in-time view trust them (type, created,
// account), so an edit of a column is tampering as much as an edit of the
// payload.
func checkMetadata(r eventlog.Record, fail func(format string, args ...any)) (domain.Envelope, bool) {
	env, err := domain.ParseEnvelope(r.Payload)
	if err != nil {
		fail("the payload is not a Stripe event: %v", err)
		return env, false
	}
	for _, c := range []struct{ column, stored, payload string }{
		{"event_id", r.ID, env.ID},
		{"type", r.Type, env.Type},
		{"api_version", r.APIVersion, env.APIVersion},
		{"account", r.Account, env.Account},
		{"stream", r.Stream, env.Stream()},
	} {
		if c.stored != c.payload {
			fail("%s is %q but the payload says %q", c.column, c.stored, c.payload)
		}
	}
	if !r.Created.Equal(env.Created) {
		fail("created is %s but the payload says %s", r.Created.UTC().Format(time.RFC3339), env.Created.Format(time.RFC3339))
	}
	return env, true
}

// verifySignature checks the stored Stripe-Signature against the stored
// payload under each secret, ignoring how old its timestamp is.
func verifySignature(r eventlog.Record, secrets []string) error {
	switch err := VerifySignature(r.Payload, r.Signature, secrets, 0); {
	case errors.Is(err, ErrNoSignature):
		return errors.New("no Stripe-Signature is stored: nothing proves Stripe sent this payload")
	case errors.Is(err, ErrMalformedSignature):
		return fmt.Errorf("the stored Stripe-Signature %q is malformed", r.Signature)
	case err != nil:
		return fmt.Errorf("the stored Stripe-Signature matches the stored payload under none of the %d webhook secret(s)", len(secrets))
	}
	return nil
}
