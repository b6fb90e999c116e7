package domain

import (
	"errors"
	"fmt"
)

// Error codes. The api package maps each to one HTTP status, in one place.
const (
	EINVALID       = "invalid"        // the request or payload is malformed
	EUNAUTHORIZED  = "unauthorized"   // missing or wrong credentials or signature
	ENOTFOUND      = "not_found"      // no such customer, subscription, …
	ETOOLARGE      = "too_large"      // the request body is over the limit
	EUNAVAILABLE   = "unavailable"    // a dependency (database, event log) is unreachable: retry later
	EINTERNAL      = "internal"       // a bug or an unexpected failure
	ENOTCONFIGURED = "not_configured" // the feature needs configuration that is missing
)

// Error is an error with a code and a message safe to show to the caller.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL when there is none.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the message of the first *Error in err's chain, or a
// generic message for other errors (whose text may hold SQL or secrets).
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
