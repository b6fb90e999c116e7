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
	"maps"
	"slices"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/stripesig"
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
	Anchored         int64     // streams an export holds from a later version than 0 (VerifyJSONL)
	ProblemCount     int64     // every problem found
	Problems         []Problem // the first MaxProblems of them, in the order found
}

// OK reports whether nothing was wrong.
func (r Report) OK() bool { return r.ProblemCount == 0 }

// Problem is one thing wrong with one stored record, or with a stream as a
// seal recorded it (EventID empty, Seal set), or with the seals themselves
// (Stream empty too).
type Problem struct {
	EventID       string            `json:"event_id,omitempty"`
	Stream        string            `json:"stream,omitempty"`
	StreamVersion int64             `json:"stream_version"`
	Position      eventlog.Position `json:"-"`
	Seal          int64             `json:"seal,omitempty"`
	What          string            `json:"what"`
}

func (p Problem) String() string {
	switch {
	case p.EventID != "":
		return fmt.Sprintf("event %s (stream %s, version %d, position %s): %s",
			p.EventID, p.Stream, p.StreamVersion, p.Position, p.What)
	case p.Stream != "":
		return fmt.Sprintf("stream %s: %s", p.Stream, p.What)
	}
	return p.What
}

// Options says what Verify checks besides the chains and digests.
type Options struct {
	// Streams limits the check to these streams; empty: the whole log.
	Streams []string
	// Secrets are the webhook secrets stored signatures are checked against; none: not checked.
	Secrets []string
	// Sealed holds the stream heads the seals recorded (seal.Check): the
	// log must still hold each of them.
	Sealed map[string][]SealedHead
	// Progress, when not nil, is called after every batch with the number of records checked so far.
	Progress func(done int64)
}

// SealedHead is a stream head (version and hash) that seal Seal recorded.
type SealedHead struct {
	Seal    int64
	Version int64
	Hash    [sha256.Size]byte
}

// Verify re-checks the records of opts.Streams, or of the whole log, and
// reports every record that is not what the log wrote:
//
//   - versions must be dense from 0 (a gap means records were deleted);
//   - payload_sha256 must be sha256 of the stored payload;
//   - prev_hash must be the previous record's hash (GenesisHash for version 0);
//   - hash must be ChainHash(prev_hash, payload_sha256);
//   - the metadata columns must say what the payload says;
//   - with secrets, the stored Stripe-Signature must match the stored payload
//     under one of them (the timestamp's age is ignored: it was checked on receipt).
//     A record whose provenance says the ledger fetched it from Stripe's API
//     (backfill, reconcile, or the snapshot fetched for a thin event) has no
//     signature by design: it is counted in UnsignedByDesign, not a problem.
//     A webhook delivery or a thin event's notification without one is;
//   - every head a seal recorded must still be there with the sealed hash,
//     which catches a removed tail, a removed stream, and a stream truncated
//     and re-appended with a valid chain.
//
// Each link is checked against the stored neighbour, so one edit is reported
// where it was made instead of at every later record.
//
// The whole log is read in global order, keeping each stream's last version
// and hash in memory: O(streams + sealed heads), not O(events). An error is
// returned only when the log cannot be read.
func Verify(ctx context.Context, l eventlog.Log, opts Options) (Report, error) {
	v := NewVerifier(opts.Secrets, opts.Sealed)
	check := func(batch []eventlog.Record) error {
		for _, r := range batch {
			v.Check(r)
		}
		if opts.Progress != nil {
			opts.Progress(v.report.Events)
		}
		return nil
	}
	if len(opts.Streams) == 0 {
		if err := EachInLog(ctx, l, check); err != nil {
			return v.report, err
		}
	}
	for _, stream := range opts.Streams {
		if err := EachInStream(ctx, l, stream, 0, check); err != nil {
			return v.report, err
		}
	}
	return v.Finish(opts.Streams), nil
}

// link is what the next record of a stream must continue from.
type link struct {
	version int64
	hash    []byte
}

