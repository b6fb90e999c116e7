-- Group commit: ledger_append_batch stores several events in one transaction,
-- so that concurrent deliveries share one commit and one WAL flush
-- (eventlog/postgres gathers them; a lone event still goes through
-- ledger_append, which does less work for one). It keeps every rule of
-- ledger_append (005_event_source.sql):
--
-- - It must be the first write of a READ COMMITTED transaction, and takes
--   every stream lock before writing anything (before the transaction has an
--   id), in ascending key order, so that concurrent batches cannot deadlock
--   and each stream's versions still come in the global read order.
-- - Events are stored in array order, one global_position each: the rows of
--   one batch share tx and are ordered by global_position.
-- - An event id already stored, by an earlier transaction or earlier in the
--   same batch, is reported as a duplicate with the stored copy's version and
--   position. An id stored concurrently under another stream lock is found by
--   the unique index (ON CONFLICT) and reported the same way, without taking
--   a version of the stream.
--
-- One row per input event, with its 1-based index in ord.
CREATE FUNCTION ledger_append_batch(
    p_event_ids text[], p_streams text[], p_types text[], p_api_versions text[],
    p_created timestamptz[], p_accounts text[], p_payloads bytea[], p_signatures text[], p_sources text[])
RETURNS TABLE (ord bigint, duplicate boolean, stream_version bigint, tx xid8, global_position bigint)
-- Custom plans would be re-planned on every call (their estimates know the
-- array lengths), which cost more than the appends themselves.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_key  integer;
    v_prev bytea;
    v_sha  bytea;
    r      record;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'ledger_append_batch needs READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'ledger_append_batch must be the first write of its transaction'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    -- Stripe retries deliveries: streams whose events are all stored already
    -- are not locked, so a retry does not wait behind that stream's appends.
    FOR v_key IN
        SELECT DISTINCT hashtext(b.stream) FROM unnest(p_event_ids, p_streams) AS b(event_id, stream)
         WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = b.event_id)
         ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(1279612500, v_key); -- 0x4c455654 'LEVT', as ledger_append
    END LOOP;
    FOR r IN
        SELECT * FROM unnest(p_event_ids, p_streams, p_types, p_api_versions, p_created, p_accounts, p_payloads, p_signatures, p_sources)
               WITH ORDINALITY AS b(event_id, stream, type, api_version, created, account, payload, signature, source, ord)
    LOOP
        ord := r.ord;
        duplicate := true;
        SELECT e.stream_version, e.tx, e.global_position INTO stream_version, tx, global_position
          FROM events e WHERE e.event_id = r.event_id;
        IF FOUND THEN
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT e.stream_version + 1, e.hash INTO stream_version, v_prev
          FROM events e WHERE e.stream = r.stream
         ORDER BY e.stream_version DESC LIMIT 1;
        IF NOT FOUND THEN
            stream_version := 0;
            v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
        END IF;
        v_sha := sha256(r.payload);
        -- nextval may assign the transaction id (when it WAL-logs): after the locks.
        global_position := nextval('events_global_position_seq');
        INSERT INTO events AS e (global_position, event_id, stream, stream_version, type, api_version,
                            created, account, payload, signature, source, payload_sha256, prev_hash, hash)
        VALUES (global_position, r.event_id, r.stream, stream_version, r.type, r.api_version,
                r.created, r.account, r.payload, r.signature, r.source, v_sha, v_prev, sha256(v_prev || v_sha))
        ON CONFLICT (event_id) DO NOTHING
        RETURNING e.tx INTO tx;
        IF FOUND THEN
            duplicate := false;
        ELSE
            -- Appended concurrently and committed while this insert waited on the index.
            SELECT e.stream_version, e.tx, e.global_position INTO STRICT stream_version, tx, global_position
              FROM events e WHERE e.event_id = r.event_id;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- ledger_horizon (001_event_log.sql), unchanged in meaning, in PL/pgSQL: a
-- SQL function that cannot be inlined is planned afresh on every call, and
-- the planning cost more than the answer. Subscribers call it after every
-- commit they are notified of.
CREATE OR REPLACE FUNCTION ledger_horizon() RETURNS xid8
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::numeric AS xmax)
        SELECT (s.xmax - coalesce(max(b.behind), 0))::text::xid8
          FROM s LEFT JOIN LATERAL (
               SELECT mod(mod(s.xmax, 4294967296) - a.backend_xid::text::numeric + 4294967296, 4294967296) AS behind
                 FROM pg_stat_get_activity(NULL) a
                WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND a.backend_xid IS NOT NULL
               ) b ON b.behind <= 2147483648 -- ids after xmax(S) do not matter
         GROUP BY s.xmax);
END
$$;

---- create above / drop below ----
-- ledger_horizon keeps its PL/pgSQL form: it means the same.
DROP FUNCTION ledger_append_batch;
