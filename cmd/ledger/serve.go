package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/api/console"
	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/esdb"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/eventlog/seal"
	"github.com/stripe-ledger/stripe-ledger/internal/gctune"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi"
	"github.com/stripe-ledger/stripe-ledger/internal/stripesync"
	"github.com/stripe-ledger/stripe-ledger/migrations"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

const (
	// shutdownGrace is how long in-flight requests get to finish on SIGTERM.
	shutdownGrace = 30 * time.Second
	// auditReadWait is how long verify and history wait for a transaction
	// that holds back the PostgreSQL log's readers before failing.
	auditReadWait = 30 * time.Second
	// minPoolConns is the smallest database pool serve runs with, unless
	// DATABASE_URL sets pool_max_conns.
	minPoolConns = 16
)

func newServeCmd(c *cli) *cobra.Command {
	var migrate bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the webhook endpoint, the read API and the projections",
		Long: `Run the webhook endpoint (POST /stripe/webhook), the read API (/v1, needs
LEDGER_API_TOKEN), health and metrics, and the projection runner, on LEDGER_ADDR.
Stops gracefully on SIGINT or SIGTERM.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, logger, err := c.setup()
			if err != nil {
				return err
			}
			defer gctune.Headroom(servingGCHeadroom)()
			return runServe(cmd.Context(), cfg, logger, migrate)
		},
	}
	cmd.Flags().BoolVar(&migrate, "migrate", false, "create the database if missing and apply pending migrations before serving")
	return cmd
}

// servingGCHeadroom is the least a serving ledger's heap may grow between
// two garbage collections (gctune.Headroom). Its live heap is small (about
// 8 MB under ingest), and Go's default GOGC=100 collects each time that much
// has been allocated again: a dozen collections a second at concurrency 8
// (325-367 in an ingest of 15,000 deliveries; 16-18 with this headroom), and
// about a fifth of the process's CPU per delivery. A rebuild started from
// the console collects as by default: its live heap is larger than this.
const servingGCHeadroom = 64 << 20

func runServe(ctx context.Context, cfg Config, logger *slog.Logger, migrate bool) error {
	if len(cfg.WebhookSecrets) == 0 {
		return errors.New("STRIPE_WEBHOOK_SECRET is not set: refusing to accept unverifiable webhooks")
	}
	if len(cfg.NotifyURLs) > 0 && cfg.NotifySecret == "" {
		return errors.New("LEDGER_NOTIFY_URL is set but LEDGER_NOTIFY_SECRET is not: refusing to send unsigned notifications")
	}
	migrateOrCheck := migrations.Check // a missing or stale schema would answer 500 on every webhook
	if migrate {
		migrateOrCheck = migrations.Migrate
	}
	if err := migrateOrCheck(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	svc, err := OpenService(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer svc.Close()
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	if cfg.APIToken == "" {
		logger.Warn("LEDGER_API_TOKEN is not set: the read API (/v1) answers 503 until it is")
	}
	logger.Info("serving", "addr", ln.Addr().String(), "eventlog", svc.Backend)
	return svc.Serve(ctx, ln)
}

// Backends are what every command works on: the PostgreSQL pool (read model,
// bookkeeping, and the log with the default backend) and the event log.
type Backends struct {
	Pool      *pgxpool.Pool
	Log       eventlog.Log
	Backend   string               // "postgres" or "esdb"
	ReadModel *projections.Queries // the live read model, in Pool's database
}

// OpenBackends connects to the database and opens the event log that
// LEDGER_EVENTLOG names; pgOpts configure the PostgreSQL backend.
func OpenBackends(ctx context.Context, cfg Config, logger *slog.Logger, pgOpts ...postgres.Option) (*Backends, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if !strings.Contains(cfg.DatabaseURL, "pool_max_conns") {
		// The projection runner alone holds up to four connections while it
		// builds (two advisory locks, a transaction, a log reader); leave room
		// for webhooks and reads beside it.
		pcfg.MaxConns = max(pcfg.MaxConns, minPoolConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	b := &Backends{Pool: pool, ReadModel: projections.NewQueries(pool)}
	b.Log, b.Backend, err = openLog(ctx, cfg, pool, logger, pgOpts...)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return b, nil
}

// OpenAuditBackends is OpenBackends for verify and history, which read the
// whole log or a history: a short read would look like the end of the log,
// so the PostgreSQL log's reads wait (up to auditReadWait) for a
// transaction that holds its readers back instead of stopping short.
func OpenAuditBackends(ctx context.Context, cfg Config, logger *slog.Logger) (*Backends, error) {
	return OpenBackends(ctx, cfg, logger, postgres.WithCompleteReads(auditReadWait))
}

// openLog opens the event-log backend that LEDGER_EVENTLOG names.
func openLog(ctx context.Context, cfg Config, pool *pgxpool.Pool, logger *slog.Logger, pgOpts ...postgres.Option) (eventlog.Log, string, error) {
	if cfg.EventLog == "postgres" {
		return postgres.New(pool, logger, pgOpts...), "postgres", nil
	}
	// An EventStoreDB log keeps its exact dedup guard in the same PostgreSQL;
	// Open refuses an unsupported server or a user that cannot read $all.
	l, err := esdb.Open(ctx, cfg.EventLog, pool, logger, esdb.WithStreamPrefix(cfg.ESDBPrefix))
	if err != nil {
		return nil, "", fmt.Errorf("open EventStoreDB event log: %w", err)
	}
	return l, "esdb", nil
}

// Close releases the event log, then the pool.
func (b *Backends) Close() {
	b.Log.Close()
	b.Pool.Close()
}

// Service is the running ledger: backends, HTTP server and the projection
// runner, wired together. End-to-end tests build it the same way.
type Service struct {
	*Backends
	logger    *slog.Logger
	cfg       Config
	api       *api.Server
	handler   http.Handler // the API, and the console under /console/
	console   *console.Console
	runner    *projections.Runner
	sender    *projections.Sender // nil without LEDGER_NOTIFY_URL
	sealer    *seal.Sealer        // nil when LEDGER_SEAL_INTERVAL is 0
	sealEvery time.Duration

	// Stripe's API: the thin-event fetcher (with a key) and the reconciler
	// (with a key and LEDGER_RECONCILE_INTERVAL, or when Stripe reports an
	// event-generation failure resolved).
	sync              *stripesync.Syncer
	reconcileInterval time.Duration
	thinArrived       chan struct{}
	reconcileNow      chan struct{}
}

// OpenService opens the backends and builds the server and the projection
// runner. It does not listen or project; Serve does both.
func OpenService(ctx context.Context, cfg Config, logger *slog.Logger) (*Service, error) {
	b, err := OpenBackends(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	svc := &Service{Backends: b, logger: logger, cfg: cfg, sealEvery: cfg.SealInterval, reconcileInterval: cfg.ReconcileInterval,
		thinArrived: make(chan struct{}, 1), reconcileNow: make(chan struct{}, 1)}
	if cfg.SealInterval > 0 {
		svc.sealer = seal.NewSealer(b.Pool, b.Log)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	billing := projections.Billing(cfg.Plans)
	svc.sync, err = newSyncer(cfg, b, logger)
	if err == nil {
		err = stripesync.RegisterThinMetrics(reg, b.Pool)
	}
	if err == nil {
		svc.runner, err = projections.NewRunner(b.Pool, b.Log, billing, logger, reg)
	}
	if err == nil && len(cfg.NotifyURLs) > 0 {
		svc.sender, err = projections.NewSender(b.Pool, projections.SenderConfig{
			URLs: cfg.NotifyURLs, Secret: cfg.NotifySecret, Logger: logger, Registerer: reg})
	}
	if err == nil {
		svc.api, err = api.New(api.Config{
			Log:       b.Log,
			ReadModel: b.ReadModel,
			EnqueueThin: func(ctx context.Context, env domain.Envelope) error {
				return stripesync.EnqueueThin(ctx, b.Pool, env)
			},
			WebhookSecrets: cfg.WebhookSecrets,
			APIToken:       cfg.APIToken,
			Plans:          cfg.Plans,
			LivePlans: func(ctx context.Context) (domain.Plans, bool, error) {
				return projections.LivePlans(ctx, b.Pool, billing.Name)
			},
			Logger:      logger,
			Registry:    reg,
			Projections: svc.projectionLags,
			Stored:      svc.stored,

			Notifications: projections.NewNotifications(b.Pool),

			MaxInflightWebhooks: cfg.MaxInflightWebhooks,
		})
	}
	if err == nil {
		if svc.console, err = newConsole(svc, billing); err == nil {
			svc.handler = routeConsole(svc.api, svc.console)
		}
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	return svc, nil
}

// newSyncer is the Stripe API side of the ledger; its API client is nil
// without STRIPE_API_KEY.
func newSyncer(cfg Config, b *Backends, logger *slog.Logger) (*stripesync.Syncer, error) {
	s := &stripesync.Syncer{Log: b.Log, DB: b.Pool, Plans: cfg.Plans, Logger: logger}
	if cfg.StripeAPIKey != "" {
		client, err := stripeapi.New(stripeapi.Config{Key: cfg.StripeAPIKey, Base: cfg.StripeAPIBase, Logger: logger})
		if err != nil {
			return nil, err
		}
		s.API = client
	}
	return s, nil
}

// stored wakes the Stripe API side for a newly stored webhook event.
func (s *Service) stored(env domain.Envelope) {
	wake := func(c chan struct{}) {
		select {
		case c <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	if env.Thin {
		wake(s.thinArrived)
	}
	if env.Type == stripesync.EventGenerationFailureResolved {
		s.logger.Warn("Stripe reports it failed to generate some events; reconciling", "event_id", env.ID)
		wake(s.reconcileNow)
	}
}

// runStripeSync runs the thin-event fetcher and the reconciler until ctx is
// done; without STRIPE_API_KEY it only says what it cannot do.
func (s *Service) runStripeSync(ctx context.Context, wg *sync.WaitGroup) {
	if s.sync.API == nil {
		s.logger.Warn("STRIPE_API_KEY is not set: thin events are stored and counted (ledger_thin_events_pending) " +
			"but not fetched, and no reconcile runs; ledger backfill fetches them once a key is set")
		return
	}
	wg.Go(func() { s.sync.RunThinFetcher(ctx, thinFetchInterval, s.thinArrived) })
	wg.Go(func() { s.sync.RunReconciler(ctx, s.reconcileInterval, s.reconcileNow) })
}

// thinFetchInterval is how often serve looks for thin events still to fetch
// (a new one wakes the fetcher at once; this catches the rest).
const thinFetchInterval = 30 * time.Second

func (s *Service) projectionLags(ctx context.Context) ([]api.ProjectionLag, error) {
	statuses, err := projections.ReadStatus(ctx, s.Pool, s.Log)
	if err != nil {
		return nil, err
	}
	lags := make([]api.ProjectionLag, len(statuses))
	for i, st := range statuses {
		lags[i] = api.ProjectionLag{Name: st.Name, Position: st.Position, Head: st.Head, Lag: st.Lag, DeadLetters: st.DeadLetters}
	}
	return lags, nil
}

// Serve answers HTTP on ln and runs the projections until ctx is done, then
// shuts down gracefully: in-flight requests finish (each append is one
// transaction, so nothing is left half-written), new ones are refused, and
// the runner stops between batches, the sealer between seals.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	runCtx, stopRunner := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.runner.Run(runCtx); err != nil {
			s.logger.Error("projection runner stopped", "err", err)
		}
	}()
	if s.sender != nil {
		wg.Go(func() { _ = s.sender.Run(runCtx) })
	}
	if s.sealer != nil {
		wg.Go(func() { s.sealer.Run(runCtx, s.sealEvery, s.logger) })
	}
	s.runStripeSync(runCtx, &wg)
	defer wg.Wait()
	defer stopRunner()
	defer s.console.Close() // the rebuilds started from the console

	if s.cfg.PprofAddr != "" {
		stop, err := s.servePprof()
		if err != nil {
			return err
		}
		defer stop()
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: min(10*time.Second, s.cfg.HTTPReadTimeout),
		ReadTimeout: s.cfg.HTTPReadTimeout, IdleTimeout: s.cfg.HTTPIdleTimeout}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	s.logger.Info("shutting down", "grace", shutdownGrace.String())
	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// servePprof answers net/http/pprof's handlers on cfg.PprofAddr, a listener
// of their own (never the public one), until the returned stop.
func (s *Service) servePprof() (stop func(), err error) {
	ln, err := net.Listen("tcp", s.cfg.PprofAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (LEDGER_PPROF_ADDR): %w", s.cfg.PprofAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // the named profiles too: /debug/pprof/heap, …
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// No write timeout: a CPU profile or trace answers after ?seconds=.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	s.logger.Info("serving pprof", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}
