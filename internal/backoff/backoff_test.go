package backoff_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

func TestDelayDoublesUpToMaxWithinJitter(t *testing.T) {
	t.Parallel()
	p := backoff.Policy{Min: 100 * time.Millisecond, Max: time.Second, Jitter: 0.5}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for attempt, w := range want {
		w *= time.Millisecond
		for range 200 {
			d := p.Delay(attempt)
			if d > w || d < w/2 {
				t.Fatalf("Delay(%d) = %s, want within [%s, %s]", attempt, d, w/2, w)
			}
		}
	}
	// Far past the cap, the shift must not overflow into a short or negative delay.
	for _, attempt := range []int{62, 63, 64, 1000} {
		if d := p.Delay(attempt); d < 500*time.Millisecond || d > time.Second {
			t.Errorf("Delay(%d) = %s, want within [500ms, 1s]", attempt, d)
		}
	}
}

func TestDelayJitterSpreads(t *testing.T) {
	t.Parallel()
	p := backoff.Policy{Min: time.Second, Max: time.Second, Jitter: 1}
	seen := map[time.Duration]bool{}
	for range 100 {
		seen[p.Delay(0)] = true
	}
	if len(seen) < 50 {
		t.Errorf("100 jittered delays took only %d distinct values", len(seen))
	}
}

func TestDelayWithoutJitterIsExact(t *testing.T) {
	t.Parallel()
	p := backoff.Policy{Min: 3 * time.Millisecond, Max: 10 * time.Millisecond, Jitter: -1}
	for attempt, want := range []time.Duration{3, 6, 10, 10} {
		if d := p.Delay(attempt); d != want*time.Millisecond {
			t.Errorf("Delay(%d) = %s, want %s", attempt, d, want*time.Millisecond)
		}
	}
}

func TestZeroPolicyDefaults(t *testing.T) {
	t.Parallel()
	var p backoff.Policy
	if d := p.Delay(0); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Errorf("first delay of the zero Policy = %s, want 50-100 ms", d)
	}
	if d := p.Delay(30); d < 5*time.Second || d > 10*time.Second {
		t.Errorf("capped delay of the zero Policy = %s, want 5-10 s", d)
	}
	// A Max under Min is Min.
	p = backoff.Policy{Min: time.Second, Max: time.Millisecond, Jitter: -1}
	if d := p.Delay(5); d != time.Second {
		t.Errorf("Delay with Max < Min = %s, want Min", d)
	}
}

func TestBackoffNextAndReset(t *testing.T) {
	t.Parallel()
	b := backoff.New(backoff.Policy{Min: time.Millisecond, Max: 8 * time.Millisecond, Jitter: -1})
	for i, want := range []time.Duration{1, 2, 4, 8, 8} {
		if d := b.Next(); d != want*time.Millisecond {
			t.Fatalf("Next #%d = %s, want %s", i, d, want*time.Millisecond)
		}
	}
	if b.Attempts() != 5 {
		t.Errorf("Attempts = %d, want 5", b.Attempts())
	}
	b.Reset()
	if d := b.Next(); d != time.Millisecond {
		t.Errorf("Next after Reset = %s, want 1ms", d)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	start := time.Now()
	if err := backoff.Sleep(ctx, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep = %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Sleep returned %s after the cancel", took)
	}
	// An already-done context wins over a zero delay.
	if err := backoff.Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep(done ctx, 0) = %v, want context.Canceled", err)
	}
	if err := backoff.Sleep(t.Context(), time.Millisecond); err != nil {
		t.Errorf("Sleep(1ms) = %v", err)
	}
}

func TestWaitUsesNextDelay(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Millisecond)
	defer cancel()
	b := backoff.New(backoff.Policy{Min: time.Hour, Jitter: -1})
	if err := b.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the context's deadline", err)
	}
	if b.Attempts() != 1 {
		t.Errorf("Attempts after one Wait = %d", b.Attempts())
	}
}
