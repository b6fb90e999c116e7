package stripeapi

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/stripe/stripe-go/v76"
)

// Kind classifies a failed request by what the operator has to do about it.
type Kind int

// Kinds of Error.
const (
	KindUnavailable     Kind = iota + 1 // network, 5xx, or 429 past every retry: try again later
	KindAuth                            // 401: the key is wrong, expired or revoked
	KindPermission                      // 403: the restricted key lacks a permission
	KindNotFound                        // 404: no such object (or not in this account)
	KindRateLimited                     // 429 past every retry
	KindInvalidRequest                  // 400 and other 4xx: the request itself is wrong
	KindInvalidResponse                 // 2xx whose body is not what Stripe sends
)

var kindNames = map[Kind]string{
	KindUnavailable: "unavailable", KindAuth: "authentication", KindPermission: "permission",
	KindNotFound: "not_found", KindRateLimited: "rate_limited", KindInvalidRequest: "invalid_request",
	KindInvalidResponse: "invalid_response",
}

func (k Kind) String() string { return kindNames[k] }

// Error is a failed Stripe API request. Its text names the path, Stripe's
// status, type, code, message and request id; never the key.
type Error struct {
	Kind      Kind
	Path      string // the request path, without the query
	Status    int    // HTTP status, 0 when no response came
	Type      string // Stripe's error type, e.g. invalid_request_error
	Code      string // Stripe's error code, e.g. resource_missing
	Message   string
	RequestID string // Stripe's Request-Id, to quote to Stripe support
	cause     error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Stripe API GET %s: %s", e.Path, e.Kind)
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d", e.Status)
		if e.Code != "" {
			fmt.Fprintf(&b, ", %s", e.Code)
		}
		b.WriteString(")")
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " [request %s]", e.RequestID)
	}
	switch e.Kind {
	case KindAuth:
		b.WriteString("; check STRIPE_API_KEY")
	case KindPermission:
		b.WriteString("; give the restricted key read access to events, customers, subscriptions and invoices")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.cause }

// IsKind reports whether err is an *Error of kind k.
func IsKind(err error, k Kind) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == k
}

// classify turns what Backend.Call returned into an *Error.
func (c *Client) classify(path string, err error) *Error {
	var se *stripe.Error
	if !errors.As(err, &se) {
		// No Stripe error body: the network, or a response that is not Stripe's.
		return &Error{Kind: KindUnavailable, Path: path, Message: c.redact(err.Error()), cause: err}
	}
	e := &Error{Path: path, Status: se.HTTPStatusCode, Type: string(se.Type), Code: string(se.Code),
		Message: c.redact(se.Msg), RequestID: se.RequestID, cause: err}
	switch s := se.HTTPStatusCode; {
	case s == http.StatusUnauthorized:
		e.Kind = KindAuth
	case s == http.StatusForbidden:
		e.Kind = KindPermission
	case s == http.StatusNotFound:
		e.Kind = KindNotFound
	case s == http.StatusTooManyRequests:
		e.Kind = KindRateLimited
	case s >= 500:
		e.Kind = KindUnavailable
	default:
		e.Kind = KindInvalidRequest
	}
	return e
}

// redact removes the key from text that might echo it.
func (c *Client) redact(s string) string {
	if c.key == "" {
		return s
	}
	return strings.ReplaceAll(s, c.key, "[redacted]")
}