// Verifier checks records handed to it in global order (or stream by
// stream); Verify and the offline check of an export (VerifyJSONL) share it.
type Verifier struct {
	secrets []string
	heads   map[string]link
	sealed  map[string][]SealedHead // what remains to be met, per stream
	report  Report
}

// NewVerifier returns a Verifier that checks signatures under secrets (none:
// not checked) and expects the sealed heads.
func NewVerifier(secrets []string, sealed map[string][]SealedHead) *Verifier {
	v := &Verifier{secrets: secrets, heads: map[string]link{}, sealed: map[string][]SealedHead{},
		report: Report{SignaturesTested: len(secrets) > 0}}
	for stream, heads := range sealed {
		v.sealed[stream] = slices.Clone(heads)
	}
	return v
}

// Finish reports what the Verifier found, after checking that every sealed
// head of streams (of every stream, when streams is empty) was met.
func (v *Verifier) Finish(streams []string) Report {
	if len(streams) == 0 {
		streams = slices.Sorted(maps.Keys(v.sealed))
	}
	for _, stream := range streams {
		heads := v.sealed[stream]
		if len(heads) == 0 {
			continue
		}
		sh := heads[0]
		last, seen := v.heads[stream]
		p := Problem{Stream: stream, StreamVersion: sh.Version, Seal: sh.Seal}
		switch {
		case !seen:
			p.What = fmt.Sprintf("seal %d recorded the stream at version %d (hash %x), but the log holds no record of it: the stream was removed",
				sh.Seal, sh.Version, sh.Hash)
		case last.version < sh.Version:
			p.What = fmt.Sprintf("seal %d recorded the stream at version %d (hash %x), but it ends at version %d: its tail was removed",
				sh.Seal, sh.Version, sh.Hash, last.version)
		default:
			p.What = fmt.Sprintf("seal %d recorded version %d (hash %x), which the log no longer holds: records were removed",
				sh.Seal, sh.Version, sh.Hash)
		}
		v.report.add(p)
	}
	v.report.Streams = int64(len(v.heads))
	return v.report
}

func (r *Report) add(p Problem) {
	if r.ProblemCount++; r.ProblemCount <= MaxProblems {
		r.Problems = append(r.Problems, p)
	}
}

// Check checks one record against its stream's previous one.
func (v *Verifier) Check(r eventlog.Record) {
	v.report.Events++
	fail := func(format string, args ...any) {
		v.report.add(Problem{
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
	v.checkSealed(r, fail)
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

// checkSealed compares r with the heads sealed at its version, and drops
// the sealed heads it has passed (Finish reports those never met).
func (v *Verifier) checkSealed(r eventlog.Record, fail func(format string, args ...any)) {
	heads := v.sealed[r.Stream]
	for len(heads) > 0 && heads[0].Version <= r.StreamVersion {
		switch sh := heads[0]; {
		case sh.Version < r.StreamVersion:
			fail("version %d, which seal %d recorded (hash %x), is missing", sh.Version, sh.Seal, sh.Hash)
		case !bytes.Equal(sh.Hash[:], r.Hash):
			fail("hash %x is not the hash %x seal %d recorded for this version: the stream was rewritten", r.Hash, sh.Hash, sh.Seal)
		}
		heads = heads[1:]
	}
	if len(heads) == 0 {
		delete(v.sealed, r.Stream)
	} else {
		v.sealed[r.Stream] = heads
	}
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
	switch err := stripesig.Verify(r.Payload, r.Signature, secrets, 0); {
	case errors.Is(err, stripesig.ErrMissing):
		return errors.New("no Stripe-Signature is stored: nothing proves Stripe sent this payload")
	case errors.Is(err, stripesig.ErrMalformed):
		return fmt.Errorf("the stored Stripe-Signature %q is malformed", r.Signature)
	case err != nil:
		return fmt.Errorf("the stored Stripe-Signature matches the stored payload under none of the %d webhook secret(s)", len(secrets))
	}
	return nil
}
