"""The benchmarks behind `customer-worker bench`: end-to-end drain rate, latency and start time on the embedded stack.

Outside the runtime package `worker` on purpose: production code never imports them (import-linter checks it).
"""
