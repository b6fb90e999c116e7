package seal_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/eventlog/seal"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// sealedLog is a fresh log of three streams of five records, sealed once.
type sealedLog struct {
	pool    *pgxpool.Pool
	log     eventlog.Log
	sealer  *seal.Sealer
	streams []string
	first   seal.Seal
}

func newSealedLog(t *testing.T) *sealedLog {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	s := &sealedLog{pool: pool, log: postgres.New(pool, nil)}
	s.sealer = seal.NewSealer(pool, s.log)
	for range 3 {
		stream := eventlogtest.NewStream("seal")
		s.streams = append(s.streams, stream)
		s.append(t, stream, 5)
	}
	s.first = s.seal(t)
	return s
}

func (s *sealedLog) append(t *testing.T, stream string, n int) {
	t.Helper()
	for range n {
		if _, err := s.log.Append(context.Background(), eventlogtest.NewEvent(stream)); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *sealedLog) seal(t *testing.T) seal.Seal {
	t.Helper()
	sl, ok, err := s.sealer.Seal(context.Background(), true)
	if err != nil || !ok {
		t.Fatalf("seal: ok=%v, %v", ok, err)
	}
	return sl
}

// verify runs what ledger verify runs: the seal chain, then the log against
// the sealed heads. It returns every problem found.
func (s *sealedLog) verify(t *testing.T, expect string) []string {
	t.Helper()
	ctx := context.Background()
	chain, err := seal.Check(ctx, s.pool, expect)
	if err != nil {
		t.Fatal(err)
	}
	report, err := audit.Verify(ctx, s.log, audit.Options{Sealed: chain.Sealed})
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, p := range append(chain.Problems, report.Problems...) {
		problems = append(problems, p.String())
	}
	return problems
}

func TestSealCoversEveryStreamHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newSealedLog(t)
	if s.first.ID != 1 || len(s.first.Heads) != 3 || !bytes.Equal(s.first.PrevHash, eventlog.GenesisHash) {
		t.Fatalf("first seal = %+v, want id 1 over 3 streams chained to the genesis hash", s.first)
	}
	for i, h := range s.first.Heads {
		recs, err := s.log.ReadStream(ctx, h.Stream, 4, 1)
		if err != nil || len(recs) != 1 || h.Version != 4 || !bytes.Equal(h.Hash, recs[0].Hash) {
			t.Errorf("head %d = %+v, want version 4 of %s with its hash", i, h, h.Stream)
		}
	}
	if _, ok, err := s.sealer.Seal(ctx, false); ok || err != nil {
		t.Fatalf("seal of a log that did not grow: ok=%v, %v; want nothing written", ok, err)
	}
	s.append(t, s.streams[1], 2)
	second := s.seal(t)
	if second.ID != 2 || len(second.Heads) != 1 || second.Heads[0].Stream != s.streams[1] || second.Heads[0].Version != 6 ||
		!bytes.Equal(second.PrevHash, s.first.Hash) || !bytes.Equal(second.Hash, second.ComputeHash()) {
		t.Fatalf("second seal = %+v, want only %s at version 6, chained to the first", second, s.streams[1])
	}
	if problems := s.verify(t, hex.EncodeToString(s.first.Hash)); len(problems) != 0 {
		t.Fatalf("untouched log: %v", problems)
	}
}

