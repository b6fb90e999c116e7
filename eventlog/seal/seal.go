// Package seal writes and reads the seal chain of the event log (DESIGN §9),
// which catches what the per-stream hash chains cannot: a removed tail, a
// removed stream, a stream truncated and re-appended with a valid chain.
//
// Seal n records the head (version, hash) of every stream that grew since
// seal n-1, up to a position of the log, and chains to seal n-1 by hash (see
// Seal.ComputeHash); replaying the chain gives every stream's sealed heads.
// Seals live in PostgreSQL (migrations/008_seals.sql) whichever backend holds
// the log: a Sealer reads the log only through eventlog.Log.
package seal

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/audit"
)

// Head is a stream's last record as a seal recorded it.
type Head struct {
	Stream  string
	Version int64
	Hash    []byte
}

// Seal is one link of the chain.
type Seal struct {
	ID       int64 // 1, 2, 3…
	SealedAt time.Time
	Position eventlog.Position // the last record the seal covers
	PrevHash []byte            // the previous seal's Hash; 32 zero bytes for seal 1
	Hash     []byte
	Heads    []Head // of the streams that grew since the previous seal, sorted by stream
	Streams  int64  // as stored: how many heads the seal's row says it has
}

// ComputeHash is the hash a seal must carry:
//
//	sha256(prev_hash || be64(id) || be64(commit) || be64(prepare) ||
//	       for each head, sorted by stream: be32(len(stream)) || stream || be64(version) || hash)
func (s Seal) ComputeHash() []byte {
	h := sha256.New()
	var n [8]byte
	put := func(v uint64) {
		binary.BigEndian.PutUint64(n[:], v)
		h.Write(n[:])
	}
	h.Write(s.PrevHash)
	put(uint64(s.ID))
	put(s.Position.Commit)
	put(s.Position.Prepare)
	for _, hd := range s.Heads {
		binary.BigEndian.PutUint32(n[:4], uint32(len(hd.Stream)))
		h.Write(n[:4])
		h.Write([]byte(hd.Stream))
		put(uint64(hd.Version))
		h.Write(hd.Hash)
	}
	return h.Sum(nil)
}

// String names the seal as ledger seal prints it.
func (s Seal) String() string {
	return fmt.Sprintf("seal %d %s", s.ID, hex.EncodeToString(s.Hash))
}

// lockClass is the advisory lock (class 'LSEL', key 0) held by the one
// process that is sealing.
const lockClass = 0x4c53454c

// ErrBusy reports that another process is writing a seal.
var ErrBusy = errors.New("another process is writing a seal")

// Sealer writes seals of a log into the seals tables of pool.
type Sealer struct {
	pool *pgxpool.Pool
	log  eventlog.Log
}

// NewSealer returns a Sealer of log that keeps its seals through pool.
func NewSealer(pool *pgxpool.Pool, log eventlog.Log) *Sealer {
	return &Sealer{pool: pool, log: log}
}

