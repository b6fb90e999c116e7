package esdb

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// classify marks err with eventlog.ErrUnavailable when it says the server
// could not be reached or could not serve the request now, so that the
// webhook answers 503 and Stripe retries.
func classify(err error) error {
	if unavailable(err) {
		return fmt.Errorf("%w: %w", eventlog.ErrUnavailable, err)
	}
	return err
}

func unavailable(err error) bool {
	if errors.Is(err, errStuck) || errors.Is(err, errRetired) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if e, ok := errors.AsType[*esdb.Error](err); ok {
		switch e.Code() {
		case esdb.ErrorUnavailable, esdb.ErrorCodeNotLeader, esdb.ErrorCodeDeadlineExceeded, esdb.ErrorCodeConnectionClosed:
			return true
		}
	}
	// Some calls (the Read that starts ReadStream and ReadAll, a dropped
	// subscription) return the gRPC error without an *esdb.Error around it.
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	// A node that goes down while an append is being sent ends the request
	// stream: Send reports io.EOF, which the client wraps with code 0
	// (unknown). The write's fate is unknown, so it is retried like any
	// other outage (and the guard's recovery finds it if it landed).
	return errors.Is(err, io.EOF)
}

// hasCode reports whether err is or wraps an *esdb.Error with code.
func hasCode(err error, code esdb.ErrorCode) bool {
	e, ok := errors.AsType[*esdb.Error](err)
	return ok && e.Code() == code
}

// guardError marks a failure of the dedup guard's database. Its statements are
// fixed and their inputs checked, so any failure means the log cannot store
// events now: eventlog.ErrUnavailable.
func guardError(err error) error {
	return fmt.Errorf("%w: dedup guard: %w", eventlog.ErrUnavailable, err)
}
