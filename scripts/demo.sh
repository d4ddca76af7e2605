#!/usr/bin/env bash
# Installs the worker and runs a short demo on the embedded stack (PostgreSQL and a Kafka-protocol broker, no Docker):
# it publishes a few commands (one invalid, one duplicate), prints the events they produce and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh embedded
exec .venv/bin/customer-worker dev --demo "$@"
