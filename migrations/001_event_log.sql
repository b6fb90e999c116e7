-- The append-only event log (DESIGN §2). One row per verified Stripe event,
-- never updated or deleted by the application.
CREATE TABLE events (
    global_position bigint      PRIMARY KEY,
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

-- CACHE 1 (the default, spelled out because gap safety depends on it): with a
-- per-session cache, two sessions would hold interleaved ranges of positions,
-- and taking the append lock would no longer hand them out in commit order.
CREATE SEQUENCE events_global_position_seq CACHE 1 OWNED BY events.global_position;

-- ledger_append stores one event and reports (duplicate, stream_version, global_position).
-- Every append takes the same transaction-scoped advisory lock, so appends
-- commit in global_position order: a reader that has seen position P can
-- never later meet a newly committed row at or below P (DESIGN §2): the
-- position is drawn under the lock, and PostgreSQL makes a commit visible
-- before it releases the transaction's locks. Call it as a statement of its
-- own (an implicit transaction) so the lock is held no longer than needed.
-- It needs READ COMMITTED, where each statement below sees the appends
-- committed before the lock was granted; under a transaction-wide snapshot
-- taken earlier it would miss them (a duplicate not reported as such, a
-- stale stream version), so it refuses to run there.
CREATE FUNCTION ledger_append(
    p_event_id text, p_stream text, p_type text, p_api_version text,
    p_created timestamptz, p_account text, p_payload bytea, p_signature text,
    OUT duplicate boolean, OUT stream_version bigint, OUT global_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_prev bytea;
    v_sha  bytea := sha256(p_payload);
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'ledger_append needs READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    PERFORM pg_advisory_xact_lock(7226053401); -- 'ledger events' append lock
    SELECT e.stream_version, e.global_position INTO stream_version, global_position
      FROM events e WHERE e.event_id = p_event_id;
    IF FOUND THEN
        duplicate := true;
        RETURN;
    END IF;
    duplicate := false;
    SELECT e.stream_version + 1, e.hash INTO stream_version, v_prev
      FROM events e WHERE e.stream = p_stream
     ORDER BY e.stream_version DESC LIMIT 1;
    IF NOT FOUND THEN
        stream_version := 0;
        v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    END IF;
    global_position := nextval('events_global_position_seq');
    INSERT INTO events (global_position, event_id, stream, stream_version, type, api_version,
                        created, account, payload, signature, payload_sha256, prev_hash, hash)
    VALUES (global_position, p_event_id, p_stream, stream_version, p_type, p_api_version,
            p_created, p_account, p_payload, p_signature, v_sha, v_prev, sha256(v_prev || v_sha));
    PERFORM pg_notify('ledger_events', global_position::text);
END
$$;

---- create above / drop below ----
DROP FUNCTION ledger_append;
DROP TABLE events;
