-- Projection bookkeeping. Each projection version keeps its tables in a schema
-- of its own (see projections/readmodel.go); readers go through the views of
-- the readmodel schema, which point at the live version.
CREATE SCHEMA readmodel;

-- One row per projection: the live version, the schema that holds it, and the
-- position of the last event applied to it. Advanced in the same transaction
-- as the read-model writes, by compare-and-set on the previous position.
CREATE TABLE projection_checkpoints (
    name        text        PRIMARY KEY,
    version     integer     NOT NULL,
    schema_name text        NOT NULL,
    position    bigint      NOT NULL DEFAULT 0,
    prepare     bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Events a projection could not apply: which event, which error, recorded in
-- the same transaction as the batch that skipped them. They belong to the
-- schema (projection build) that met them and are deleted with it; see the
-- projections package for the policy.
CREATE TABLE projection_dead_letters (
    projection  text        NOT NULL,
    version     integer     NOT NULL,
    schema_name text        NOT NULL,
    event_id    text        NOT NULL,
    position    bigint      NOT NULL,
    prepare     bigint      NOT NULL,
    event_type  text        NOT NULL,
    error       text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (schema_name, event_id)
);

---- create above / drop below ----
DROP TABLE projection_dead_letters;
DROP TABLE projection_checkpoints;
DROP SCHEMA readmodel CASCADE;
