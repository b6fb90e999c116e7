-- Seals (DESIGN §9), append-only like events (ledger_refuse_change of 004_append_only).
-- Seal n records, in seal_heads, the head (stream_version, hash) of every
-- stream that grew since seal n-1, up to position (commit_pos, prepare) of the
-- log, and chains to seal n-1:
--   hash = sha256(prev_hash || n || commit_pos || prepare || heads sorted by stream)
-- (the exact encoding is eventlog/seal's Seal.ComputeHash), prev_hash being
-- 32 zero bytes for seal 1. Ids are dense, so a removed seal leaves a gap
-- and breaks the chain; together the seals cover every stream's head.
-- They live in PostgreSQL whichever backend holds the log.
CREATE TABLE seals (
    seal_id    bigint      PRIMARY KEY,
    sealed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    commit_pos bigint      NOT NULL,
    prepare    bigint      NOT NULL,
    streams    bigint      NOT NULL, -- heads in seal_heads
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL UNIQUE
);

CREATE TABLE seal_heads (
    seal_id        bigint NOT NULL REFERENCES seals,
    stream         text   NOT NULL,
    stream_version bigint NOT NULL,
    hash           bytea  NOT NULL,
    PRIMARY KEY (seal_id, stream)
);

CREATE TRIGGER seals_append_only BEFORE UPDATE OR DELETE ON seals
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER seals_no_truncate BEFORE TRUNCATE ON seals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER seal_heads_append_only BEFORE UPDATE OR DELETE ON seal_heads
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER seal_heads_no_truncate BEFORE TRUNCATE ON seal_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

---- create above / drop below ----
DROP TABLE seal_heads;
DROP TABLE seals;
