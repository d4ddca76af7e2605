-- Customers, the inbox of processed message ids, the event outbox and provider jobs.

CREATE TABLE customers (
    id                           uuid PRIMARY KEY,
    organization_id              text NOT NULL,
    external_id                  text NOT NULL,
    name                         text,
    firstname                    text,
    lastname                     text,
    legal_name                   text,
    legal_number                 text,
    tax_identification_number    text,
    phone                        text,
    url                          text,
    logo_url                     text,
    email                        text,
    address_line1                text,
    address_line2                text,
    city                         text,
    zipcode                      text,
    state                        text,
    country                      text,
    currency                     text,
    timezone                     text,
    customer_type                text,
    net_payment_term             integer,
    finalize_zero_amount_invoice text NOT NULL DEFAULT 'inherit',
    invoice_grace_period         integer,
    document_locale              text,
    payment_provider             text,
    payment_provider_code        text,
    provider_customer_id         text,
    provider_payment_methods     jsonb,
    shipping_address_line1       text,
    shipping_address_line2       text,
    shipping_city                text,
    shipping_zipcode             text,
    shipping_state               text,
    shipping_country             text,
    tax_codes                    jsonb NOT NULL DEFAULT '[]',
    metadata                     jsonb NOT NULL DEFAULT '[]',
    high_water_mark              timestamptz,
    created_at                   timestamptz NOT NULL,
    updated_at                   timestamptz NOT NULL,
    CONSTRAINT customers_organization_external_id_key UNIQUE (organization_id, external_id)
);

-- SPEC §5: a command is applied at most once per (organization_id, message_id).
CREATE TABLE processed_messages (
    organization_id text NOT NULL,
    message_id      text NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, message_id)
);
CREATE INDEX processed_messages_processed_at_idx ON processed_messages (processed_at);

-- Transactional outbox: rows are written with the customer and published by the relay in id order.
CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid NOT NULL,
    event_key   text NOT NULL,
    event_type  text NOT NULL,
    traceparent text,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE provider_jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  text NOT NULL,
    customer_id      uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    message_id       text NOT NULL,
    kind             text NOT NULL,
    provider         text NOT NULL,
    connection_code  text NOT NULL,
    traceparent      text,
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_error       jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provider_jobs_once UNIQUE (organization_id, message_id, kind)
);
CREATE INDEX provider_jobs_ready_idx ON provider_jobs (next_attempt_at) WHERE status = 'pending';
