// Package backoff spaces out the retries of work that failed on
// infrastructure (a lost database connection, a dropped subscription, a
// rate-limited API, a lock wait): delays that double from a minimum up to a
// maximum, with jitter so that replicas and concurrent callers spread out,
// and waits that end with their context. Every retry loop in the ledger
// takes its delays from here.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is how one kind of retry waits. The n-th delay (from 0) is
// Min·2ⁿ capped at Max, then jittered down by up to Jitter of itself.
// The zero Policy waits 100 ms, doubling to 10 s, with half jitter.
type Policy struct {
	Min    time.Duration // the first delay; 0: 100 ms
	Max    time.Duration // the cap; 0 or less than Min: max(Min, 10 s)
	Jitter float64       // the fraction of a delay that is random, 0 to 1; 0: 0.5, negative: none
}

// Delay returns the delay before retry number attempt (0 for the first).
func (p Policy) Delay(attempt int) time.Duration {
	lo, hi := p.bounds()
	d := hi
	if attempt < 62 {
		if shifted := lo << max(attempt, 0); shifted > 0 && shifted < hi {
			d = shifted
		}
	}
	j := p.Jitter
	switch {
	case j == 0:
		j = 0.5
	case j < 0:
		j = 0
	case j > 1:
		j = 1
	}
	if spread := time.Duration(float64(d) * j); spread > 0 {
		d -= rand.N(spread + 1)
	}
	return d
}

func (p Policy) bounds() (lo, hi time.Duration) {
	lo = p.Min
	if lo <= 0 {
		lo = 100 * time.Millisecond
	}
	hi = p.Max
	if hi <= 0 {
		hi = max(lo, 10*time.Second)
	}
	return lo, max(hi, lo)
}

// Backoff is one sequence of retries under a Policy: each Next is the next
// delay, and Reset starts over after the work succeeded (or ran for long
// enough that its next failure is a fresh one). The zero value uses the zero
// Policy. A Backoff is not safe for concurrent use.
type Backoff struct {
	Policy
	attempt int
}

// New returns a Backoff of p.
func New(p Policy) *Backoff { return &Backoff{Policy: p} }

// Next returns the delay before the next retry and counts the retry.
func (b *Backoff) Next() time.Duration {
	d := b.Delay(b.attempt)
	b.attempt++
	return d
}

// Attempts is the number of delays handed out since the last Reset.
func (b *Backoff) Attempts() int { return b.attempt }

// Reset makes the next delay the first one again.
func (b *Backoff) Reset() { b.attempt = 0 }

// Wait sleeps the next delay, or until ctx is done (then it returns ctx's
// error).
func (b *Backoff) Wait(ctx context.Context) error { return Sleep(ctx, b.Next()) }

// Sleep waits d, or until ctx is done (then it returns ctx's error, even when
// d is not positive).
func Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
