-- The exact dedup guard of the EventStoreDB event-log backend (eventlog/esdb).
-- EventStoreDB's own idempotency covers only recent retries to the same
-- stream, so every Stripe event id the backend stores is claimed here first:
-- 'pending' before the append to EventStoreDB, 'committed' with the stored
-- revision and $all position after it. attempts counts the appends that
-- claimed the id; a pending row with attempts > 1 means an earlier attempt
-- may have reached EventStoreDB, so the next one looks there before appending.
-- See the package documentation of eventlog/esdb for the whole protocol.
CREATE TABLE esdb_event_ids (
    event_id         text        PRIMARY KEY,
    stream           text        NOT NULL,
    event_uuid       uuid        NOT NULL UNIQUE,
    state            text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'committed')),
    attempts         integer     NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    stream_revision  bigint,
    commit_position  bigint,
    prepare_position bigint,
    claimed_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    committed_at     timestamptz,
    CHECK ((state = 'committed') = (stream_revision IS NOT NULL AND commit_position IS NOT NULL
                                    AND prepare_position IS NOT NULL AND committed_at IS NOT NULL))
);

-- Pending rows are the ones a recovery has to look at.
CREATE INDEX esdb_event_ids_pending ON esdb_event_ids (claimed_at) WHERE state = 'pending';

---- create above / drop below ----
DROP TABLE esdb_event_ids;
