-- Provenance (DESIGN §10): how the ledger came to hold each record. Every
-- record stored before this migration was a verified webhook delivery.
-- Only webhook deliveries and thin-event notifications carry a
-- Stripe-Signature; events fetched from Stripe's API (backfill, reconcile's
-- observed snapshots, a thin event's snapshot) have none, by design.
ALTER TABLE events ADD COLUMN source text NOT NULL DEFAULT 'webhook'
    CHECK (source IN ('webhook', 'backfill', 'reconcile', 'thin'));

-- ledger_append (functions.sql) stores it; this migration gave it p_source.

---- create above / drop below ----
-- Not reversible: dropping the column would erase the provenance of records
-- the log promises never to alter.
DO $$ BEGIN
    RAISE EXCEPTION 'migration 005 (events.source) cannot be reverted: it would erase the records'' provenance';
END $$;
