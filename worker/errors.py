"""Exceptions shared across the worker's layers."""

from __future__ import annotations


class ConfigurationError(Exception):
    """A setting or configuration file is missing or malformed; the message names it and never a secret."""
