package esdb

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestGiveUpReleasesStuckCalls pins the EventStore-Client-Go v4.2.0 failure
// behind a flaky TestServerDown: when a call's discovery gives up, the
// client closes itself and a call already handing it a request (a
// resubscription, typically) stays blocked forever, whatever its context. The
// call that sees the give-up must make the Log replace the client, and that
// must release the blocked call at once, not after stuckCallTimeout.
func TestGiveUpReleasesStuckCalls(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	srv.Stop()
	pool, _ := pgtest.NewPool(t)
	l, err := open(srv.URL()+"&maxDiscoverAttempts=1&discoveryInterval=10", pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	first, err := l.conn()
	if err != nil {
		t.Fatal(err)
	}

	// A call blocked the way the client blocks one; its context never ends.
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	stuck := make(chan error, 1)
	go func() {
		_, err := detach(context.Background(), l, first, func() (int, error) { <-never; return 0, nil }, nil)
		stuck <- err
	}()

	// The first real call runs discovery against the stopped node, which
	// gives up after one attempt.
	_, err = l.ReadAll(t.Context(), eventlog.Start, 1)
	if !errors.Is(err, eventlog.ErrUnavailable) || !strings.Contains(err.Error(), discoveryGaveUp) {
		t.Fatalf("ReadAll with the node down: %v, want ErrUnavailable reporting %q (has the client's wording changed?)", err, discoveryGaveUp)
	}
	if current, _ := l.conn(); current == first {
		t.Fatal("the Log still uses the client that gave up")
	}
	select {
	case err := <-stuck:
		if !errors.Is(err, errRetired) || !errors.Is(classify(err), eventlog.ErrUnavailable) {
			t.Errorf("the stuck call returned %v, want errRetired, classified unavailable", err)
		}
	case <-time.After(stuckCallTimeout / 2):
		t.Fatalf("the stuck call was not released within %v of the client being replaced", stuckCallTimeout/2)
	}

	srv.Start(t)
	if _, err := l.ReadAll(t.Context(), eventlog.Start, 1); err != nil {
		t.Errorf("ReadAll on the replacement client after the node came back: %v", err)
	}
}
