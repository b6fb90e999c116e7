package api

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/stripesig"
)

// MaxWebhookBody is the largest webhook body accepted (DESIGN §5).
const MaxWebhookBody = 1 << 20

// signatureTolerance is how old a signature's timestamp may be.
const signatureTolerance = webhook.DefaultTolerance

// The webhook's 200 bodies, as encoding/json writes them: one per delivery
// is too many to encode each time.
const (
	answerStored    = `{"received":true,"duplicate":false}` + "\n"
	answerDuplicate = `{"received":true,"duplicate":true}` + "\n"
)

// handleWebhook verifies a Stripe delivery and appends it to the event log,
// answering 200 only once the event is durable.
func (s *Server) handleWebhook(c echo.Context) error {
	limit := MaxWebhookBody
	if l, ok := s.cfg.Log.(eventlog.PayloadLimiter); ok {
		limit = min(limit, l.MaxPayload())
	}
	payload, err := readBody(c.Request(), limit)
	if err != nil {
		return s.reject(c, nil, domain.Errorf(domain.EINVALID, "read request body: %v", err), "rejected")
	}
	if len(payload) > limit {
		return s.reject(c, nil, domain.Errorf(domain.ETOOLARGE, "request body is over %d bytes", limit), "too_large")
	}
	header := c.Request().Header.Get("Stripe-Signature")
	if err := stripesig.Verify(payload, header, s.cfg.WebhookSecrets, signatureTolerance); err != nil {
		return s.reject(c, payload, signatureError(err), "rejected")
	}
	env, err := domain.ParseEnvelope(payload)
	if err != nil {
		return s.reject(c, payload, err, "rejected") // the reason names the field, never its value
	}

	stream := env.Stream()
	source := eventlog.SourceWebhook
	if env.Thin {
		source = eventlog.SourceThin
	}
	start := time.Now()
	res, err := s.cfg.Log.Append(c.Request().Context(), eventlog.Event{
		ID:         env.ID,
		Stream:     stream,
		Type:       env.Type,
		APIVersion: env.APIVersion,
		Created:    env.Created,
		Account:    env.Account,
		Payload:    payload,
		Signature:  header,
		Source:     source,
	})
	s.metrics.appendSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		if errors.Is(err, eventlog.ErrUnavailable) {
			return s.reject(c, payload, err, "unavailable", "err", err)
		}
		if errors.Is(err, eventlog.ErrTooLarge) {
			return s.reject(c, payload, err, "too_large", "err", err)
		}
		s.metrics.webhooks.WithLabelValues("failed").Inc()
		return err // logged and answered 500 by handleError; Stripe retries
	}
	if env.Thin {
		// Owed before the 200 (a redelivery queues it again); the fetch itself
		// happens later, so nothing here waits on Stripe.
		if err := s.cfg.EnqueueThin(c.Request().Context(), env); err != nil {
			return s.reject(c, payload, domain.Errorf(domain.EUNAVAILABLE, "could not queue the thin event's fetch; retry later"), "unavailable", "err", err)
		}
	}
	outcome, counter := "stored", s.metrics.stored
	if res.Duplicate {
		outcome, counter = "duplicate", s.metrics.duplicate
	}
	counter.Inc()
	if s.cfg.Logger.Enabled(c.Request().Context(), slog.LevelDebug) { // its arguments cost allocations even when not logged
		s.cfg.Logger.Debug("webhook", "event_id", env.ID, "type", env.Type, "stream", stream, "source", string(source), "outcome", outcome)
	}
	if s.cfg.Stored != nil && !res.Duplicate {
		s.cfg.Stored(env)
	}
	answer := answerStored
	if res.Duplicate {
		answer = answerDuplicate
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, []byte(answer))
}

// readBody reads a request body of at most limit bytes, and one more when it
// is longer. A body whose Content-Length is within the limit is read into a
// buffer of that size (net/http ends it there); io.ReadAll would grow its
// buffer from 512 bytes, copying each time.
func readBody(r *http.Request, limit int) ([]byte, error) {
	if r.ContentLength <= 0 || r.ContentLength > int64(limit) {
		return io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	}
	body := make([]byte, r.ContentLength)
	_, err := io.ReadFull(r.Body, body)
	return body, err
}

// reject counts a refused delivery and logs it at WARN, so that a
// misconfigured Stripe endpoint (wrong secret, clock skew) shows in the logs.
// The log line carries the reason, the event id the body claims when it has
// one, and the peer; never the secret or the signature header.
func (s *Server) reject(c echo.Context, payload []byte, err error, outcome string, extra ...any) error {
	s.metrics.webhooks.WithLabelValues(outcome).Inc()
	r := c.Request()
	_, _, reason := httpError(err)
	attrs := append([]any{"outcome", outcome, "reason", reason, "remote_addr", r.RemoteAddr}, extra...)
	// What the sender wrote is logged clipped: a refused delivery must not
	// write what it likes, at any length, into the operator's logs.
	if fwd := r.Header.Get("X-Forwarded-For"); fwd != "" {
		attrs = append(attrs, "forwarded_for", clip(fwd))
	}
	var claimed struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(payload, &claimed) == nil && claimed.ID != "" {
		attrs = append(attrs, "event_id", clip(claimed.ID)) // unverified unless the signature checked
	}
	s.cfg.Logger.Warn("webhook rejected", attrs...)
	return err
}

// maxLoggedUntrusted is the most bytes of a value a sender chose that a log
// line carries; a Stripe event id is about 30.
const maxLoggedUntrusted = 64

// clip returns s cut to maxLoggedUntrusted bytes (at a character boundary),
// marked as cut and with its full length, when it is longer.
func clip(s string) string {
	if len(s) <= maxLoggedUntrusted {
		return s
	}
	cut := maxLoggedUntrusted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// signatureError turns a failed verification into the 400 the webhook answers.
func signatureError(err error) error {
	switch {
	case errors.Is(err, stripesig.ErrMissing):
		return domain.Errorf(domain.EINVALID, "missing Stripe-Signature header")
	case errors.Is(err, stripesig.ErrMalformed):
		return domain.Errorf(domain.EINVALID, "malformed Stripe-Signature header")
	case errors.Is(err, stripesig.ErrStale):
		return domain.Errorf(domain.EINVALID, "stale signature timestamp: signed more than %s ago", signatureTolerance)
	}
	return domain.Errorf(domain.EINVALID, "invalid signature: no v1 signature matches a configured webhook secret")
}
