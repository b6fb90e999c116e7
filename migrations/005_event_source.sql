-- Provenance (DESIGN §10): how the ledger came to hold each record. Every
-- record stored before this migration was a verified webhook delivery.
-- Only webhook deliveries and thin-event notifications carry a
-- Stripe-Signature; events fetched from Stripe's API (backfill, reconcile's
-- observed snapshots, a thin event's snapshot) have none, by design.
ALTER TABLE events ADD COLUMN source text NOT NULL DEFAULT 'webhook'
    CHECK (source IN ('webhook', 'backfill', 'reconcile', 'thin'));

-- ledger_append gains p_source (default webhook, so calls without it keep
-- their meaning); otherwise as in 001_event_log.sql.
DROP FUNCTION ledger_append(text, text, text, text, timestamptz, text, bytea, text);

CREATE FUNCTION ledger_append(
    p_event_id text, p_stream text, p_type text, p_api_version text,
    p_created timestamptz, p_account text, p_payload bytea, p_signature text, p_source text DEFAULT 'webhook',
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
                        created, account, payload, signature, source, payload_sha256, prev_hash, hash)
    VALUES (global_position, p_event_id, p_stream, stream_version, p_type, p_api_version,
            p_created, p_account, p_payload, p_signature, p_source, v_sha, v_prev, sha256(v_prev || v_sha))
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

---- create above / drop below ----
-- Not reversible: dropping the column would erase the provenance of records
-- the log promises never to alter.
DO $$ BEGIN
    RAISE EXCEPTION 'migration 005 (events.source) cannot be reverted: it would erase the records'' provenance';
END $$;
