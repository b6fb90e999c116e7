package esdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SupportedServers names the KurrentDB releases the Log works with: the
// first ones whose filtered $all subscriptions send neither (2^64-1, 2^64-1)
// checkpoints (kurrent-io/KurrentDB#4892, fixed in 24.10.5 and 25.0.0) nor
// checkpoints at the end of the log (#4975, fixed by #4990/#4991 in 24.10.5
// and 25.0.1). A checkpoint past an event not yet delivered is a silent,
// permanent skip for a consumer that stores it.
const SupportedServers = "KurrentDB 24.10.5 or later in 24.10, 25.0.1 or later, 25.1 and later releases"

// supportedVersion reports whether a server of version v has both checkpoint fixes.
func supportedVersion(v esdbclient.ServerVersion) bool {
	switch {
	case v.Major == 24:
		return v.Minor == 10 && v.Patch >= 5
	case v.Major == 25 && v.Minor == 0:
		return v.Patch >= 1
	}
	return v.Major >= 25
}

// errAccessDenied explains a PermissionDenied from the server.
var errAccessDenied = errors.New("the EventStoreDB user lacks access: the ledger reads and subscribes to $all, " +
	"which needs a member of $admins (or read on $all granted through the $systemStreamAcl in $settings), " +
	"and writes its own streams, which needs $w on them (the $userStreamAcl: all users by default)")

// checkServer connects and refuses a server the Log cannot work with: one
// older than SupportedServers (its version comes from the server-features
// call the client makes when it connects; a server without that call is
// older still), or a user that may not read $all. It reads the last event
// of $all, one event, to check the permission (classify explains a denial).
func (l *Log) checkServer(ctx context.Context) error {
	client, err := l.conn()
	if err != nil {
		return err
	}
	v, err := detach(ctx, l, client, client.GetServerVersion, nil)
	if err != nil {
		return classify(err)
	}
	if !supportedVersion(*v) {
		return fmt.Errorf("the server is version %d.%d.%d; the ledger needs %s", v.Major, v.Minor, v.Patch, SupportedServers)
	}
	if _, err := l.read(ctx, client, func() (*esdbclient.ReadStream, error) {
		return client.ReadAll(leader(ctx), esdbclient.ReadAllOptions{Direction: esdbclient.Backwards, From: esdbclient.End{}}, 1)
	}); err != nil {
		return err
	}
	l.logger.Info("esdb event log: connected", "server_version", fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch), "stream_prefix", l.prefix)
	return nil
}

const (
	prefixSQL       = `SELECT stream_prefix FROM esdb_settings`
	recordPrefixSQL = `INSERT INTO esdb_settings (stream_prefix) VALUES ($1) ON CONFLICT DO NOTHING`
)

// streamPrefix is the stream prefix the guard database records, recording
// configured (or, when empty, a generated one) when it records none yet. A
// configured prefix that differs from the recorded one is refused: the
// guard's rows belong to the streams under the recorded one.
func (l *Log) streamPrefix(ctx context.Context, configured string) (string, error) {
	var recorded string
	err := l.guard.QueryRow(ctx, prefixSQL).Scan(&recorded)
	if errors.Is(err, pgx.ErrNoRows) {
		candidate := configured
		if candidate == "" {
			b := make([]byte, 6)
			_, _ = rand.Read(b)
			candidate = "stripe-ledger-" + hex.EncodeToString(b) + "-"
		}
		if _, err := l.guard.Exec(ctx, recordPrefixSQL, candidate); err != nil {
			return "", fmt.Errorf("record the stream prefix %q: %w", candidate, guardError(err))
		}
		err = l.guard.QueryRow(ctx, prefixSQL).Scan(&recorded) // another process may have recorded its own first
	}
	if err != nil {
		return "", fmt.Errorf("read the stream prefix: %w", guardError(err))
	}
	if configured != "" && configured != recorded {
		return "", fmt.Errorf("the stream prefix is %q but the guard database (esdb_settings) records %q: "+
			"its events were written under that prefix; configure that one", configured, recorded)
	}
	return recorded, nil
}

// denied reports a PermissionDenied from the server.
func denied(err error) bool {
	return hasCode(err, esdbclient.ErrorCodeAccessDenied) || status.Code(err) == codes.PermissionDenied
}
