#!/usr/bin/env bash
# Regenerates the hashed lock files from pyproject.toml:
#   requirements/runtime.lock.txt  the runtime dependencies (the container image installs these)
#   requirements/dev.lock.txt      the `dev` extra (test + embedded + lint/type tools; scripts/setup.sh installs these)
#   requirements/tools.lock.txt    CI's validators (hadolint, check-jsonschema, kubernetes-validate), from tools.in
# Deterministic: the resolver and its version are pinned, the lock is universal (markers kept, hashes of every
# published file of each pinned release) with Python 3.11 as the floor, so the same lock serves the developers'
# Python 3.11 and Debian trixie's Python 3.13 in the image. Run it after changing dependencies; commit the result.
# Pass --upgrade to move every pin to the newest allowed release (otherwise existing pins are kept).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tools=".venv-lock"
if [ ! -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi
upgrade=()
if [ "${1:-}" = "--upgrade" ]; then upgrade=(--upgrade); fi
compile() {  # output, then extra uv arguments
  local out="$1"; shift
  # --native-tls: trust the system's CA store (TLS-intercepting proxies, corporate CAs).
  "$tools/bin/uv" pip compile --quiet --native-tls --universal --python-version 3.11 --generate-hashes \
    --no-strip-extras --custom-compile-command "scripts/lock.sh" ${upgrade[@]+"${upgrade[@]}"} \
    --output-file "$out" "$@"
}
compile requirements/runtime.lock.txt pyproject.toml
compile requirements/dev.lock.txt pyproject.toml --extra dev
compile requirements/tools.lock.txt requirements/tools.in
echo "locked: requirements/runtime.lock.txt requirements/dev.lock.txt requirements/tools.lock.txt"
