"""The harness of the test suite, one package for every folder of tests.

- `database`: a new database per test or module on the session's PostgreSQL, migrations.
- `records`: command builders, raw records, a recording DLQ sink, topic readers without a consumer group, the CLI.
- `in_process`: a real `Worker` running in the test's event loop on topics and a database of its own (pipeline, CLI,
  tracing and observability tests).
- `processes`: real `python -m worker run` processes, bulk commands and the exactly-once checks (fault tests).
- `proxy`: a TCP proxy in front of Tansu that cuts and refuses connections (broker outages) or refuses records.
- `fetch_proxy`: a Kafka-protocol proxy that rewrites the records of Fetch responses (damaged batches, old formats)
  and records each Fetch request's isolation level.
- `adversarial`: one worker process per module, tails of its output topics, crafted record batches, the check that
  every partition still answers.
"""
