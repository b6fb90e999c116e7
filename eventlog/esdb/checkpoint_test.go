package esdb_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// checkpointRecorder subscribes with SubscribeCheckpoints and records what
// it receives, as the projection runner stores it.
type checkpointRecorder struct {
	mu          sync.Mutex
	delivered   []eventlog.Record
	checkpoints []eventlog.Position
	stop        func()
}

func recordCheckpoints(t *testing.T, l *esdb.Log, from eventlog.Position) *checkpointRecorder {
	t.Helper()
	r := &checkpointRecorder{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- l.SubscribeCheckpoints(ctx, from,
			func(_ context.Context, batch []eventlog.Record) error {
				r.mu.Lock()
				defer r.mu.Unlock()
				r.delivered = append(r.delivered, batch...)
				return nil
			},
			func(_ context.Context, pos eventlog.Position) error {
				r.mu.Lock()
				defer r.mu.Unlock()
				r.checkpoints = append(r.checkpoints, pos)
				return nil
			})
	}()
	r.stop = func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("SubscribeCheckpoints returned %v, want context.Canceled", err)
		}
	}
	return r
}

func (r *checkpointRecorder) counts() (delivered, checkpoints int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.delivered), len(r.checkpoints)
}

// TestBadCheckpointsIgnored: a server that sends the (2^64-1, 2^64-1)
// checkpoint of KurrentDB #4892 or the end-of-log checkpoint of #4975
// (here: after every catch-up and live batch) must not move the consumer's
// stored position past events it has not received, live or after a
// resubscription.
func TestBadCheckpointsIgnored(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	srv.SendBadCheckpoints()
	l := openLog(t, srv.URL())
	stream := eventlogtest.NewStream("badcp")
	appendN(t, l, stream, 1)
	r := recordCheckpoints(t, l, eventlog.Start)
	waitUntil(t, "catch-up", func() bool { n, _ := r.counts(); return n == 1 })
	appendN(t, l, stream, 1)
	waitUntil(t, "a live event after the bad checkpoints", func() bool { n, _ := r.counts(); return n == 2 })
	srv.DropSubscriptions()
	appendN(t, l, stream, 1)
	waitUntil(t, "an event after resubscribing", func() bool { n, _ := r.counts(); return n == 3 })
	r.stop()

	last := r.delivered[len(r.delivered)-1].Position
	for _, cp := range r.checkpoints {
		if cp.Commit == math.MaxUint64 || last.Less(cp) {
			t.Errorf("checkpoint %s handed to the consumer; the last record is at %s", cp, last)
		}
	}
}

// TestCheckpointInterval: the subscription asks for a checkpoint every 100
// search windows, not every window (the client's default), so a catch-up
// over many foreign events stores few checkpoints.
func TestCheckpointInterval(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	stream := eventlogtest.NewStream("interval")
	srv.AppendForeign(t, 3300) // 103 windows of 32, one interval of 3,200
	r := recordCheckpoints(t, l, eventlog.Start)
	waitUntil(t, "a checkpoint", func() bool { _, n := r.counts(); return n >= 1 })
	appendN(t, l, stream, 1)
	waitUntil(t, "the ledger event", func() bool { n, _ := r.counts(); return n == 1 })
	r.stop()
	if _, n := r.counts(); n != 1 {
		t.Errorf("%d checkpoints over 3,300 foreign events, want 1", n)
	}
}

// TestRefusesUnsupportedServers: Open reads the server's version and refuses
// the releases without both checkpoint fixes.
func TestRefusesUnsupportedServers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		version string
		ok      bool
	}{
		{"23.10.3", false}, {"24.6.0", false}, {"24.10.4", false}, {"24.10.5", true}, {"24.10.9", true},
		{"25.0.0", false}, {"25.0.1", true}, {"25.1.0", true}, {"26.0.0", true},
	} {
		t.Run(tc.version, func(t *testing.T) {
			t.Parallel()
			srv := esdbtest.New(t, esdbtest.WithVersion(tc.version))
			pool, _ := pgtest.NewPool(t)
			l, err := esdb.Open(t.Context(), srv.URL(), pool, nil)
			if err == nil {
				l.Close()
			}
			switch {
			case tc.ok && err != nil:
				t.Errorf("Open on %s: %v", tc.version, err)
			case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.version) || !strings.Contains(err.Error(), "24.10.5")):
				t.Errorf("Open on %s: %v; want a refusal naming the version and the supported ones", tc.version, err)
			}
		})
	}
}

// TestPermissionDeniedAtStartup: a user that may not read $all (in secure
// mode only $admins may) is refused at start-up with an error that names
// the role, instead of subscriptions that fail later.
func TestPermissionDeniedAtStartup(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	srv.DenyAll()
	pool, _ := pgtest.NewPool(t)
	l, err := esdb.Open(t.Context(), srv.URL(), pool, nil)
	if err == nil {
		l.Close()
		t.Fatal("Open succeeded for a user that may not read $all")
	}
	if !strings.Contains(err.Error(), "$admins") || !strings.Contains(err.Error(), "$all") {
		t.Errorf("Open: %v; want an error naming $all and $admins", err)
	}
}
