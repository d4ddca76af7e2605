-- The Schema Registry id of a framed command (SPEC §12), published as the `schema-id` header of the command's
-- answer; NULL for unframed values. bigint: the frame's 4 id bytes are read unsigned, and any 4 bytes must store.
-- Parked events keep it, so that a republished event still carries it.
ALTER TABLE outbox ADD COLUMN schema_id bigint;
ALTER TABLE parked_events ADD COLUMN schema_id bigint;
