package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
	"github.com/stripe-ledger/stripe-ledger/notify"
)

// Sender pushes the outbox to the receivers of LEDGER_NOTIFY_URL (DESIGN
// §12): each notification POSTed as JSON, signed (notify.Sign), to every
// receiver in position order (so in order per customer), one at a time;
// a 2xx acknowledges it and moves that receiver's cursor. A failure is
// retried with exponential back-off, holding back that receiver's later
// notifications, until it has failed for RetryFor; then it is recorded in
// notification_abandoned and skipped. Cursors are stored after each page
// and each failure: a crash re-sends at most the page in flight (at least
// once: receivers deduplicate by notification id). One replica sends, under
// a session advisory lock like a projection Runner's.
type Sender struct {
	pool      *pgxpool.Pool
	feed      *Notifications
	cfg       SenderConfig
	receivers []receiver
	metrics   *senderMetrics
	lockRetry time.Duration
}

// SenderConfig configures a Sender. URLs and Secret are required.
type SenderConfig struct {
	URLs       []string      // the receivers
	Secret     string        // LEDGER_NOTIFY_SECRET
	Client     *http.Client  // nil: one with a 10 s timeout
	MinBackoff time.Duration // first retry after a failure (0: 1s), doubled per attempt, with jitter (internal/backoff)
	MaxBackoff time.Duration // the longest wait between attempts (0: 1h)
	RetryFor   time.Duration // how long a failing notification is retried (0: 72h)
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics not registered
}

type receiver struct {
	url  string
	name string // url without its password: what rows, logs and metrics show
}

// idleCursorCheck is how often an idle sender reads its cursors again.
const idleCursorCheck = 2 * time.Second

// senderLockClass is the advisory lock class of the one sender.
const senderLockClass = 0x4c534e44 // 'LSND'

