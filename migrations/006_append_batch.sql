-- Group commit: this migration created ledger_append_batch, which stores
-- several events in one transaction, and rewrote ledger_horizon in
-- PL/pgSQL. Both are defined in functions.sql now; the migration keeps its
-- number (databases have it applied) and changes no schema, but tern wants
-- a statement.
SELECT;

---- create above / drop below ----
SELECT;
