package esdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// classify marks err with eventlog.ErrUnavailable when it says the server
// could not be reached or could not serve the request now, so that the
// webhook answers 503 and Stripe retries.
func classify(err error) error {
	switch {
	case unavailable(err):
		return fmt.Errorf("%w: %w", eventlog.ErrUnavailable, err)
	case status.Code(err) == codes.InvalidArgument && strings.Contains(err.Error(), "Maximum Append Size"):
		// A server configured with a smaller MaxAppendSize than the default.
		return fmt.Errorf("%w: %w", eventlog.ErrTooLarge, err)
	case hasCode(err, esdbclient.ErrorCodeStreamDeleted):
		return fmt.Errorf("%w: %w", ErrStreamDeleted, err)
	case denied(err):
		// Access is an operator's fix; until then Stripe retries.
		return fmt.Errorf("%w: %w: %w", eventlog.ErrUnavailable, errAccessDenied, err)
	}
	return err
}

func unavailable(err error) bool {
	if errors.Is(err, errStuck) || errors.Is(err, errRetired) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if e, ok := errors.AsType[*esdbclient.Error](err); ok {
		switch e.Code() {
		case esdbclient.ErrorUnavailable, esdbclient.ErrorCodeNotLeader, esdbclient.ErrorCodeDeadlineExceeded, esdbclient.ErrorCodeConnectionClosed,
			esdbclient.ErrorAborted: // a write that timed out before replication, or a forward to the leader that timed out
			return true
		}
	}
	// Some calls (the Read that starts ReadStream and ReadAll, a dropped
	// subscription) return the gRPC error without an *esdbclient.Error around it.
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return true
	}
	// A node that goes down while an append is being sent ends the request
	// stream: Send reports io.EOF, which the client wraps with code 0
	// (unknown). The write's fate is unknown, so it is retried like any
	// other outage (and the guard's recovery finds it if it landed).
	return errors.Is(err, io.EOF)
}

// ErrStreamDeleted wraps appends and reads refused because the stream was
// deleted (tombstoned) in EventStoreDB. The ledger never deletes a stream,
// and KurrentDB cannot bring a tombstoned one back: its records are gone
// from reads, and new events of its customer are refused (the webhook
// answers 500, so Stripe keeps retrying) until an operator restores the
// database from a backup taken before the deletion.
var ErrStreamDeleted = errors.New("the stream is deleted in EventStoreDB; the ledger refuses to write or read a deleted stream")

// hasCode reports whether err is or wraps an *esdbclient.Error with code.
func hasCode(err error, code esdbclient.ErrorCode) bool {
	e, ok := errors.AsType[*esdbclient.Error](err)
	return ok && e.Code() == code
}

// guardError marks a failure of the dedup guard's database. Its statements are
// fixed and their inputs checked, so any failure means the log cannot store
// events now: eventlog.ErrUnavailable.
func guardError(err error) error {
	return fmt.Errorf("%w: dedup guard: %w", eventlog.ErrUnavailable, err)
}
