-- The read model tables of one projection version, created in their own
-- schema ({{schema}} is replaced by the builder). The live version is exposed
-- to readers through the views of the readmodel schema, which a rebuild
-- repoints in one transaction. Every *_event_* column is what the convergence
-- rules (DESIGN §4) compare, and subscriptions.snapshots holds the snapshots
-- the current one was chosen from, so a state loaded from these rows folds
-- exactly like one kept in memory. Every object is keyed by (account, id):
-- account is the Connect account, '' for the platform (DESIGN §4).
CREATE TABLE {{schema}}.customers (
    account            text        NOT NULL,
    customer_id        text        NOT NULL,
    email              text        NOT NULL DEFAULT '',
    name               text        NOT NULL DEFAULT '',
    deleted            boolean     NOT NULL DEFAULT false,
    plan               text        NOT NULL,
    entitled           boolean     NOT NULL,
    access_until       timestamptz,
    updated_at         timestamptz NOT NULL,
    last_event_id      text        NOT NULL DEFAULT '',
    last_event_created timestamptz,
    PRIMARY KEY (account, customer_id)
);

CREATE TABLE {{schema}}.subscriptions (
    account              text        NOT NULL,
    subscription_id      text        NOT NULL,
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
    cancel_at            timestamptz,
    canceled_at          timestamptz,
    ended_at             timestamptz,
    trial_end            timestamptz,
    latest_invoice_id    text        NOT NULL,
    items                text        NOT NULL,
    deleted              boolean     NOT NULL,
    previous_attributes  jsonb,
    last_event_id        text        NOT NULL,
    last_event_created   timestamptz NOT NULL,
    snapshots            jsonb       NOT NULL,
    PRIMARY KEY (account, subscription_id)
);
CREATE INDEX ON {{schema}}.subscriptions (account, customer_id);

CREATE TABLE {{schema}}.invoices (
    account            text        NOT NULL,
    invoice_id         text        NOT NULL,
    customer_id        text        NOT NULL,
    subscription_id    text        NOT NULL,
    status             text        NOT NULL,
    snapshot_status    text        NOT NULL, -- once a payment marked it paid: its own snapshot's status; else ''
    amount_due         bigint      NOT NULL,
    amount_paid        bigint      NOT NULL,
    currency           text        NOT NULL,
    period_start       timestamptz,
    period_end         timestamptz,
    paid_at            timestamptz,
    attempt_count      bigint      NOT NULL,
    paid_period_start  timestamptz,
    paid_period_end    timestamptz,
    payment            jsonb,                -- the invoice_payment.paid events merged (domain.InvoicePayment); NULL when none
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (account, invoice_id)
);
CREATE INDEX ON {{schema}}.invoices (account, customer_id);

CREATE TABLE {{schema}}.charges (
    account            text        NOT NULL,
    charge_id          text        NOT NULL,
    customer_id        text        NOT NULL,
    invoice_id         text        NOT NULL,
    currency           text        NOT NULL,
    amount             bigint      NOT NULL,
    amount_refunded    bigint      NOT NULL,
    refunded           boolean     NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (account, charge_id)
);
CREATE INDEX ON {{schema}}.charges (account, customer_id);

CREATE TABLE {{schema}}.disputes (
    account            text        NOT NULL,
    dispute_id         text        NOT NULL,
    customer_id        text        NOT NULL,
    charge_id          text        NOT NULL,
    status             text        NOT NULL,
    currency           text        NOT NULL,
    amount             bigint      NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (account, dispute_id)
);
CREATE INDEX ON {{schema}}.disputes (account, customer_id);

-- The Stripe API versions of the events folded (ledger projections status
-- lists those the decoder was not tested with), each with its least event id.
CREATE TABLE {{schema}}.api_versions (
    api_version    text PRIMARY KEY,
    tested         boolean NOT NULL,
    first_event_id text    NOT NULL
);
-- Links (DESIGN §8; projections/links.go): object -> customer from the
-- events that name both; object -> stream for the streams of events that
-- name no customer; dispute snapshots waiting for their charge's link, and
-- invoice payments (API 2025-03-31+) waiting for their invoice's.
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

CREATE TABLE {{schema}}.pending_invoice_payments (
    account            text        NOT NULL,
    event_id           text        NOT NULL,
    invoice_id         text        NOT NULL,
    invoice_payment_id text        NOT NULL,
    amount_paid        bigint      NOT NULL,
    currency           text        NOT NULL,
    paid_at            timestamptz,
    last_event_created timestamptz NOT NULL,
    PRIMARY KEY (account, event_id)
);
CREATE INDEX ON {{schema}}.pending_invoice_payments (account, invoice_id);
