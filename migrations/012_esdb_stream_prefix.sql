-- The EventStoreDB stream prefix of this ledger (eventlog/esdb): the ledger's
-- streams are stored as <prefix><stream>, and its subscriptions select them
-- by that prefix, so the prefix must be this ledger's alone. The backend
-- writes it on first use (LEDGER_ESDB_STREAM_PREFIX, or a generated
-- stripe-ledger-<random>- default) and refuses to run with another: the
-- dedup guard's rows belong to the streams under it.
CREATE TABLE esdb_settings (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    stream_prefix text        NOT NULL CHECK (stream_prefix <> '' AND left(stream_prefix, 1) <> '$'),
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A guard that already holds events keeps the prefix they were written under.
INSERT INTO esdb_settings (stream_prefix) SELECT 'ledger-' WHERE EXISTS (SELECT FROM esdb_event_ids);

---- create above / drop below ----
DROP TABLE esdb_settings;
