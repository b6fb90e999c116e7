-- The append-only event log (DESIGN §2). One row per verified Stripe event,
-- never updated or deleted by the application.
--
-- Global order. Readers consume records in (tx, global_position) order,
-- eventlog.Position{Commit: tx, Prepare: global_position}: tx is the id of
-- the appending transaction, global_position a sequence number that orders
-- the rows of one transaction. Transactions commit out of id order, so
-- readers only return rows below ledger_horizon() (see there), taken in an
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

-- ledger_append stores one event and reports (duplicate, stream_version, tx,
-- global_position). Call it as a statement of its own (an implicit
-- transaction): the stream lock is held until that transaction ends.
--
-- Appends to one stream are serialised by a transaction-scoped advisory lock
-- on the stream (class 'LEVT', hashtext(stream); a collision only serialises
-- two streams). The lock is taken before the transaction writes anything, so
-- before it has a transaction id: the next append to the stream computes its
-- version and hash after the previous one committed, and gets a larger tx, so
-- a stream's versions come in read order. For the same reason it refuses to
-- run in a transaction that already has an id (wrote before calling it, or
-- appended already). It also needs READ COMMITTED, where each statement below
-- sees the appends committed before the lock was granted; under a
-- transaction-wide snapshot taken earlier it would miss them (a duplicate not
-- reported as such, a stale stream version).
--
-- Dedup is the unique index on event_id: a concurrent append of the same id
-- (to any stream) waits on the index for the first to end, then conflicts,
-- and reports the stored copy.
CREATE FUNCTION ledger_append(
    p_event_id text, p_stream text, p_type text, p_api_version text,
    p_created timestamptz, p_account text, p_payload bytea, p_signature text,
    OUT duplicate boolean, OUT stream_version bigint, OUT tx xid8, OUT global_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_prev bytea;
    v_sha  bytea := sha256(p_payload);
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'ledger_append needs READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'ledger_append must be the first write of its transaction'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    duplicate := true;
    -- Stripe retries deliveries: answer a stored id without waiting for the lock.
    SELECT e.stream_version, e.tx, e.global_position INTO stream_version, tx, global_position
      FROM events e WHERE e.event_id = p_event_id;
    IF FOUND THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(1279612500, hashtext(p_stream)); -- 0x4c455654 'LEVT'
    SELECT e.stream_version + 1, e.hash INTO stream_version, v_prev
      FROM events e WHERE e.stream = p_stream
     ORDER BY e.stream_version DESC LIMIT 1;
    IF NOT FOUND THEN
        stream_version := 0;
        v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    END IF;
    -- nextval may assign the transaction id (when it WAL-logs): after the lock.
    global_position := nextval('events_global_position_seq');
    INSERT INTO events AS e (global_position, event_id, stream, stream_version, type, api_version,
                        created, account, payload, signature, payload_sha256, prev_hash, hash)
    VALUES (global_position, p_event_id, p_stream, stream_version, p_type, p_api_version,
            p_created, p_account, p_payload, p_signature, v_sha, v_prev, sha256(v_prev || v_sha))
    ON CONFLICT (event_id) DO NOTHING
    RETURNING e.tx INTO tx;
    IF NOT FOUND THEN
        -- Appended concurrently and committed while this insert waited on the index.
        SELECT e.stream_version, e.tx, e.global_position INTO STRICT stream_version, tx, global_position
          FROM events e WHERE e.event_id = p_event_id;
        RETURN;
    END IF;
    duplicate := false;
    -- No NOTIFY here: a notifying transaction takes a database-wide lock at
    -- commit, which would serialise every append's WAL flush again (it halved
    -- append throughput). eventlog/postgres notifies after the commit instead.
END
$$;

-- ledger_horizon is the transaction id below which the log is complete: no
-- transaction with a smaller id can still commit a row into events. It is
-- the smallest id held by a backend of this database, and at most the xmax
-- of the calling statement's snapshot S (taken before pg_stat_activity is
-- read). Proof sketch: a transaction with id x < horizon is not running in
-- this database when pg_stat_activity is read (its id would be listed:
-- ids below xmax(S) were set in the process array before S), so it has
-- ended, or it runs in another database and cannot write this table, or it
-- is a prepared transaction, which an append cannot be (it notifies). Ids
-- assigned later are >= xmax(S). So a statement that starts after this one
-- sees every row with tx < horizon there will ever be. (backend_xid is 32
-- bits; it is widened against xmax(S), within 2^31 of every running id.)
-- Transactions of other databases, CREATE DATABASE included, do not hold it
-- back, unlike pg_snapshot_xmin. backend_xid is shown to every role.
CREATE FUNCTION ledger_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::numeric AS xmax)
    SELECT (s.xmax - coalesce(max(b.behind), 0))::text::xid8
      FROM s LEFT JOIN LATERAL (
           SELECT mod(mod(s.xmax, 4294967296) - a.backend_xid::text::numeric + 4294967296, 4294967296) AS behind
             FROM pg_stat_get_activity(NULL) a
            WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND a.backend_xid IS NOT NULL
           ) b ON b.behind <= 2147483648 -- ids after xmax(S) do not matter
     GROUP BY s.xmax
$$;

---- create above / drop below ----
DROP FUNCTION ledger_horizon;
DROP FUNCTION ledger_append;
DROP TABLE events;
