-- The append-only event log (DESIGN §2). One row per verified Stripe event,
-- never updated or deleted by the application.
--
-- Global order. Readers consume records in (tx, global_position) order,
-- eventlog.Position{Commit: tx, Prepare: global_position}: tx is the id of
-- the appending transaction, global_position a sequence number that orders
-- the rows of one transaction. Transactions commit out of id order, so
-- readers only return rows below ledger_horizon() (functions.sql), taken in an
-- earlier statement than the read: every transaction that can still commit a
-- row has an id at or above it, so a row that commits later sorts after
-- everything a reader has already returned (DESIGN §2), while appends to
-- different streams commit concurrently. The price: a transaction of this
-- database that has written anything and stays open holds the horizon back,
-- and readers see nothing appended after it began until it ends (delay, not
-- loss).
CREATE TABLE events (
    global_position bigint      PRIMARY KEY,
    tx              xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        text        NOT NULL UNIQUE,
    stream          text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version >= 0),
    type            text        NOT NULL,
    api_version     text        NOT NULL,
    created         timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    account         text        NOT NULL DEFAULT '',
    payload         bytea       NOT NULL,
    signature       text        NOT NULL,
    payload_sha256  bytea       NOT NULL,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    UNIQUE (stream, stream_version)
);

-- The global read order (ReadAll, Subscribe, Head, CountAfter).
CREATE INDEX events_tx_global_position ON events (tx, global_position);

-- global_position only orders the rows of one transaction and names a row;
-- tx decides the order between transactions, so a per-session cache would no
-- longer break gap safety. CACHE 1 (the default) is kept so that positions
-- stay close to commit order for people reading the table, and a reconnect
-- does not burn a range of them.
CREATE SEQUENCE events_global_position_seq CACHE 1 OWNED BY events.global_position;

-- ledger_append, which stores an event, and ledger_horizon are defined in
-- functions.sql (this migration created their first forms).

---- create above / drop below ----
DROP FUNCTION IF EXISTS ledger_append_batch;
DROP FUNCTION IF EXISTS ledger_horizon;
DROP FUNCTION IF EXISTS ledger_append;
DROP FUNCTION IF EXISTS ledger_append_guard;
DROP TABLE events;
