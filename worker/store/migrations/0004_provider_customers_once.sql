-- One provider customer per (customer, connection) (SPEC §12), pushes in order, stable customer ids.

-- The customer as the create job will send it, fixed when the job is written: a retried idempotency key always
-- carries the same parameters (SPEC §9). NULL for jobs written before this migration and for other kinds.
ALTER TABLE provider_jobs ADD COLUMN request jsonb;

-- At most one create in hand per customer and connection. Older duplicates (written before this index) are merged
-- into the first one: the first create links the customer, and the update pushed after it carries the latest fields.
UPDATE provider_jobs AS j
   SET status = 'skipped', lease_until = NULL, last_error = '{"skipped": "merged_into_pending_create"}', updated_at = now()
 WHERE j.kind = 'create' AND j.status IN ('pending', 'running')
   AND EXISTS (SELECT 1 FROM provider_jobs AS o
                WHERE o.customer_id = j.customer_id AND o.connection_code = j.connection_code
                  AND o.kind = 'create' AND o.status IN ('pending', 'running') AND o.id < j.id);
CREATE UNIQUE INDEX provider_jobs_one_create_idx ON provider_jobs (customer_id, connection_code)
    WHERE kind = 'create' AND status IN ('pending', 'running');

-- The claim takes a customer's jobs one at a time, oldest first: this finds a customer's jobs in hand.
CREATE INDEX provider_jobs_customer_active_idx ON provider_jobs (customer_id, id) WHERE status IN ('pending', 'running');

-- The key of the customer ids (a keyed PRF of the creating command, see worker/ids.py): 32 bytes from
-- PostgreSQL's strong random source, drawn once per database.
CREATE TABLE id_keys (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
INSERT INTO id_keys (name, value) VALUES ('customer_ids', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
