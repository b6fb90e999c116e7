package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// Config is the ledger's configuration, read from the environment (DESIGN §6).
type Config struct {
	DatabaseURL    string
	WebhookSecrets []string
	EventLog       string // "postgres" or an esdb:// or esdb+discover:// connection string
	ESDBPrefix     string // LEDGER_ESDB_STREAM_PREFIX; empty: the one the guard records (see esdb.WithStreamPrefix)
	Addr           string
	APIToken       string
	Plans          domain.Plans  // LEDGER_PLANS
	SealInterval   time.Duration // LEDGER_SEAL_INTERVAL: how often serve seals the log; 0: never
	// ConsoleSecureCookie (LEDGER_CONSOLE_SECURE_COOKIE=true) marks the
	// console's cookies Secure even over plain HTTP, for TLS ended at a proxy.
	ConsoleSecureCookie bool

	StripeAPIKey      string        // STRIPE_API_KEY: backfill, reconcile, thin-event fetches; never logged
	StripeAPIBase     string        // STRIPE_API_BASE: Stripe's API by default; tests point it at stripe-mock or a fake
	ReconcileInterval time.Duration // LEDGER_RECONCILE_INTERVAL: serve reconciles this often; 0 (default) never

	// The HTTP server's limits against slow and idle clients.
	HTTPReadTimeout     time.Duration // LEDGER_HTTP_READ_TIMEOUT: a whole request, body included
	HTTPIdleTimeout     time.Duration // LEDGER_HTTP_IDLE_TIMEOUT: a keep-alive connection between requests
	MaxInflightWebhooks int           // LEDGER_WEBHOOK_MAX_INFLIGHT: beyond it the webhook answers 503

	NotifyURLs   []string // LEDGER_NOTIFY_URL, comma-separated: serve pushes notifications to each
	NotifySecret string   // LEDGER_NOTIFY_SECRET: signs them; never logged

	// PprofAddr (LEDGER_PPROF_ADDR) is where serve answers /debug/pprof/, on
	// a listener of its own; a host left out is 127.0.0.1. Empty: off.
	PprofAddr string
}

// Defaults of the HTTP limits. A Stripe delivery is at most 1 MiB and sent
// at once: 15 s is ample for it and cuts a trickling body well within 30 s.
const (
	DefaultHTTPReadTimeout = 15 * time.Second
	DefaultHTTPIdleTimeout = 120 * time.Second
)

// DefaultDatabaseURL is used when DATABASE_URL is unset.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/ledger?sslmode=disable"

// LoadConfig reads the configuration. Secrets are checked where they are
// needed (serve refuses to start without a webhook secret), so that migrate
// runs without them.
func LoadConfig(getenv func(string) string) (Config, error) {
	cfg := Config{
		DatabaseURL: orDefault(getenv("DATABASE_URL"), DefaultDatabaseURL),
		EventLog:    orDefault(getenv("LEDGER_EVENTLOG"), "postgres"),
		ESDBPrefix:  getenv("LEDGER_ESDB_STREAM_PREFIX"),
		Addr:        orDefault(getenv("LEDGER_ADDR"), ":8080"),
		APIToken:    getenv("LEDGER_API_TOKEN"),

		StripeAPIKey:  getenv("STRIPE_API_KEY"),
		StripeAPIBase: getenv("STRIPE_API_BASE"),
	}
	if v := getenv("LEDGER_RECONCILE_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return Config{}, fmt.Errorf("LEDGER_RECONCILE_INTERVAL %q is not a duration such as 6h (0 or unset: off)", v)
		}
		cfg.ReconcileInterval = d
	}
	for _, s := range strings.Split(getenv("STRIPE_WEBHOOK_SECRET"), ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.WebhookSecrets = append(cfg.WebhookSecrets, s)
		}
	}
	for _, u := range strings.Split(getenv("LEDGER_NOTIFY_URL"), ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.NotifyURLs = append(cfg.NotifyURLs, u)
		}
	}
	cfg.NotifySecret = getenv("LEDGER_NOTIFY_SECRET")
	var err error
	if cfg.PprofAddr, err = pprofAddr(getenv("LEDGER_PPROF_ADDR")); err != nil {
		return Config{}, err
	}
	if cfg.HTTPReadTimeout, err = envDuration(getenv, "LEDGER_HTTP_READ_TIMEOUT", DefaultHTTPReadTimeout); err != nil {
		return Config{}, err
	}
	if cfg.HTTPIdleTimeout, err = envDuration(getenv, "LEDGER_HTTP_IDLE_TIMEOUT", DefaultHTTPIdleTimeout); err != nil {
		return Config{}, err
	}
	if v := getenv("LEDGER_WEBHOOK_MAX_INFLIGHT"); v != "" {
		if cfg.MaxInflightWebhooks, err = strconv.Atoi(v); err != nil || cfg.MaxInflightWebhooks < 1 {
			return Config{}, fmt.Errorf("LEDGER_WEBHOOK_MAX_INFLIGHT must be a positive integer, got %q", v)
		}
	}
	plans, err := domain.ParsePlans(getenv("LEDGER_PLANS"))
	if err != nil {
		return Config{}, errors.New(domain.ErrorMessage(err)) // the message names LEDGER_PLANS
	}
	cfg.Plans = plans
	if cfg.SealInterval, err = time.ParseDuration(orDefault(getenv("LEDGER_SEAL_INTERVAL"), "1m")); err != nil || cfg.SealInterval < 0 {
		return Config{}, fmt.Errorf("LEDGER_SEAL_INTERVAL must be a duration such as 1m or 30s (0 turns sealing off), not %q", getenv("LEDGER_SEAL_INTERVAL"))
	}
	if cfg.EventLog != "postgres" && !strings.HasPrefix(cfg.EventLog, "esdb://") &&
		!strings.HasPrefix(cfg.EventLog, "esdb+discover://") {
		return Config{}, errors.New(`LEDGER_EVENTLOG must be "postgres" or an esdb:// or esdb+discover:// connection string`)
	}
	if v := getenv("LEDGER_CONSOLE_SECURE_COOKIE"); v != "" {
		if cfg.ConsoleSecureCookie, err = strconv.ParseBool(v); err != nil {
			return Config{}, fmt.Errorf("LEDGER_CONSOLE_SECURE_COOKIE must be true or false, not %q", v)
		}
	}
	if strings.HasPrefix(cfg.ESDBPrefix, "$") {
		return Config{}, errors.New("LEDGER_ESDB_STREAM_PREFIX must not start with $ (the system streams' prefix)")
	}
	return cfg, nil
}

// envDuration reads the positive duration in the variable name, def when unset.
func envDuration(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s must be a positive duration such as 15s, got %q", name, v)
	}
	return d, nil
}

// pprofAddr is LEDGER_PPROF_ADDR as a listen address: host:port, or :port
// for 127.0.0.1:port, so that profiles are never served beyond the machine
// unless a host is named.
func pprofAddr(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil || port == "" {
		return "", fmt.Errorf("LEDGER_PPROF_ADDR must be host:port or :port (127.0.0.1), got %q", v)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
