package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/eventlog/seal"
)

func newVerifyCmd(c *cli) *cobra.Command {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-prove the event log against its hash chains, seals and stored signatures",
		Long: `Recompute every hash chain and payload digest of the event log (or of one
customer's history: its stream and its linked objects'), check the seal chain and that every stream head a seal
recorded is still there, and, with STRIPE_WEBHOOK_SECRET set, re-verify every
stored Stripe signature. --seal HASH also requires that seal (written down
elsewhere) to be in the chain. --file verifies an export of ledger history
(JSON Lines) offline, without a database.
Exits 0 when everything checks, 1 when it found tampering, 2 when it could not
check (database unreachable, bad arguments).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVerify(cmd.Context(), c, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.customer, "customer", "", "verify only this customer's stream (cus_…); default: the whole log")
	fl.StringVar(&f.account, "account", "", "the Connect account (acct_…) of --customer")
	fl.StringVar(&f.seal, "seal", "", "the hash of a seal recorded elsewhere, which must still be in the chain")
	fl.StringVar(&f.file, "file", "", "verify this JSON Lines export (ledger history) instead of the database")
	fl.StringVar(&f.format, "format", "text", "output: text or json")
	return cmd
}

type verifyFlags struct {
	customer, account, seal, file, format string
}

// verifyResult is what verify found, as --format json prints it.
type verifyResult struct {
	Source           string          `json:"source"` // "database" or the export's path
	OK               bool            `json:"ok"`
	Streams          int64           `json:"streams"`
	Events           int64           `json:"events"`
	SignaturesTested bool            `json:"signatures_tested"`
	UnsignedByDesign int64           `json:"unsigned_by_design"` // fetched from Stripe's API (provenance backfill, reconcile, thin)
	Anchored         int64           `json:"streams_starting_mid_export,omitempty"`
	Seals            *sealSummary    `json:"seals,omitempty"`
	ProblemCount     int64           `json:"problem_count"`
	Problems         []audit.Problem `json:"problems"`
}

type sealSummary struct {
	Count      int64  `json:"count"`
	LatestID   int64  `json:"latest_id,omitempty"`
	LatestHash string `json:"latest_hash,omitempty"`
	Expected   string `json:"expected,omitempty"` // --seal
	Found      bool   `json:"expected_found,omitempty"`
}

// runVerify checks the log (or an export) and reports what it found; it
// fails with a problemError (exit 1) when anything does not match.
func runVerify(ctx context.Context, c *cli, f verifyFlags) error {
	if err := checkFormat(f.format); err != nil {
		return err
	}
	var streams []string
	switch {
	case f.file != "" && (f.customer != "" || f.account != "" || f.seal != ""):
		return usageError("verify: --file takes no --customer, --account or --seal")
	case f.customer != "":
		stream, err := domain.CustomerStreamOf(f.account, f.customer)
		if err != nil {
			return usageError(err.Error())
		}
		streams = []string{stream}
	case f.account != "":
		return usageError("verify: --account needs --customer")
	}
	if f.seal != "" {
		if b, err := hex.DecodeString(f.seal); err != nil || len(b) != sha256.Size {
			return usageError(fmt.Sprintf("verify: --seal %q is not a seal hash (64 hex digits)", f.seal))
		}
	}
	cfg, logger, err := c.setup()
	if err != nil {
		return err
	}
	var res verifyResult
	if f.file != "" {
		res, err = verifyFile(f.file, cfg.WebhookSecrets)
	} else {
		res, err = verifyDatabase(ctx, c, cfg, logger, streams != nil, f)
	}
	if err != nil {
		return err
	}
	if f.format == "json" {
		err = writeJSON(c.stdout, res)
	} else {
		writeVerifyText(c.stdout, res, len(cfg.WebhookSecrets))
	}
	if err == nil && !res.OK {
		err = problemError{fmt.Errorf("verification failed: %d problem(s)", res.ProblemCount)}
	}
	return err
}

func verifyFile(path string, secrets []string) (verifyResult, error) {
	file, err := os.Open(path)
	if err != nil {
		return verifyResult{}, fmt.Errorf("verify: %w", err)
	}
	defer file.Close()
	report, err := audit.VerifyJSONL(bufio.NewReaderSize(file, 1<<20), secrets)
	if err != nil {
		return verifyResult{}, fmt.Errorf("verify %s: %w", path, err)
	}
	if report.Events == 0 {
		return verifyResult{}, fmt.Errorf("verify: %s holds no events: nothing to verify", path)
	}
	return newVerifyResult(path, report), nil
}

func verifyDatabase(ctx context.Context, c *cli, cfg Config, logger *slog.Logger, oneCustomer bool, f verifyFlags) (verifyResult, error) {
	expect := f.seal
	b, err := OpenAuditBackends(ctx, cfg, logger)
	if err != nil {
		return verifyResult{}, err
	}
	defer b.Close()
	var streams []string
	if oneCustomer { // its stream and its linked objects' (DESIGN §8)
		if streams, err = b.ReadModel.CustomerStreams(ctx, f.account, f.customer); err != nil {
			return verifyResult{}, fmt.Errorf("verify: %w", err)
		}
	}
	total := int64(-1) // one stream: its length is unknown, count instead
	if streams == nil {
		if n, err := b.Log.CountAfter(ctx, eventlog.Start); err == nil {
			total = n
		}
	}
	progress, finish := progressBar(c.stderr, "verifying", total)
	defer finish()
	return verifyLog(ctx, b, streams, cfg.WebhookSecrets, expect, progress)
}

// verifyLog checks the seal chain (and that expect, when given, is in it),
// then the records of streams (nil: the whole log) with audit.Verify
// against the seals' stream heads.
// errNothingToVerify: the customer's stream holds no events and no seal
// covers it (an unknown customer).
var errNothingToVerify = errors.New("nothing to verify (unknown customer?)")

func verifyLog(ctx context.Context, b *Backends, streams, secrets []string, expect string, progress func(int64)) (verifyResult, error) {
	// The seals first: whatever they cover was readable when they were written.
	chain, err := seal.Check(ctx, b.Pool, expect)
	if err != nil {
		return verifyResult{}, fmt.Errorf("verify: %w", err)
	}
	report, err := audit.Verify(ctx, b.Log, audit.Options{Streams: streams, Secrets: secrets, Sealed: chain.Sealed, Progress: progress})
	if err != nil {
		return verifyResult{}, fmt.Errorf("verify: %w", err)
	}
	if streams != nil && report.Events == 0 && len(chain.Sealed[streams[0]]) == 0 {
		return verifyResult{}, fmt.Errorf("verify: stream %s holds no events and no seal covers it: %w", streams[0], errNothingToVerify)
	}
	res := newVerifyResult("database", report)
	res.Seals = &sealSummary{Count: chain.Seals, Expected: expect, Found: chain.Found}
	if chain.Seals > 0 {
		res.Seals.LatestID, res.Seals.LatestHash = chain.Latest.ID, hex.EncodeToString(chain.Latest.Hash)
	}
	res.Problems = append(chain.Problems, res.Problems...)
	res.ProblemCount += int64(len(chain.Problems))
	res.OK = res.ProblemCount == 0
	return res, nil
}

func newVerifyResult(source string, r audit.Report) verifyResult {
	return verifyResult{Source: source, OK: r.OK(), Streams: r.Streams, Events: r.Events, SignaturesTested: r.SignaturesTested,
		UnsignedByDesign: r.UnsignedByDesign, Anchored: r.Anchored, ProblemCount: r.ProblemCount, Problems: append([]audit.Problem{}, r.Problems...)}
}

func writeVerifyText(w io.Writer, res verifyResult, secrets int) {
	fmt.Fprintf(w, "checked %d stream(s), %d event(s) in %s: hash chains and payload digests recomputed\n", res.Streams, res.Events, res.Source)
	if res.Anchored > 0 {
		fmt.Fprintf(w, "%d stream(s) start after version 0 in the export: checked from their first line on\n", res.Anchored)
	}
	if res.UnsignedByDesign > 0 {
		fmt.Fprintf(w, "%d record(s) fetched from Stripe's API (provenance backfill, reconcile or thin) carry no Stripe-Signature, by design\n",
			res.UnsignedByDesign)
	}
	if res.SignaturesTested {
		fmt.Fprintf(w, "Stripe signatures re-verified against %d webhook secret(s), timestamps ignored\n", secrets)
	} else {
		fmt.Fprintln(w, "Stripe signatures NOT checked: STRIPE_WEBHOOK_SECRET is not set")
	}
	switch s := res.Seals; {
	case s == nil:
		fmt.Fprintln(w, "seals NOT checked: an export carries none (a removed tail or stream goes unnoticed)")
	case s.Count == 0:
		fmt.Fprintln(w, "no seal written yet (ledger seal): a removed tail or stream would go unnoticed")
	default:
		fmt.Fprintf(w, "%d seal(s) checked, the latest is seal %d %s\n", s.Count, s.LatestID, s.LatestHash)
	}
	if s := res.Seals; s != nil && s.Found {
		fmt.Fprintf(w, "seal %s is in the chain\n", s.Expected)
	}
	for _, p := range res.Problems {
		fmt.Fprintln(w, "PROBLEM", p)
	}
	if more := res.ProblemCount - int64(len(res.Problems)); more > 0 {
		fmt.Fprintf(w, "… and %d more problem(s) not listed\n", more)
	}
	switch {
	case res.OK && res.Seals != nil && res.Seals.Count > 0:
		fmt.Fprintln(w, "OK: no record was altered or reordered, and none that a seal covers was removed")
	case res.OK:
		fmt.Fprintln(w, "OK: no record was altered or reordered (removals are caught only where a seal covers them)")
	}
}

// progressBar returns a callback that draws progress on stderr when stderr
// is a terminal (a bar against total, or a counter when total is negative:
// unknown), and a func that ends the drawing. When stderr is not a terminal,
// the callback is nil and nothing is drawn.
func progressBar(stderr io.Writer, description string, total int64) (progress func(done int64), finish func()) {
	bar := newProgressBar(stderr, description, total)
	if bar == nil {
		return nil, func() {}
	}
	return func(done int64) {
			if total >= 0 && done > bar.GetMax64() { // events appended since the count
				bar.ChangeMax64(done)
			}
			_ = bar.Set64(done)
		}, func() {
			_ = bar.Finish()
		}
}

// estimatedProgressBar is progressBar for work whose total is estimated as
// it goes (a backfill learns how far back each page of Stripe's reaches, not
// how many events remain): each call passes the latest estimate.
func estimatedProgressBar(stderr io.Writer, description string) (progress func(done, estimate int64), finish func()) {
	bar := newProgressBar(stderr, description, 1)
	if bar == nil {
		return nil, func() {}
	}
	return func(done, estimate int64) {
			bar.ChangeMax64(max(done, estimate, 1))
			_ = bar.Set64(done)
		}, func() {
			_ = bar.Finish()
		}
}

// newProgressBar is a bar of events on stderr, nil when stderr is not a terminal.
func newProgressBar(stderr io.Writer, description string, total int64) *progressbar.ProgressBar {
	f, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(f),
		progressbar.OptionSetDescription(description),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}
