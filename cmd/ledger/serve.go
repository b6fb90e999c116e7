package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/migrations"
)

// shutdownGrace is how long in-flight requests get to finish on SIGTERM.
const shutdownGrace = 30 * time.Second

func runServe(ctx context.Context, cfg Config, logger *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	migrate := fs.Bool("migrate", false, "apply pending migrations before serving")
	if err := fs.Parse(args); err != nil {
		return usageError(err.Error())
	}
	if len(cfg.WebhookSecrets) == 0 {
		return errors.New("STRIPE_WEBHOOK_SECRET is not set: refusing to accept unverifiable webhooks")
	}
	if *migrate {
		if err := migrations.Migrate(ctx, cfg.DatabaseURL); err != nil {
			return err
		}
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
	logger.Info("serving", "addr", ln.Addr().String(), "eventlog", svc.backend)
	return svc.Serve(ctx, ln)
}

// Service is the running ledger: database pool, event log, HTTP server and
// projections, wired together. End-to-end tests build it the same way.
type Service struct {
	logger  *slog.Logger
	pool    *pgxpool.Pool
	log     eventlog.Log
	api     *api.Server
	backend string
}

// OpenService connects to the database and the event log and builds the
// server. It does not listen; call Serve.
func OpenService(ctx context.Context, cfg Config, logger *slog.Logger) (*Service, error) {
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	svc := &Service{logger: logger, pool: pool}
	svc.log, svc.backend, err = openLog(ctx, cfg, pool, logger)
	if err != nil {
		pool.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	svc.api, err = api.New(api.Config{
		Log:            svc.log,
		DB:             pool,
		WebhookSecrets: cfg.WebhookSecrets,
		APIToken:       cfg.APIToken,
		Plans:          cfg.Plans,
		Logger:         logger,
		Registry:       reg,
	})
	if err != nil {
		svc.Close()
		return nil, err
	}
	return svc, nil
}

// openLog opens the event-log backend that LEDGER_EVENTLOG names.
func openLog(_ context.Context, cfg Config, pool *pgxpool.Pool, logger *slog.Logger) (eventlog.Log, string, error) {
	if cfg.EventLog == "postgres" {
		return postgres.New(pool, logger), "postgres", nil
	}
	return nil, "", fmt.Errorf("LEDGER_EVENTLOG %q: the EventStoreDB backend is not wired into this build", "esdb://…")
}

// Serve answers HTTP on ln until ctx is done, then shuts down gracefully:
// in-flight requests finish (each append is one transaction, so nothing is
// left half-written), new ones are refused.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.api, ReadHeaderTimeout: 10 * time.Second}
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

// Close releases the event log and the database pool.
func (s *Service) Close() {
	if s.log != nil {
		s.log.Close()
	}
	s.pool.Close()
}
