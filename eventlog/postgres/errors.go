package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// classify marks err with eventlog.ErrUnavailable when it says the database
// could not be reached or could not serve the request right now, so that
// callers (the webhook's 503) can tell it from a bad request or a bug.
func classify(err error) error {
	if unavailable(err) {
		return fmt.Errorf("%w: %w", eventlog.ErrUnavailable, err)
	}
	return err
}

// IsUnavailable reports whether err, from pgx, says the database could not be
// reached or could not serve the request right now (a retry may succeed).
func IsUnavailable(err error) bool { return unavailable(err) }

func unavailable(err error) bool {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		return unavailableSQLState(pgErr.Code)
	}
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return true
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	return pgconn.Timeout(err) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, puddle.ErrClosedPool) ||
		errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

// unavailableSQLState reports whether a server error means "not now" rather
// than "not this request".
func unavailableSQLState(code string) bool {
	switch code[:min(2, len(code))] {
	case "08", // connection exception
		"53", // insufficient resources: too many connections, disk full, out of memory
		"57", // operator intervention: admin/crash shutdown, cannot connect now, statement timeout
		"58": // system error: I/O
		return true
	}
	return code == "25006" // read-only transaction: connected to a standby after a failover
}
