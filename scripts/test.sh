#!/usr/bin/env bash
# The test command: README and CI both call this. Extra arguments go to pytest, e.g. `scripts/test.sh -m slow`.
# Without arguments it runs everything except the slow tests: those under tests/faults/, tests/soak/ and
# tests/release/, marked by folder in tests/conftest.py (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "${EXTRAS:-test}"
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
