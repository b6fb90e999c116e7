package api_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/internal/stripesync"
	"github.com/stripe-ledger/stripe-ledger/internal/tcpproxy"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testEnv is a real Echo server over HTTP on a throwaway database.
type testEnv struct {
	url   string
	pool  *pgxpool.Pool // direct, for assertions
	log   eventlog.Log
	proxy *tcpproxy.Proxy // non-nil when the server reaches the database through a proxy
}

func newTestEnv(tb testing.TB) *testEnv {
	tb.Helper()
	pool, _ := pgtest.NewPool(tb)
	return startServer(tb, pool, pool, nil, nil)
}

// newTestEnvBehindProxy routes the server's database traffic through a TCP
// proxy the test can take down and bring back.
func newTestEnvBehindProxy(tb testing.TB) *testEnv {
	tb.Helper()
	direct, url := pgtest.NewPool(tb)
	proxy, viaProxy := tcpproxy.Pool(tb, url, 0)
	return startServer(tb, direct, viaProxy, proxy, nil)
}

// newTestEnvWith is newTestEnv with a configuration changed by configure.
func newTestEnvWith(tb testing.TB, configure func(*api.Config)) *testEnv {
	tb.Helper()
	pool, _ := pgtest.NewPool(tb)
	return startServer(tb, pool, pool, nil, configure)
}

func startServer(tb testing.TB, direct, serverPool *pgxpool.Pool, proxy *tcpproxy.Proxy, configure func(*api.Config)) *testEnv {
	tb.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	env := serve(tb, api.Config{
		Log:         postgres.New(serverPool, logger),
		ReadModel:   projections.NewQueries(serverPool),
		EnqueueThin: enqueueThin(serverPool),
		Logger:      logger,
	}, configure)
	env.pool, env.log, env.proxy = direct, postgres.New(direct, logger), proxy
	return env
}

// serve serves api on cfg's dependencies over real HTTP, with the test
// secrets, token and plans, changed by configure.
func serve(tb testing.TB, cfg api.Config, configure func(*api.Config)) *testEnv {
	tb.Helper()
	cfg.WebhookSecrets, cfg.APIToken, cfg.Plans = []string{secret, oldSecret}, apiToken, testPlans
	if configure != nil {
		configure(&cfg)
	}
	srv, err := api.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	tb.Cleanup(ts.Close)
	return &testEnv{url: ts.URL}
}

const apiToken = "test-api-token"

// enqueueThin is the thin-event queue of the database of pool, as serve wires it.
func enqueueThin(pool *pgxpool.Pool) func(context.Context, domain.Envelope) error {
	return func(ctx context.Context, env domain.Envelope) error { return stripesync.EnqueueThin(ctx, pool, env) }
}

// testPlans maps the generated lifecycles' prices to plans, as LEDGER_PLANS would.
var testPlans = must(domain.ParsePlans(domaintest.Plans))

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func (e *testEnv) count(tb testing.TB) int64 {
	tb.Helper()
	var n int64
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM events").Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}
