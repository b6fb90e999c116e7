// Package stripeapi is the ledger's read-only client of Stripe's API
// (DESIGN §10): it pages lists, fetches events and objects as raw JSON (the
// ledger stores Stripe's bytes, never a re-encoding), retries 429s and 5xxs
// with back-off that honours Stripe-Should-Retry and Retry-After, and turns
// failures into *Error values with a Kind the commands map to exit codes.
//
// Requests go through stripe-go v76's Backend.Call, which reaches any path
// (v1 or v2) with the key, Stripe-Version and Stripe-Account headers set the
// way Stripe's own client sets them. stripe-go's own retries are off: this
// package retries, so that Retry-After is honoured and every retry is
// counted. The key is never logged nor put into an error.
package stripeapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

// DefaultBase is Stripe's API, used when Config.Base is empty.
const DefaultBase = "https://api.stripe.com"

// APIVersion is the Stripe-Version every request is made with (stripe-go
// v76's pin), and so the version objects fetched through the API are
// rendered in.
const APIVersion = stripe.APIVersion

// Config configures a Client.
type Config struct {
	Key  string // STRIPE_API_KEY; a restricted read key is enough
	Base string // STRIPE_API_BASE; DefaultBase when empty

	HTTPClient *http.Client // nil: a client with a 80 s timeout (stripe-go's)
	Logger     *slog.Logger // retries are logged at WARN; nil discards

	MaxRetries int           // retries of one request after the first try; 0: DefaultMaxRetries, negative: none
	MinBackoff time.Duration // first wait without a Retry-After; 0: 500 ms, doubled per retry
	MaxBackoff time.Duration // cap of the doubling and of Retry-After; 0: 30 s
}

// DefaultMaxRetries is how many times a request is retried unless Config says otherwise.
const DefaultMaxRetries = 6

// Client is a Stripe API client. It is safe for concurrent use.
type Client struct {
	backend    stripe.Backend
	key        string
	logger     *slog.Logger
	maxRetries int
	retry      backoff.Policy // without a Retry-After; its Max also caps Retry-After
}

// ErrNoKey is returned by New without a key.
var ErrNoKey = errors.New("STRIPE_API_KEY is not set")

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	if cfg.Key == "" {
		return nil, ErrNoKey
	}
	base := strings.TrimRight(cmp.Or(cfg.Base, DefaultBase), "/")
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("STRIPE_API_BASE %q is not an http(s) URL", base)
	}
	c := &Client{
		key:        cfg.Key,
		logger:     cfg.Logger,
		maxRetries: cfg.MaxRetries,
		retry:      backoff.Policy{Min: cmp.Or(cfg.MinBackoff, 500*time.Millisecond), Max: cmp.Or(cfg.MaxBackoff, 30*time.Second)},
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.maxRetries == 0:
		c.maxRetries = DefaultMaxRetries
	case c.maxRetries < 0:
		c.maxRetries = 0
	}
	c.backend = stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(base),
		HTTPClient:        cfg.HTTPClient,
		MaxNetworkRetries: stripe.Int64(0),
		EnableTelemetry:   stripe.Bool(false),
		// stripe-go's logger would print response bodies to stderr.
		LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	return c, nil
}

// rawResponse keeps the response body exactly as Stripe sent it.
type rawResponse struct {
	stripe.APIResource
}

// Get fetches path (with query, for account when not empty: the
// Stripe-Account header of Connect) and returns the response body
// byte for byte.
func (c *Client) Get(ctx context.Context, path string, query url.Values, account string) ([]byte, error) {
	target := path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	for attempt := 0; ; attempt++ {
		params := &stripe.Params{Context: ctx}
		if account != "" {
			params.StripeAccount = stripe.String(account)
		}
		var resp rawResponse
		err := c.backend.Call(http.MethodGet, target, c.key, params, &resp)
		if err == nil {
			if resp.LastResponse == nil {
				return nil, &Error{Kind: KindUnavailable, Path: path, Message: "empty response"}
			}
			return resp.LastResponse.RawJSON, nil
		}
		apiErr := c.classify(path, err)
		wait, retry := c.retryAfter(apiErr, err, attempt)
		if !retry || ctx.Err() != nil {
			return nil, apiErr
		}
		c.logger.WarnContext(ctx, "Stripe API request failed; retrying",
			"path", path, "status", apiErr.Status, "request_id", apiErr.RequestID, "attempt", attempt+1, "retry_in", wait.String())
		if err := backoff.Sleep(ctx, wait); err != nil {
			return nil, &Error{Kind: KindUnavailable, Path: path, Message: "interrupted while backing off: " + err.Error(), cause: err}
		}
	}
}

// Page is one page of a Stripe list: its items as raw JSON, in Stripe's order.
type Page struct {
	Data    []json.RawMessage `json:"data"`
	HasMore bool              `json:"has_more"`
}

// ListPage fetches one page of the list at path.
func (c *Client) ListPage(ctx context.Context, path string, query url.Values, account string) (Page, error) {
	body, err := c.Get(ctx, path, query, account)
	if err != nil {
		return Page{}, err
	}
	var p Page
	if err := json.Unmarshal(body, &p); err != nil {
		return Page{}, &Error{Kind: KindInvalidResponse, Path: path, Message: "the list response is not a Stripe list: " + err.Error()}
	}
	return p, nil
}

// List pages through the whole list at path (limit 100 unless query sets
// one, starting_after the last item's id) and calls each with every item in
// Stripe's order. An error from each stops the listing and is returned.
func (c *Client) List(ctx context.Context, path string, query url.Values, account string, each func(item json.RawMessage) error) error {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	if q.Get("limit") == "" {
		q.Set("limit", "100")
	}
	for {
		page, err := c.ListPage(ctx, path, q, account)
		if err != nil {
			return err
		}
		for _, item := range page.Data {
			if err := each(item); err != nil {
				return err
			}
		}
		if !page.HasMore || len(page.Data) == 0 {
			return nil
		}
		last, err := ItemID(page.Data[len(page.Data)-1])
		if err != nil {
			return &Error{Kind: KindInvalidResponse, Path: path, Message: err.Error()}
		}
		q.Set("starting_after", last)
	}
}

// ItemID is the "id" of a Stripe object given as JSON.
func ItemID(item json.RawMessage) (string, error) {
	var head struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(item, &head); err != nil || head.ID == "" {
		return "", fmt.Errorf("a list item has no id")
	}
	return head.ID, nil
}

// retryAfter decides whether a failed request is retried and after how long:
// Stripe-Should-Retry decides when present; otherwise 429, 5xx and network
// errors are retried. Retry-After (seconds) sets the wait when given, else
// it doubles from MinBackoff, with jitter; both are capped at MaxBackoff.
func (c *Client) retryAfter(apiErr *Error, cause error, attempt int) (time.Duration, bool) {
	if attempt >= c.maxRetries || errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return 0, false
	}
	var header http.Header
	var se *stripe.Error
	if errors.As(cause, &se) && se.LastResponse != nil {
		header = se.LastResponse.Header
	}
	switch header.Get("Stripe-Should-Retry") {
	case "false":
		return 0, false
	case "true":
	default:
		if apiErr.Status != 0 && apiErr.Status != http.StatusTooManyRequests && apiErr.Status < 500 {
			return 0, false
		}
	}
	if s, err := strconv.Atoi(header.Get("Retry-After")); err == nil && s >= 0 {
		return min(time.Duration(s)*time.Second, c.retry.Max), true
	}
	return c.retry.Delay(attempt), true // jittered: retries of concurrent callers spread out
}
