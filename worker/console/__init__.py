"""The operators' web console (`customer-worker console`, docs/console.md): a separate process beside the worker,
reading PostgreSQL and Kafka, acting through worker.ops.jobs. The runtime never imports it."""
