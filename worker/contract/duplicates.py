"""Duplicate member names (SPEC §12): a value in which an object, at any depth, repeats a member name is
`invalid_envelope`. Parsers disagree on which of the two counts (orjson and Python keep the last, others the
first), so such a command is ambiguous, and one that names two organizations must not be answered for either.

orjson does not report duplicates; the checks here are arranged so that the usual value costs little.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

# The end of every member name: a closing quote, optional whitespace, a colon. It can also match inside a string
# value (`": "`), never less often than there are names. Without whitespace before a colon (the usual writer),
# counting the two bytes `":` is the same count, ten times faster.
_NAME_END: Final = re.compile(rb'"[ \t\n\r]*:')
_SPACED_NAME_END: Final = re.compile(rb'"[ \t\n\r]+:')


def duplicate_names(value: bytes, document: dict[str, Any]) -> str | None:
    """A problem when an object of the value, at any depth, repeats a member name: parsers disagree on which one
    counts, so the command is ambiguous. Cheapest for a compact writer's value (orjson's, Jackson's): serialised
    again, it comes out identical. Otherwise, when the name ends found in the bytes are as many as the members
    parsed, no name can repeat; only when they differ is the value parsed again, pair by pair."""
    try:
        if orjson.dumps(document) == value:
            return None  # a compact writer's value, re-made byte for byte from the members parsed: none was dropped
    except orjson.JSONEncodeError:
        pass
    ends = value.count(b'":') if _SPACED_NAME_END.search(value) is None else len(_NAME_END.findall(value))
    try:
        members = _member_count(document)
    except RecursionError:
        members = _member_count_deep(document)
    if ends == members:
        return None
    try:
        json.loads(value, object_pairs_hook=_unique_pairs)
    except _DuplicateNameError:
        return "an object repeats a member name"
    except RecursionError:
        return "value is nested too deeply"
    return None


class _DuplicateNameError(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> None:
    if len({name for name, _ in pairs}) != len(pairs):
        raise _DuplicateNameError


def _member_count(node: dict[str, Any] | list[Any]) -> int:
    """Members of every object in `node`; recursive, the fastest way for the usual value (RecursionError past
    Python's limit: orjson reads up to 1,024 levels)."""
    count = 0
    if type(node) is dict:
        count = len(node)
        items: Any = node.values()
    else:
        items = node
    for item in items:
        if type(item) is dict or type(item) is list:
            count += _member_count(item)
    return count


def _member_count_deep(document: dict[str, Any]) -> int:
    count = 0
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            count += len(node)
            node = node.values()
        stack.extend(item for item in node if type(item) is dict or type(item) is list)
    return count
