-- The outbox of notifications (DESIGN §12), derived by the billing
-- projection in the transaction of the read-model change. It lives outside
-- the projection's schemas on purpose: a rebuild re-derives the same ids
-- (projections/outbox.go), finds them here, and adds nothing, so the
-- delivery cursors below (positions) survive every rebuild.
-- Writers take positions under a transaction-scoped advisory lock held to
-- their commit, so positions become visible in order.
CREATE SEQUENCE notifications_position_seq;

CREATE TABLE notifications (
    position    bigint      PRIMARY KEY,
    id          text        NOT NULL UNIQUE,
    type        text        NOT NULL,
    account     text        NOT NULL,
    customer_id text        NOT NULL,
    event_ids   text[]      NOT NULL,
    occurred_at timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    derived_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX notifications_customer ON notifications (account, customer_id, position);

-- One row per push receiver (LEDGER_NOTIFY_URL, credentials redacted): the
-- position of the last notification it acknowledged with a 2xx, and the
-- state of the delivery it is failing, if any.
CREATE TABLE notification_receivers (
    receiver        text        PRIMARY KEY,
    position        bigint      NOT NULL DEFAULT 0,
    delivered       bigint      NOT NULL DEFAULT 0,
    failing_id      text        NOT NULL DEFAULT '',
    failing_since   timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    next_attempt_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Notifications a receiver refused for the whole retry window (3 days):
-- skipped so the rest flows, kept here for ledger notifications replay --id.
CREATE TABLE notification_abandoned (
    receiver        text        NOT NULL,
    notification_id text        NOT NULL,
    position        bigint      NOT NULL,
    error           text        NOT NULL,
    abandoned_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (receiver, notification_id)
);

---- create above / drop below ----
DROP TABLE notification_abandoned;
DROP TABLE notification_receivers;
DROP TABLE notifications;
DROP SEQUENCE notifications_position_seq;
