-- Bookkeeping of the ledger's reads from Stripe's API (DESIGN §10). The
-- events themselves go into the event log; these tables only say what is
-- still to be fetched, and where an interrupted backfill stands.

-- Thin events (Stripe's event notifications) awaiting the fetch of what they
-- announce: the snapshot event, or the related object. A row is added by the
-- webhook after the notification is stored, before it answers 200; the
-- fetcher (ledger serve, or the next ledger backfill) sets fetched_at.
CREATE TABLE thin_events (
    event_id         text        PRIMARY KEY,
    account          text        NOT NULL DEFAULT '',
    snapshot_event   text        NOT NULL DEFAULT '',
    related_type     text        NOT NULL DEFAULT '',
    related_id       text        NOT NULL DEFAULT '',
    related_url      text        NOT NULL DEFAULT '',
    received_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text        NOT NULL DEFAULT '',
    fetched_at       timestamptz,
    fetched_event_id text        NOT NULL DEFAULT '' -- the event appended for it; empty when there was nothing to fetch
);
CREATE INDEX thin_events_pending ON thin_events (received_at) WHERE fetched_at IS NULL;

-- Backfill runs: the window a run covers (created >= created_gte, the types
-- asked for) and the cursor past which every listed event is stored, so that
-- a run interrupted half-way resumes where it stopped.
CREATE TABLE backfill_runs (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account        text        NOT NULL DEFAULT '',
    created_gte    timestamptz NOT NULL,
    types          text        NOT NULL DEFAULT '', -- comma-separated, sorted; empty: every type
    starting_after text        NOT NULL DEFAULT '', -- Stripe's cursor: the last event of the last finished page
    seen           bigint      NOT NULL DEFAULT 0,
    appended       bigint      NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz
);
CREATE INDEX backfill_runs_unfinished ON backfill_runs (account, types) WHERE finished_at IS NULL;

---- create above / drop below ----
DROP TABLE backfill_runs;
DROP TABLE thin_events;
