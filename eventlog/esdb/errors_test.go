package esdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"node went down while an append was sent", fmt.Errorf("could not send append request. Reason: %w", io.EOF), true},
		{"gRPC unavailable", status.Error(codes.Unavailable, "connection refused"), true},
		{"gRPC deadline", status.Error(codes.DeadlineExceeded, "slow"), true},
		{"deadline", fmt.Errorf("read: %w", context.DeadlineExceeded), true},
		{"client's deadline code", wrapClientError(status.Error(codes.DeadlineExceeded, "Deadline Exceeded")), true},
		{"server write timeout", fmt.Errorf("append: %w", status.Error(codes.Aborted, "Operation timed out")), true},
		{"client error around a deadline", wrapClientError(fmt.Errorf("subscription: %w", context.DeadlineExceeded)), true},
		{"stuck call", errStuck, true},
		{"client retired during the call", errRetired, true},
		{"cancelled by the caller", context.Canceled, false},
		{"gRPC invalid argument", status.Error(codes.InvalidArgument, "bad"), false},
		{"other", errors.New("metadata: invalid character"), false},
	} {
		if got := errors.Is(classify(tc.err), eventlog.ErrUnavailable); got != tc.unavailable {
			t.Errorf("%s: classify(%v) unavailable = %v, want %v", tc.name, tc.err, got, tc.unavailable)
		}
	}
}

// wrapClientError is err as EventStore-Client-Go hands it back: an *esdbclient.Error.
func wrapClientError(err error) error {
	e, _ := esdbclient.FromError(err)
	return e
}
