-- The read model tables of one projection version, created in their own
-- schema ({{schema}} is replaced by the builder). The live version is exposed
-- to readers through the views of the readmodel schema, which a rebuild
-- repoints in one transaction. Every *_event_* column is what the convergence
-- rules (DESIGN §4) compare, so a state loaded from these rows folds exactly
-- like one kept in memory.
CREATE TABLE {{schema}}.customers (
    customer_id        text PRIMARY KEY,
    email              text        NOT NULL DEFAULT '',
    name               text        NOT NULL DEFAULT '',
    deleted            boolean     NOT NULL DEFAULT false,
    plan               text        NOT NULL,
    entitled           boolean     NOT NULL,
    access_until       timestamptz,
    updated_at         timestamptz NOT NULL,
    last_event_id      text        NOT NULL DEFAULT '',
    last_event_created timestamptz
);

CREATE TABLE {{schema}}.subscriptions (
    subscription_id      text PRIMARY KEY,
    customer_id          text        NOT NULL,
    status               text        NOT NULL,
    price_id             text        NOT NULL,
    product_id           text        NOT NULL,
    lookup_key           text        NOT NULL,
    plan                 text        NOT NULL,
    quantity             bigint      NOT NULL,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    cancel_at_period_end boolean     NOT NULL,
    canceled_at          timestamptz,
    ended_at             timestamptz,
    trial_end            timestamptz,
    deleted              boolean     NOT NULL,
    last_event_id        text        NOT NULL,
    last_event_created   timestamptz NOT NULL
);
CREATE INDEX ON {{schema}}.subscriptions (customer_id);

CREATE TABLE {{schema}}.invoices (
    invoice_id         text PRIMARY KEY,
    customer_id        text        NOT NULL,
    subscription_id    text        NOT NULL,
    status             text        NOT NULL,
    amount_due         bigint      NOT NULL,
    amount_paid        bigint      NOT NULL,
    currency           text        NOT NULL,
    period_start       timestamptz,
    period_end         timestamptz,
    paid_at            timestamptz,
    attempt_count      bigint      NOT NULL,
    paid_period_start  timestamptz,
    paid_period_end    timestamptz,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX ON {{schema}}.invoices (customer_id);

CREATE TABLE {{schema}}.charges (
    charge_id          text PRIMARY KEY,
    customer_id        text        NOT NULL,
    invoice_id         text        NOT NULL,
    currency           text        NOT NULL,
    amount             bigint      NOT NULL,
    amount_refunded    bigint      NOT NULL,
    refunded           boolean     NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX ON {{schema}}.charges (customer_id);

CREATE TABLE {{schema}}.disputes (
    dispute_id         text PRIMARY KEY,
    customer_id        text        NOT NULL,
    charge_id          text        NOT NULL,
    status             text        NOT NULL,
    currency           text        NOT NULL,
    amount             bigint      NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL
);
CREATE INDEX ON {{schema}}.disputes (customer_id);

-- Links (DESIGN §8; projections/links.go): object -> customer from the
-- events that name both; object -> stream for the streams of events that
-- name no customer; dispute snapshots waiting for their charge's link.
CREATE TABLE {{schema}}.links (
    account     text NOT NULL,
    object_id   text NOT NULL,
    customer_id text NOT NULL,
    PRIMARY KEY (account, object_id)
);
CREATE INDEX ON {{schema}}.links (account, customer_id);

CREATE TABLE {{schema}}.stream_links (
    account   text NOT NULL,
    object_id text NOT NULL,
    stream    text NOT NULL,
    PRIMARY KEY (account, object_id, stream)
);

CREATE TABLE {{schema}}.pending_disputes (
    account            text        NOT NULL,
    event_id           text        NOT NULL,
    charge_id          text        NOT NULL,
    dispute_id         text        NOT NULL,
    status             text        NOT NULL,
    currency           text        NOT NULL,
    amount             bigint      NOT NULL,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (account, event_id)
);
CREATE INDEX ON {{schema}}.pending_disputes (account, charge_id);
