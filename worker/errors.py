"""Exceptions shared across the worker's layers, the exit statuses, and reading a settings file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigurationError(Exception):
    """A setting or configuration file is missing or malformed; the message names it and never a secret."""


def yaml_problem(exc: Exception) -> str:
    """Where and what a YAML parser found wrong, without quoting the file: its lines may hold secrets."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_yaml(path: Path, setting: str) -> Any:
    """The document of a settings file (YAML or JSON); ConfigurationError naming the setting, the file and the line
    at fault otherwise."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{setting}: {path} is not valid YAML or JSON ({yaml_problem(exc)})") from None


# The exit statuses of every command (the worker's and the tools'), defined here once.
EXIT_OK = 0
EXIT_FAILED = 1
"""A command failed (or found what it checks for, e.g. `publish` refusing invalid lines)."""
EXIT_CONFIG = 2
"""A setting or configuration file is wrong; the message names it."""
EXIT_PENDING_MIGRATIONS = 3
"""The worker found migrations not applied yet (`customer-worker migrate` first)."""
EXIT_INTERRUPTED = 130
