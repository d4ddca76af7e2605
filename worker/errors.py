"""Exceptions shared across the worker's layers."""

from __future__ import annotations


class ConfigurationError(Exception):
    """A setting or configuration file is missing or malformed; the message names it and never a secret."""


# The exit statuses of every command (the worker's and the tools'), defined here once.
EXIT_OK = 0
EXIT_FAILED = 1
"""A command failed (or found what it checks for, e.g. `publish` refusing invalid lines)."""
EXIT_CONFIG = 2
"""A setting or configuration file is wrong; the message names it."""
EXIT_PENDING_MIGRATIONS = 3
"""The worker found migrations not applied yet (`customer-worker migrate` first)."""
EXIT_INTERRUPTED = 130
