-- Events the broker refused for good (SPEC §12: too large, invalid), moved aside from the outbox so that the relay
-- goes on with the rows behind them. `customer-worker outbox republish` moves them back into the outbox.
CREATE TABLE parked_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id   bigint NOT NULL,
    event_id    uuid NOT NULL,
    event_key   text NOT NULL,
    event_type  text NOT NULL,
    traceparent text,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL,
    error       text NOT NULL
);
CREATE INDEX parked_events_reason_idx ON parked_events (reason, id);
