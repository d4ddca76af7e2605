-- The provider job runner's sweep of expired leases and the pruning of finished jobs use these.
CREATE INDEX provider_jobs_lease_idx ON provider_jobs (lease_until) WHERE status = 'running';
CREATE INDEX provider_jobs_finished_idx ON provider_jobs (updated_at) WHERE status IN ('done', 'skipped', 'failed');
