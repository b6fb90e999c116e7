-- The ledger's SQL functions as they are now, each defined here only; the
-- numbered migrations hold the schema. migrations.Migrate runs this file
-- after them, in one transaction, on a database whose ledger_functions
-- records an older revision than functionsRevision (migrations.go): bump
-- that with every change here. Every statement is idempotent (CREATE OR
-- REPLACE, DROP … IF EXISTS), and a function whose arguments or result
-- change drops its old form here first, as ledger_append's below. No numbered
-- migration may call these functions: they are created after them.
-- Trigger functions stay in the migration that creates their triggers
-- (ledger_refuse_change, 004_append_only.sql). eventlog/postgres calls
-- them.

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
--
-- It is PL/pgSQL (since 006_append_batch.sql; 001 had it in SQL): a SQL
-- function that cannot be inlined is planned afresh on every call, and
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

-- ledger_append_guard refuses, for the function named caller, a transaction
-- an append cannot run in (see ledger_append: READ COMMITTED, and nothing
-- written before it).
CREATE OR REPLACE FUNCTION ledger_append_guard(caller text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '% needs READ COMMITTED, not %', caller, current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION '% must be the first write of its transaction', caller
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
END
$$;

-- ledger_append's form before p_source (migration 001 until 005 replaced
-- it): a database an older binary left at migration 001 to 004 still has it.
DROP FUNCTION IF EXISTS ledger_append(text, text, text, text, timestamptz, text, bytea, text);

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
--
-- p_source is the record's provenance (events.source, DESIGN §10); it
-- defaults to webhook, so calls without it keep their meaning.
CREATE OR REPLACE FUNCTION ledger_append(
    p_event_id text, p_stream text, p_type text, p_api_version text,
    p_created timestamptz, p_account text, p_payload bytea, p_signature text, p_source text DEFAULT 'webhook',
    OUT duplicate boolean, OUT stream_version bigint, OUT tx xid8, OUT global_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_prev bytea;
    v_sha  bytea := sha256(p_payload);
BEGIN
    PERFORM ledger_append_guard('ledger_append');
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

-- Group commit: ledger_append_batch stores several events in one transaction,
-- so that concurrent deliveries share one commit and one WAL flush
-- (eventlog/postgres gathers them; a lone event still goes through
-- ledger_append, which does less work for one). It keeps every rule of
-- ledger_append (above):
--
-- - It must be the first write of a READ COMMITTED transaction, and takes
--   every stream lock before writing anything (before the transaction has an
--   id), in ascending key order, so that concurrent batches cannot deadlock
--   and each stream's versions still come in the global read order.
-- - Events are stored in array order, one global_position each: the rows of
--   one batch share tx and are ordered by global_position.
-- - An event id already stored by an earlier transaction, or earlier in the
--   same batch, is reported as a duplicate with the stored copy's version
--   and position.
--
-- It looks each id up once, before the locks (revision 3; it used to look
-- again per event after them): a copy stored by then is the answer, as a
-- stored row never changes, and only the streams of the other events are
-- locked, so a retry does not wait behind a stream's appends. The lookup is
-- one scan of the event_id index for the batch's ids (= ANY), which returns
-- the stored ones only, usually none.
--
-- Since revision 4 the batch is one INSERT of all its new rows: the heads of
-- its streams are read once, after the locks, and each new event's version,
-- position and hash are worked out in PL/pgSQL arrays, in order, so that
-- several events of one stream chain onto each other. (Revision 3 ran an
-- INSERT … ON CONFLICT per event, each with its own executor start and head
-- lookup: a batch of four cost a backend more than four lone appends.) So
-- the insert has no ON CONFLICT: an id that another transaction, under
-- another stream's lock, stores between the lookup and the insert makes the
-- insert wait for that transaction on the event_id index and then fail with
-- unique_violation, the whole batch with it, and eventlog/postgres stores
-- the batch's events again one at a time (ledger_append, which answers that
-- one as a duplicate). Skipping the row instead would leave a gap in its
-- stream's versions, which the later events of the batch already took.
--
-- Revision 5 sorts nothing it does not have to: revision 4 gathered the
-- lookup into five ordered aggregates (a sort each) with a probe per id,
-- and the heads into two. Now the locks are one statement over the sorted
-- distinct keys, and the heads' aggregates are unordered: aggregates of one
-- query see its rows in the same order, so v_heads_of names the stream of
-- each v_next and v_heads. (callgrind of a backend, four events to four
-- streams: 5% fewer instructions per call than revision 4.)
--
-- One row per input event, with its 1-based index in ord.
CREATE OR REPLACE FUNCTION ledger_append_batch(
    p_event_ids text[], p_streams text[], p_types text[], p_api_versions text[],
    p_created timestamptz[], p_accounts text[], p_payloads bytea[], p_signatures text[], p_sources text[])
