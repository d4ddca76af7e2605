"""Exceptions shared across the worker's layers."""

from __future__ import annotations


class ConfigurationError(Exception):
    """A setting or configuration file is missing or malformed; the message names it and never a secret."""


def yaml_problem(exc: Exception) -> str:
    """Where and what a YAML parser found wrong, without quoting the file: its lines may hold secrets."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
