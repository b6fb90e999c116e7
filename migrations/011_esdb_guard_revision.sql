-- The EventStoreDB backend's dedup guard (003) records, for a pending claim,
-- the stream revision its append expects (-1: no stream yet). Every attempt
-- of the event appends expecting that revision, so an attempt that was
-- abandoned and lands late is recognised by the server as the same write
-- instead of being stored again after a later revision; the guard moves it
-- only once another event has taken the place after it. See the package
-- documentation of eventlog/esdb.
ALTER TABLE esdb_event_ids ADD COLUMN expected_revision bigint CHECK (expected_revision >= -1);

-- Head and CountAfter of the esdb backend answer from the committed rows'
-- $all positions instead of scanning $all.
CREATE INDEX esdb_event_ids_position ON esdb_event_ids (commit_position, prepare_position) WHERE state = 'committed';

---- create above / drop below ----
DROP INDEX esdb_event_ids_position;
ALTER TABLE esdb_event_ids DROP COLUMN expected_revision;
