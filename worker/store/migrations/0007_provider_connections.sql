-- Provider jobs wait instead of failing (SPEC §9, settled 2026-12-06): connection state shared by every replica,
-- fair claims per connection, the search window after a dead end, operator cancel.

-- One row per connection that has been anything but working. `credentials_refused`: a 401/403 paused every job
-- of the connection on every replica until a test call succeeds (`paused_until`: when the next test call is due).
-- `rate_limited`: a 429; no job of the connection is claimed before `paused_until` (its Retry-After).
CREATE TABLE provider_connections (
    organization_id  text NOT NULL,
    code             text NOT NULL,
    state            text NOT NULL DEFAULT 'working'
                     CHECK (state IN ('working', 'credentials_refused', 'rate_limited')),
    paused_until     timestamptz,
    last_error_code  text,
    since            timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, code)
);

-- A dead end (SPEC §12) creates under a derived key only after search has missed for a whole window: when the
-- first miss was, and how many there were.
ALTER TABLE provider_jobs ADD COLUMN search_missed_since timestamptz;
ALTER TABLE provider_jobs ADD COLUMN search_misses integer NOT NULL DEFAULT 0;
-- Attempts that ended through a fault of the worker (a crash or lost lease, an internal error), not of the
-- provider: only these are bounded (PROVIDER_MAX_ATTEMPTS). Waiting on the provider is not.
ALTER TABLE provider_jobs ADD COLUMN worker_faults integer NOT NULL DEFAULT 0;

-- The fair claim takes each connection's due jobs in turn; the metrics read each connection's oldest open job.
CREATE INDEX provider_jobs_connection_due_idx ON provider_jobs (organization_id, connection_code, next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX provider_jobs_connection_open_idx ON provider_jobs (organization_id, connection_code, id)
    WHERE status IN ('pending', 'running');
CREATE INDEX provider_jobs_open_age_idx ON provider_jobs (created_at) WHERE status IN ('pending', 'running');

-- An operator may cancel a waiting job (`cancelled`); it is pruned like the other finished jobs.
DROP INDEX provider_jobs_finished_idx;
CREATE INDEX provider_jobs_finished_idx ON provider_jobs (updated_at)
    WHERE status IN ('done', 'skipped', 'failed', 'cancelled');