// NewSender returns a Sender of pool's outbox to cfg's receivers.
func NewSender(pool *pgxpool.Pool, cfg SenderConfig) (*Sender, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("notifications: no receiver URL")
	}
	if cfg.Secret == "" {
		return nil, errors.New("LEDGER_NOTIFY_URL is set but LEDGER_NOTIFY_SECRET is not: refusing to send unsigned notifications")
	}
	s := &Sender{pool: pool, feed: NewNotifications(pool), cfg: cfg, lockRetry: 3 * time.Second}
	for _, raw := range cfg.URLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("notifications: receiver %q is not an http(s) URL", redact(raw))
		}
		s.receivers = append(s.receivers, receiver{url: raw, name: u.Redacted()})
	}
	if s.cfg.Client == nil {
		s.cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if s.cfg.MinBackoff == 0 {
		s.cfg.MinBackoff = time.Second
	}
	if s.cfg.MaxBackoff == 0 {
		s.cfg.MaxBackoff = time.Hour
	}
	if s.cfg.RetryFor == 0 {
		s.cfg.RetryFor = 72 * time.Hour
	}
	if s.cfg.Logger == nil {
		s.cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s.cfg.Logger = s.cfg.Logger.With("component", "notifications")
	m, err := newSenderMetrics(cfg.Registerer, pool)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	return s, nil
}

func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// Run sends until ctx is done, on whichever replica holds the sender's lock.
func (s *Sender) Run(ctx context.Context) error {
	for {
		err := s.runLocked(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, errLocked) {
			s.cfg.Logger.ErrorContext(ctx, "notification sender failed; retrying", "err", err)
		}
		if backoff.Sleep(ctx, s.lockRetry) != nil {
			return nil
		}
	}
}

func (s *Sender) runLocked(ctx context.Context) error {
	l, err := tryLock(ctx, s.pool, senderLockClass, "notifications", s.cfg.Logger)
	if err != nil {
		return err
	}
	defer l.Release()
	ctx = l.Context()
	s.cfg.Logger.InfoContext(ctx, "notification sender holds the lock", "receivers", len(s.receivers))
	var wg sync.WaitGroup
	errs := make([]error, len(s.receivers))
	for i, r := range s.receivers {
		wg.Go(func() { errs[i] = s.serve(ctx, r) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cursor is a receiver's row of notification_receivers.
type cursor struct {
	position     int64
	failingID    string
	failingSince *time.Time
	attempts     int
	lastError    string
}

// serve delivers to r until ctx is done or the database fails.
func (s *Sender) serve(ctx context.Context, r receiver) error {
	if _, err := s.pool.Exec(ctx, `INSERT INTO notification_receivers (receiver) VALUES ($1) ON CONFLICT DO NOTHING`, r.name); err != nil {
		return fmt.Errorf("register receiver %s: %w", r.name, err)
	}
	for ctx.Err() == nil {
		var c cursor
		if err := s.pool.QueryRow(ctx, `SELECT position, failing_id, failing_since, attempts FROM notification_receivers WHERE receiver = $1`,
			r.name).Scan(&c.position, &c.failingID, &c.failingSince, &c.attempts); err != nil {
			return fmt.Errorf("read cursor of %s: %w", r.name, err)
		}
		// A short wait: the cursor is read again after it, so a replay
		// (which moves it back) is followed within that time.
		page, err := s.feed.Wait(ctx, c.position, 100, idleCursorCheck)
		if err != nil {
			return err
		}
		if err := s.deliverPage(ctx, r, c, page); err != nil && !errors.Is(err, errCursorMoved) {
			return err
		}
	}
	return nil
}

// errCursorMoved: ledger notifications replay moved the cursor meanwhile.
var errCursorMoved = errors.New("receiver cursor moved")

// deliverPage sends page to r in order, then stores the cursor after it.
func (s *Sender) deliverPage(ctx context.Context, r receiver, c cursor, page []notify.Notification) error {
	from, delivered := c.position, 0
	for _, n := range page {
		for {
			err := s.post(ctx, r, n)
			if err == nil {
				s.metrics.delivered.WithLabelValues(r.name).Inc()
				s.metrics.delay.Observe(time.Since(n.OccurredAt).Seconds())
				break
			}
			if ctx.Err() != nil {
				return s.storeCursor(context.WithoutCancel(ctx), r, from, c.position, delivered, nil)
			}
			s.metrics.failures.WithLabelValues(r.name).Inc()
			if c.failingID != n.ID {
				now := time.Now()
				c.failingID, c.failingSince, c.attempts = n.ID, &now, 0
			}
			c.attempts++
			c.lastError = err.Error()
			if time.Since(*c.failingSince) >= s.cfg.RetryFor {
				s.cfg.Logger.ErrorContext(ctx, "notification abandoned after the retry window", "receiver", r.name,
					"notification_id", n.ID, "attempts", c.attempts, "err", err)
				if _, err := s.pool.Exec(ctx, `INSERT INTO notification_abandoned (receiver, notification_id, position, error)
VALUES ($1, $2, $3, $4) ON CONFLICT (receiver, notification_id) DO UPDATE SET error = EXCLUDED.error, abandoned_at = clock_timestamp()`,
					r.name, n.ID, n.Position, err.Error()); err != nil {
					return fmt.Errorf("record abandoned notification: %w", err)
				}
				s.metrics.abandoned.WithLabelValues(r.name).Inc()
				break
			}
			wait := backoff.Policy{Min: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff}.Delay(c.attempts - 1)
			s.cfg.Logger.WarnContext(ctx, "notification delivery failed; retrying", "receiver", r.name,
				"notification_id", n.ID, "attempts", c.attempts, "retry_in", wait.String(), "err", err)
			if err := s.storeCursor(ctx, r, from, c.position, delivered, &c); err != nil {
				return err
			}
			from, delivered = c.position, 0
			if backoff.Sleep(ctx, wait) != nil {
				return nil
			}
		}
		c.position, c.failingID, c.failingSince, c.attempts = n.Position, "", nil, 0
		delivered++
	}
	return s.storeCursor(ctx, r, from, c.position, delivered, nil)
}

// storeCursor moves r's cursor from from to to (compare-and-set: a replay
// wins) with delivered more acknowledged, and the failure state of failing.
func (s *Sender) storeCursor(ctx context.Context, r receiver, from, to int64, delivered int, failing *cursor) error {
	f := cursor{}
	if failing != nil {
		f = *failing
	}
	tag, err := s.pool.Exec(ctx, `UPDATE notification_receivers
   SET position = $3, delivered = delivered + $4, failing_id = $5, failing_since = $6, attempts = $7,
       last_error = $8, updated_at = clock_timestamp()
 WHERE receiver = $1 AND position = $2`, r.name, from, to, delivered, f.failingID, f.failingSince, f.attempts, f.lastError)
	if err != nil {
		return fmt.Errorf("store cursor of %s: %w", r.name, err)
	}
	if tag.RowsAffected() == 0 {
		return errCursorMoved
	}
	return nil
}

// post sends n to r: nil only on a 2xx.
func (s *Sender) post(ctx context.Context, r receiver, n notify.Notification) error {
	body, err := json.Marshal(n)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "stripe-ledger")
	req.Header.Set(notify.SignatureHeader, notify.Sign(s.cfg.Secret, time.Now(), body))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return err // net/http strips the URL's password from its errors
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}

type senderMetrics struct {
	delivered, failures, abandoned *prometheus.CounterVec
	delay                          prometheus.Histogram
}

func newSenderMetrics(reg prometheus.Registerer, pool *pgxpool.Pool) (*senderMetrics, error) {
	m := &senderMetrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ledger_notifications_delivered_total",
			Help: "Notifications a receiver acknowledged with a 2xx."}, []string{"receiver"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ledger_notification_delivery_failures_total",
			Help: "Failed delivery attempts (non-2xx, timeout, connection error), each retried with back-off."}, []string{"receiver"}),
		abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ledger_notifications_abandoned_total",
			Help: "Notifications skipped after failing for the whole retry window (see ledger notifications status)."}, []string{"receiver"}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ledger_notification_delivery_delay_seconds",
			Help: "From the causing Stripe event's created time to the receiver's acknowledgement.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.delivered, m.failures, m.abandoned, m.delay, pendingGauge{pool}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register notification metrics: %w", err)
		}
	}
	return m, nil
}

// pendingGauge reports ledger_notifications_pending per receiver at scrape.
type pendingGauge struct{ pool *pgxpool.Pool }

var pendingDesc = prometheus.NewDesc("ledger_notifications_pending",
	"Notifications not yet acknowledged by a receiver; growing means it is failing.", []string{"receiver"}, nil)

func (g pendingGauge) Describe(ch chan<- *prometheus.Desc) { ch <- pendingDesc }

func (g pendingGauge) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	statuses, err := ReceiverStatuses(ctx, g.pool)
	if err != nil {
		return
	}
	for _, st := range statuses {
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(st.Pending), st.Receiver)
	}
}
