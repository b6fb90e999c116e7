package main

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestServeSealsTheLog: ledger serve writes a seal every LEDGER_SEAL_INTERVAL
// while the log grows, and none while it does not.
func TestServeSealsTheLog(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	getenv := env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_SEAL_INTERVAL", "100ms")
	base := startService(t, getenv)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// seals, and the streams sealed at their head and all streams
	count := func() (seals, sealed, streams int64) {
		if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM seals),
	(SELECT count(*) FROM (SELECT DISTINCT stream, stream_version FROM seal_heads) h
	  WHERE (stream, stream_version) IN (SELECT stream, max(stream_version) FROM events GROUP BY stream)),
	(SELECT count(DISTINCT stream) FROM events)`).Scan(&seals, &sealed, &streams); err != nil {
			t.Fatal(err)
		}
		return seals, sealed, streams
	}
	for _, d := range domaintest.Lifecycles(rand.New(rand.NewPCG(3, 4)), 3) {
		deliver(t, base, d.Payload)
	}
	seals, sealed, streams := count()
	for deadline := time.Now().Add(20 * time.Second); sealed < streams; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 20s the seals cover the heads of %d stream(s) of %d", sealed, streams)
		}
		seals, sealed, streams = count()
	}
	time.Sleep(500 * time.Millisecond) // five intervals without an append
	if again, _, _ := count(); again != seals {
		t.Errorf("%d seal(s) written while the log did not grow", again-seals)
	}
	out, err := (&auditDB{url: url}).ledger(nil, "verify")
	if exitCode(err) != exitOK || !strings.Contains(out, "seal(s) checked") {
		t.Fatalf("verify of the sealed log: exit %d (%v)\n%s", exitCode(err), err, out)
	}
}
