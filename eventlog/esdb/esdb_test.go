package esdb_test

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// serverURLEnv names a real EventStoreDB / KurrentDB for TestContractESDBServer.
const serverURLEnv = "LEDGER_TEST_ESDB_URL"

// capabilities are the esdb backend's, on the double and on a real server.
var capabilities = eventlogtest.Capabilities{DuplicatePosition: true}

// TestContract runs the event-log contract on the in-process double.
func TestContract(t *testing.T) {
	eventlogtest.Run(t, capabilities, func(t *testing.T) eventlog.Log {
		return openLog(t, esdbtest.New(t).URL(), esdb.WithBatchSize(16))
	})
}

// TestContractNoisyServer runs the contract on a double that also holds
// another application's events, in its own streams and in one under the
// log's prefix, a tombstoned foreign stream, and sends the bad checkpoints
// of unpatched servers: the ledger's view of the log is unchanged.
func TestContractNoisyServer(t *testing.T) {
	eventlogtest.Run(t, capabilities, func(t *testing.T) eventlog.Log {
		srv := esdbtest.New(t)
		srv.SendBadCheckpoints()
		l := openLog(t, srv.URL(), esdb.WithBatchSize(16))
		srv.AppendForeign(t, 50)
		srv.AppendForeignTo(t, l.StreamPrefix()+"orders-1", 5)
		srv.AppendForeignTo(t, "ledger-orders-2", 5)
		srv.Tombstone("ledger-orders-2")
		return l
	})
}

// TestContractESDBServer runs the same contract against the real server at
// $LEDGER_TEST_ESDB_URL (make test-esdb). Each log gets its own stream prefix,
// so runs against one server do not see each other's events.
func TestContractESDBServer(t *testing.T) {
	url := os.Getenv(serverURLEnv)
	if url == "" {
		t.Skipf("%s is not set: no real EventStoreDB/KurrentDB to test against (run make test-esdb with a server up)", serverURLEnv)
	}
	eventlogtest.Run(t, capabilities, func(t *testing.T) eventlog.Log {
		return openLog(t, url, esdb.WithStreamPrefix("ledgertest_"+randomHex(6)+"-"))
	})
}

// TestOutage runs the contract's outage case with both of the backend's
// stores down: the server (the double, stopped) and the guard's database.
func TestOutage(t *testing.T) {
	t.Parallel()
	eventlogtest.Outage(t, func(t *testing.T) eventlog.Log {
		srv := esdbtest.New(t)
		pool, _ := pgtest.NewPool(t)
		l, err := esdb.Open(t.Context(), srv.URL()+"&maxDiscoverAttempts=2&discoveryInterval=10", pool, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		srv.Stop()
		pool.Close()
		return l
	})
}

// openLog opens a Log on url with a fresh guard database; it is closed when the test ends.
func openLog(t *testing.T, url string, opts ...esdb.Option) *esdb.Log {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	l, err := esdb.Open(t.Context(), url, pool, slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(l.Close)
	return l
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