// Seal writes a seal covering every record appended since the previous
// seal, and returns it; ok is false, and nothing is written, when nothing
// was appended since. With wait it waits for a concurrent sealer to finish,
// without it ErrBusy is returned instead.
//
// It locks nothing the appends need: it holds its own advisory lock, reads
// the log like any reader, and writes only the seals tables, in a
// transaction that gets an id only when it inserts (a writing transaction
// would hold back the PostgreSQL log's readers, its own reads included).
func (s *Sealer) Seal(ctx context.Context, wait bool) (sl Seal, ok bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if wait {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockClass); err != nil {
				return err
			}
		} else {
			var locked bool
			if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, 0)`, lockClass).Scan(&locked); err != nil {
				return err
			}
			if !locked {
				return ErrBusy
			}
		}
		prev, err := latest(ctx, tx)
		if err != nil {
			return err
		}
		sl = Seal{ID: prev.ID + 1, PrevHash: prev.Hash, Position: prev.Position}
		if sl.PrevHash == nil {
			sl.PrevHash = eventlog.GenesisHash
		}
		heads := map[string]Head{}
		for {
			batch, err := s.log.ReadAll(ctx, sl.Position, readBatch)
			if err != nil {
				return fmt.Errorf("read the log after %s: %w", sl.Position, err)
			}
			if len(batch) == 0 {
				break
			}
			for _, r := range batch {
				heads[r.Stream] = Head{Stream: r.Stream, Version: r.StreamVersion, Hash: r.Hash}
			}
			sl.Position = batch[len(batch)-1].Position
		}
		if len(heads) == 0 {
			return nil
		}
		sl.Heads = make([]Head, 0, len(heads))
		for _, h := range heads {
			sl.Heads = append(sl.Heads, h)
		}
		slices.SortFunc(sl.Heads, func(a, b Head) int { return strings.Compare(a.Stream, b.Stream) })
		sl.Streams = int64(len(sl.Heads))
		sl.Hash = sl.ComputeHash()
		if err := tx.QueryRow(ctx, `INSERT INTO seals (seal_id, commit_pos, prepare, streams, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING sealed_at`,
			sl.ID, sl.Position.Commit, sl.Position.Prepare, len(sl.Heads), sl.PrevHash, sl.Hash).Scan(&sl.SealedAt); err != nil {
			return fmt.Errorf("insert seal %d: %w", sl.ID, err)
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"seal_heads"}, []string{"seal_id", "stream", "stream_version", "hash"},
			pgx.CopyFromSlice(len(sl.Heads), func(i int) ([]any, error) {
				h := sl.Heads[i]
				return []any{sl.ID, h.Stream, h.Version, h.Hash}, nil
			}))
		if err != nil {
			return fmt.Errorf("insert the heads of seal %d: %w", sl.ID, err)
		}
		ok = true
		return nil
	})
	if err != nil {
		return Seal{}, false, fmt.Errorf("seal: %w", err)
	}
	return sl, ok, nil
}

// readBatch is how many records a Sealer reads at a time.
const readBatch = 5000

// latest returns the last seal, without its heads; the zero Seal when there is none.
func latest(ctx context.Context, tx pgx.Tx) (Seal, error) {
	var sl Seal
	err := tx.QueryRow(ctx, `SELECT seal_id, sealed_at, commit_pos, prepare, prev_hash, hash FROM seals ORDER BY seal_id DESC LIMIT 1`).
		Scan(&sl.ID, &sl.SealedAt, &sl.Position.Commit, &sl.Position.Prepare, &sl.PrevHash, &sl.Hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return Seal{}, nil
	}
	if err != nil {
		return Seal{}, fmt.Errorf("read the last seal: %w", err)
	}
	return sl, nil
}

// Each hands f every stored seal with its heads, in id order, as stored
// (Check says whether they are right). It reads the heads in one pass.
func Each(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, f func(Seal) error) error {
	rows, err := q.Query(ctx, `SELECT s.seal_id, s.sealed_at, s.commit_pos, s.prepare, s.streams, s.prev_hash, s.hash,
       h.stream, h.stream_version, h.hash
  FROM seals s LEFT JOIN seal_heads h USING (seal_id)
 ORDER BY s.seal_id, h.stream COLLATE "C"`)
	if err != nil {
		return fmt.Errorf("read seals: %w", err)
	}
	defer rows.Close()
	var cur Seal
	flush := func() error {
		if cur.ID == 0 {
			return nil
		}
		return f(cur)
	}
	for rows.Next() {
		var (
			id             int64
			pos            eventlog.Position
			sealedAt       time.Time
			prevHash, hash []byte
			stream         *string
			version        *int64
			headHash       []byte
			n              int64
		)
		if err := rows.Scan(&id, &sealedAt, &pos.Commit, &pos.Prepare, &n, &prevHash, &hash, &stream, &version, &headHash); err != nil {
			return fmt.Errorf("read seals: %w", err)
		}
		if id != cur.ID {
			if err := flush(); err != nil {
				return err
			}
			cur = Seal{ID: id, SealedAt: sealedAt, Position: pos,
				PrevHash: prevHash, Hash: hash, Streams: n}
		}
		if stream != nil {
			cur.Heads = append(cur.Heads, Head{Stream: *stream, Version: *version, Hash: headHash})
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read seals: %w", err)
	}
	return flush()
}

// Chain is what Check found in the stored seals.
type Chain struct {
	Seals    int64           // seals read
	Latest   Seal            // the last one, without its heads
	Found    bool            // whether the expected hash given to Check is in the chain
	Problems []audit.Problem // what is wrong with the seals themselves (Stream empty)
	// Sealed holds, per stream, every head a seal recorded, in version order:
	// the log must still hold each of them (audit.Options.Sealed).
	Sealed map[string][]audit.SealedHead
}

// Check reads every stored seal and checks the chain: dense ids from 1, each
// prev_hash the previous seal's hash, each hash recomputed from the seal's
// heads. expect, when not empty, is the hex hash of a seal recorded
// elsewhere, which must be in the chain (Chain.Found). A removed latest
// seal is only caught that way: the chain just ends one seal earlier.
func Check(ctx context.Context, pool *pgxpool.Pool, expect string) (Chain, error) {
	c := Chain{Sealed: map[string][]audit.SealedHead{}}
	var want []byte
	if expect != "" {
		var err error
		if want, err = hex.DecodeString(expect); err != nil || len(want) != sha256.Size {
			return c, fmt.Errorf("seal hash %q is not 64 hex digits", expect)
		}
	}
	prev := Seal{Hash: eventlog.GenesisHash}
	err := Each(ctx, pool, func(s Seal) error {
		c.Seals++
		problem := func(format string, args ...any) {
			c.Problems = append(c.Problems, audit.Problem{Seal: s.ID, What: fmt.Sprintf("seal %d: ", s.ID) + fmt.Sprintf(format, args...)})
		}
		if s.ID != prev.ID+1 {
			problem("seal(s) %d to %d are missing", prev.ID+1, s.ID-1)
		}
		if !bytes.Equal(s.PrevHash, prev.Hash) {
			problem("prev_hash %x is not the hash %x of seal %d: the chain is broken", s.PrevHash, prev.Hash, prev.ID)
		}
		if n := int64(len(s.Heads)); n != s.Streams {
			problem("%d stream heads are stored but the seal says %d: heads were removed or added", n, s.Streams)
		}
		if got := s.ComputeHash(); !bytes.Equal(got, s.Hash) {
			problem("hash %x does not match its contents (%x): the seal was altered", s.Hash, got)
		}
		if want != nil && bytes.Equal(s.Hash, want) {
			c.Found = true
		}
		for _, h := range s.Heads {
			var hash [sha256.Size]byte
			copy(hash[:], h.Hash)
			c.Sealed[h.Stream] = append(c.Sealed[h.Stream], audit.SealedHead{Seal: s.ID, Version: h.Version, Hash: hash})
		}
		s.Heads = nil
		prev, c.Latest = s, s
		return nil
	})
	if err != nil {
		return c, err
	}
	for _, heads := range c.Sealed {
		slices.SortFunc(heads, func(a, b audit.SealedHead) int { return cmp.Compare(a.Version, b.Version) })
	}
	if want != nil && !c.Found {
		c.Problems = append(c.Problems, audit.Problem{What: fmt.Sprintf("seal %s is not in the chain: it was removed or altered", expect)})
	}
	return c, nil
}

// Run writes a seal every interval while the log grows, until ctx is done.
// Replicas may all run it: the one that holds the lock seals, the others
// skip that tick. Failures are logged and retried at the next tick.
func (s *Sealer) Run(ctx context.Context, interval time.Duration, logger *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		started := time.Now()
		sl, ok, err := s.Seal(ctx, false)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrBusy):
			logger.DebugContext(ctx, "another replica is sealing; skipping this interval")
		case err != nil:
			logger.WarnContext(ctx, "sealing failed; retrying at the next interval", "err", err)
		case ok:
			logger.InfoContext(ctx, "log sealed", "seal", sl.ID, "hash", hex.EncodeToString(sl.Hash),
				"streams", len(sl.Heads), "position", sl.Position.String(), "took", time.Since(started).String())
		}
	}
}
