"""What operators run in production: DLQ replay, parked events, events tail, publish, topics, schema registry."""