RETURNS TABLE (ord bigint, duplicate boolean, stream_version bigint, tx xid8, global_position bigint)
-- Custom plans would be re-planned on every call (their estimates know the
-- array lengths), which cost more than the appends themselves. The generic
-- plans stay in the connection's cache as events grows: planned while it was
-- near empty, revision 2's lock query was a hash anti join over a sequential
-- scan of events, which then read the whole log for every batch. Hence no
-- sequential scans here.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
    n                  integer := cardinality(p_event_ids);
    v_stored           text[];    -- the ids stored before this call (usually none)
    v_stored_versions  bigint[];  -- and their copies' versions, txs and positions
    v_stored_txs       xid8[];
    v_stored_positions bigint[];
    -- Per event, filled at 1..n, not grown from null: unnest ignores an
    -- array's lower bound.
    v_versions         bigint[] := array_fill(NULL::bigint, ARRAY[n]); -- the stored copy's, or the one it takes
    v_txs              xid8[] := array_fill(NULL::xid8, ARRAY[n]);     -- the stored copy's, else null
    v_positions        bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_firsts           integer[] := array_fill(NULL::integer, ARRAY[n]); -- where its id first occurs in the batch
    v_shas             bytea[] := array_fill(NULL::bytea, ARRAY[n]);   -- null unless it is stored now
    v_prevs            bytea[] := v_shas;
    v_hashes           bytea[] := v_shas;
    v_streams          text[] := p_streams; -- the streams of the events not stored yet
    v_heads_of         text[];    -- each stream of v_streams (as often) with
    v_next             bigint[];  -- its next version
    v_heads            bytea[];   -- and the hash of its last record
    v_tx               xid8;
    j                  integer;
BEGIN
    PERFORM ledger_append_guard('ledger_append_batch');
    SELECT array_agg(e.event_id), array_agg(e.stream_version), array_agg(e.tx), array_agg(e.global_position)
      INTO v_stored, v_stored_versions, v_stored_txs, v_stored_positions
      FROM events e WHERE e.event_id = ANY (p_event_ids);
    IF v_stored IS NOT NULL THEN
        v_streams := NULL;
        FOR i IN 1..n LOOP
            j := array_position(v_stored, p_event_ids[i]);
            IF j IS NULL THEN
                v_streams := v_streams || p_streams[i];
            ELSE
                v_versions[i] := v_stored_versions[j];
                v_txs[i] := v_stored_txs[j];
                v_positions[i] := v_stored_positions[j];
            END IF;
        END LOOP;
    END IF;
    IF v_streams IS NOT NULL THEN
        -- Evaluated in the sorted subquery's order.
        PERFORM pg_advisory_xact_lock(1279612500, keys.k) -- 0x4c455654 'LEVT', as ledger_append
           FROM (SELECT DISTINCT hashtext(s.stream) AS k FROM unnest(v_streams) AS s(stream) ORDER BY 1) AS keys;
        SELECT array_agg(s.stream), array_agg(coalesce(h.next_version, 0)),
               array_agg(coalesce(h.hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea))
          INTO v_heads_of, v_next, v_heads
          FROM unnest(v_streams) AS s(stream)
          LEFT JOIN LATERAL (SELECT l.stream_version + 1 AS next_version, l.hash FROM events l
                              WHERE l.stream = s.stream ORDER BY l.stream_version DESC LIMIT 1) AS h ON true;
        FOR i IN 1..n LOOP
            v_firsts[i] := array_position(p_event_ids, p_event_ids[i]);
            CONTINUE WHEN v_txs[i] IS NOT NULL OR v_firsts[i] < i;
            j := array_position(v_heads_of, p_streams[i]);
            v_versions[i] := v_next[j];
            v_next[j] := v_next[j] + 1;
            v_shas[i] := sha256(p_payloads[i]);
            v_prevs[i] := v_heads[j];
            v_hashes[i] := sha256(v_heads[j] || v_shas[i]);
            v_heads[j] := v_hashes[i];
            -- nextval may assign the transaction id (when it WAL-logs): after the locks.
            v_positions[i] := nextval('events_global_position_seq');
        END LOOP;
        INSERT INTO events (global_position, event_id, stream, stream_version, type, api_version,
                            created, account, payload, signature, source, payload_sha256, prev_hash, hash)
        SELECT b.global_position, b.event_id, b.stream, b.stream_version, b.type, b.api_version,
               b.created, b.account, b.payload, b.signature, b.source, b.sha, b.prev, b.hash
          FROM unnest(p_event_ids, p_streams, p_types, p_api_versions, p_created, p_accounts, p_payloads, p_signatures,
                      p_sources, v_positions, v_versions, v_shas, v_prevs, v_hashes)
               AS b(event_id, stream, type, api_version, created, account, payload, signature,
                    source, global_position, stream_version, sha, prev, hash)
         WHERE b.sha IS NOT NULL;
        v_tx := pg_current_xact_id();
    END IF;
    FOR i IN 1..n LOOP
        ord := i;
        j := CASE WHEN v_txs[i] IS NOT NULL THEN i ELSE v_firsts[i] END; -- stored before: its copy's
        duplicate := j < i OR v_txs[i] IS NOT NULL;
        stream_version := v_versions[j];
        tx := coalesce(v_txs[j], v_tx);
        global_position := v_positions[j];
        RETURN NEXT;
    END LOOP;
END
$$;
