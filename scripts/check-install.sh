#!/usr/bin/env bash
# The standard install, without the lock: `pip install .` in a fresh venv, with the pip that venv ships, on every
# Python minor release that `requires-python` admits (3.11, 3.12, 3.13), then `customer-worker --version`.
# Interpreters are looked up under pyenv, then as pythonX.Y on PATH; an absent one is reported as not checked,
# except 3.11 (the Python CI runs on), whose absence fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
find_python() {
  local minor="$1" candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$minor".*/bin/python "$(command -v "python$minor" || true)"; do
    # A pyenv shim is on PATH even where its version is not selected: run it to know.
    if [ -x "$candidate" ] && "$candidate" -c 'import venv' 2>/dev/null; then echo "$candidate"; return 0; fi
  done
  return 1
}
for minor in 3.11 3.12 3.13; do
  if ! python="$(find_python "$minor")"; then
    echo "check-install: python$minor not found, not checked"
    if [ "$minor" = 3.11 ]; then status=1; fi
    continue
  fi
  venv="$work/venv-$minor"
  "$python" -m venv "$venv"
  pip_version="$("$venv/bin/python" -m pip --version | cut -d' ' -f2)"
  if "$venv/bin/python" -m pip install --quiet --disable-pip-version-check . >"$work/pip-$minor.log" 2>&1 \
    && version="$("$venv/bin/customer-worker" --version)"; then
    echo "check-install: python$minor (pip $pip_version): $version"
  else
    echo "check-install: python$minor (pip $pip_version): FAILED"
    grep -v '^WARNING: Location' "$work/pip-$minor.log" | tail -20
    status=1
  fi
done
exit "$status"
