-- Where each dead-lettered event sits in its stream, so that
-- `ledger projections retry` can read it back on either event-log backend.
-- NULL for dead letters recorded before this migration (a rebuild re-drives those).
ALTER TABLE projection_dead_letters ADD COLUMN stream text, ADD COLUMN stream_version bigint;

---- create above / drop below ----
ALTER TABLE projection_dead_letters DROP COLUMN stream, DROP COLUMN stream_version;
