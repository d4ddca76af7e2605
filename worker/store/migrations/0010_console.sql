-- The operator console's tables (issue 20). Metadata only: no command value, no header value except the
-- allowlisted dlq-* facts, no personal data.

-- One row per record the worker wrote to the DLQ, recorded after the broker acknowledged the copy and before the
-- source offsets are committed; idempotent on the DLQ coordinates. `codes` and `paths` are the validation codes and
-- field paths when known; `organization_id` when the envelope could be read (never verified: a producer's claim).
CREATE TABLE dead_letters (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dlq_topic            text NOT NULL,
    dlq_partition        integer NOT NULL,
    dlq_offset           bigint NOT NULL,
    source_topic         text NOT NULL,
    source_partition     integer NOT NULL,
    source_offset        bigint NOT NULL,
    reason               text NOT NULL,
    codes                text[] NOT NULL DEFAULT '{}',
    paths                text[] NOT NULL DEFAULT '{}',
    organization_id      text,
    message_id           text,
    value_size           integer NOT NULL,
    value_sha256         bytea,
    truncated            boolean NOT NULL DEFAULT false,
    failed_at            timestamptz NOT NULL DEFAULT now(),
    replay_state         text NOT NULL DEFAULT 'new'
        CHECK (replay_state IN ('new', 'replayed', 'returned', 'skipped')),
    replayed_at          timestamptz,
    replay_job_id        bigint,
    returned_from_job_id bigint,
    returned_from_id     bigint,
    CONSTRAINT dead_letters_coordinates UNIQUE (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dead_letters_failed_idx ON dead_letters (failed_at DESC, id DESC);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, failed_at DESC, id DESC);
CREATE INDEX dead_letters_organization_idx ON dead_letters (organization_id, failed_at DESC, id DESC);
CREATE INDEX dead_letters_state_idx ON dead_letters (replay_state, failed_at DESC, id DESC);
CREATE INDEX dead_letters_codes_idx ON dead_letters USING gin (codes);

-- Counts per worker process: each process upserts only its own rows in its batch's transaction, so concurrent
-- batches of different processes never wait on each other's row locks. The console sums over worker_id.
CREATE TABLE rejection_counts (
    organization_id text NOT NULL,
    code            text NOT NULL,
    path            text NOT NULL,
    minute          timestamptz NOT NULL,
    worker_id       text NOT NULL,
    count           bigint NOT NULL,
    PRIMARY KEY (organization_id, code, path, minute, worker_id)
);
CREATE INDEX rejection_counts_minute_idx ON rejection_counts (minute);

CREATE TABLE answer_counts (
    minute    timestamptz NOT NULL,
    outcome   text NOT NULL,
    worker_id text NOT NULL,
    count     bigint NOT NULL,
    PRIMARY KEY (minute, outcome, worker_id)
);

CREATE TABLE workers_seen (
    worker_id    text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    partitions   integer[] NOT NULL DEFAULT '{}',
    version      text NOT NULL
);

-- An operator's bulk action, run by a JobRunner (the console's, or the CLI's in-process): claimed with a lease,
-- resumed by another runner when the lease runs out. `selection` is frozen at start: explicit ids, or a filter
-- with `max_id` (rows written afterwards, e.g. records a replay sent straight back to the DLQ, are never in it).
CREATE TABLE operator_jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL
        CHECK (kind IN ('dlq_replay', 'parked_republish', 'provider_jobs_retry', 'provider_jobs_cancel')),
    filter          jsonb NOT NULL,
    selection       jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'cancelled', 'failed')),
    total           integer NOT NULL,
    done_count      integer NOT NULL DEFAULT 0,
    failed_count    integer NOT NULL DEFAULT 0,
    skipped_count   integer NOT NULL DEFAULT 0,
    returned_count  integer NOT NULL DEFAULT 0,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    lease_owner     text,
    lease_until     timestamptz,
    rate_per_second double precision NOT NULL,
    last_error      text
);
CREATE INDEX operator_jobs_open_idx ON operator_jobs (id) WHERE state IN ('pending', 'running');
CREATE INDEX operator_jobs_created_idx ON operator_jobs (created_at DESC, id DESC);

CREATE TABLE operator_job_items (
    job_id  bigint NOT NULL REFERENCES operator_jobs (id) ON DELETE CASCADE,
    item_id bigint NOT NULL,
    result  text NOT NULL CHECK (result IN ('sent', 'failed', 'skipped', 'returned')),
    detail  text,
    at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, item_id)
);

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    role        text NOT NULL,
    action      text NOT NULL,
    filter      jsonb NOT NULL DEFAULT '{}',
    count       integer,
    outcome     text NOT NULL CHECK (outcome IN ('done', 'refused', 'failed', 'started')),
    remote_addr text,
    job_id      bigint
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);