func TestOneSealerAtATime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newSealedLog(t)
	s.append(t, s.streams[0], 1)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// What a sealer on another replica holds while it writes.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(x'4c53454c'::int, 0)`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.sealer.Seal(ctx, false); !errors.Is(err, seal.ErrBusy) {
		t.Fatalf("seal while another holds the lock: %v, want ErrBusy", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(x'4c53454c'::int, 0)`); err != nil {
		t.Fatal(err)
	}
	if sl := s.seal(t); sl.ID != 2 {
		t.Fatalf("seal after the lock was released: %v, want seal 2", sl)
	}
}

func TestSealsAreAppendOnly(t *testing.T) {
	t.Parallel()
	s := newSealedLog(t)
	for _, sql := range []string{`UPDATE seals SET hash = '\x00'::bytea`, `DELETE FROM seals`, `TRUNCATE seals CASCADE`,
		`UPDATE seal_heads SET stream_version = 0`, `DELETE FROM seal_heads`, `TRUNCATE seal_heads`} {
		_, err := s.pool.Exec(context.Background(), sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s: err = %v, want insufficient_privilege from the append-only trigger", sql, err)
		}
	}
}

// TestVerifyCatchesTamperingBehindTheTrigger tampers as a superuser who
// disabled the append-only triggers, after the log was sealed, and expects
// verify to name the stream (or seal) that gives it away.
func TestVerifyCatchesTamperingBehindTheTrigger(t *testing.T) {
	t.Parallel()
	const victim = "$1" // the second stream's name in every statement
	cases := []struct {
		name   string
		tamper func(t *testing.T, s *sealedLog) (expect string) // returns the seal hash an auditor kept, if any
		want   string                                           // in a problem that names the victim stream or the seal
	}{
		{"payload byte changed", sql(`UPDATE events SET payload = overlay(payload PLACING '\x58'::bytea FROM 12 FOR 1)
			WHERE stream = ` + victim + ` AND stream_version = 2`), "payload was altered"},
		{"tail removed", sql(`DELETE FROM events WHERE stream = ` + victim + ` AND stream_version >= 3`), "its tail was removed"},
		{"middle removed", sql(`DELETE FROM events WHERE stream = ` + victim + ` AND stream_version = 2`), "earlier record(s) of the stream are missing"},
		{"whole stream removed", sql(`DELETE FROM events WHERE stream = ` + victim), "the stream was removed"},
		{"truncated and re-appended with a valid chain", func(t *testing.T, s *sealedLog) string {
			pgtest.AsSuperuser(t, s.pool, `DELETE FROM events WHERE stream = $1 AND stream_version >= 2`, s.streams[1])
			s.append(t, s.streams[1], 4) // versions 2..5 again, each chained to the last
			s.seal(t)                    // serve goes on sealing: the new chain is sealed too
			return ""
		}, "the stream was rewritten"},
		{"latest seal removed", func(t *testing.T, s *sealedLog) string {
			s.append(t, s.streams[1], 1)
			kept := s.seal(t) // the auditor writes its hash down elsewhere
			pgtest.AsSuperuser(t, s.pool, `DELETE FROM seal_heads WHERE seal_id = 2; DELETE FROM seals WHERE seal_id = 2`)
			return hex.EncodeToString(kept.Hash)
		}, "is not in the chain: it was removed or altered"},
		{"middle seal removed", func(t *testing.T, s *sealedLog) string {
			for range 2 {
				s.append(t, s.streams[1], 1)
				s.seal(t)
			}
			pgtest.AsSuperuser(t, s.pool, `DELETE FROM seal_heads WHERE seal_id = 2; DELETE FROM seals WHERE seal_id = 2`)
			return ""
		}, "seal 3: seal(s) 2 to 2 are missing"},
		{"sealed head altered", sql(`UPDATE seal_heads SET stream_version = stream_version - 1 WHERE stream = ` + victim),
			"seal 1: hash"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSealedLog(t)
			expect := tc.tamper(t, s)
			problems := s.verify(t, expect)
			found := false
			for _, p := range problems {
				names := strings.Contains(p, s.streams[1]) || strings.HasPrefix(p, "seal ")
				if !names {
					t.Errorf("problem names neither the tampered stream nor a seal: %s", p)
				}
				found = found || (names && strings.Contains(p, tc.want))
			}
			if !found {
				t.Fatalf("no problem says %q about %s or a seal; problems: %q", tc.want, s.streams[1], problems)
			}
		})
	}
}

// sql returns a tampering that runs statement as a superuser, with the
// second stream as $1.
func sql(statement string) func(t *testing.T, s *sealedLog) string {
	return func(t *testing.T, s *sealedLog) string {
		pgtest.AsSuperuser(t, s.pool, statement, s.streams[1])
		return ""
	}
}
