package api_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/domain/domaintest"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/migrations/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testEnv is a real Echo server over HTTP on a throwaway database.
type testEnv struct {
	url   string
	pool  *pgxpool.Pool // direct, for assertions
	log   eventlog.Log
	proxy *tcpProxy // non-nil when the server reaches the database through a proxy
}

func newTestEnv(tb testing.TB) *testEnv {
	tb.Helper()
	pool, _ := pgtest.NewPool(tb)
	return startServer(tb, pool, pool, nil)
}

// newTestEnvBehindProxy routes the server's database traffic through a TCP
// proxy the test can take down and bring back.
func newTestEnvBehindProxy(tb testing.TB) *testEnv {
	tb.Helper()
	direct, url := pgtest.NewPool(tb)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		tb.Fatal(err)
	}
	proxy := startProxy(tb, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	host, port, _ := net.SplitHostPort(proxy.addr)
	portNum, _ := strconv.ParseUint(port, 10, 16)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = host, uint16(portNum)
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	viaProxy, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(viaProxy.Close)
	return startServer(tb, direct, viaProxy, proxy)
}

func startServer(tb testing.TB, direct, serverPool *pgxpool.Pool, proxy *tcpProxy) *testEnv {
	tb.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	log := postgres.New(serverPool, logger)
	srv, err := api.New(api.Config{
		Log:            log,
		DB:             serverPool,
		WebhookSecrets: []string{secret, oldSecret},
		APIToken:       apiToken,
		Plans:          testPlans,
		Logger:         logger,
	})
	if err != nil {
		tb.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	tb.Cleanup(ts.Close)
	return &testEnv{url: ts.URL, pool: direct, log: postgres.New(direct, logger), proxy: proxy}
}

const apiToken = "test-api-token"

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

// tcpProxy forwards connections to a target; Down closes the listener and
// every open connection, Up listens again on the same address.
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]struct{}
}

func startProxy(tb testing.TB, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &tcpProxy{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	tb.Cleanup(p.Down)
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

func (p *tcpProxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *tcpProxy) Up(tb testing.TB) {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		tb.Fatalf("proxy up: %v", err)
	}
	p.serve(ln)
}
