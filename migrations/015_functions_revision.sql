-- Which revision of functions.sql (the ledger's SQL functions, see
-- migrations.go) this database has, and the SHA-256 of that file's text:
-- migrate applies the file when its binary's revision is newer, leaves a
-- newer one alone (an older replica of a rolling deploy), and refuses a
-- same-numbered revision with other text. Owned by migrations.
CREATE TABLE ledger_functions (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    revision   integer     NOT NULL CHECK (revision > 0),
    sha256     bytea       NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

---- create above / drop below ----
DROP TABLE ledger_functions;
