"""Lago's e-mail rule: one address or a comma-separated list, each matching an RFC 5322 (HTML5) pattern.

Before checking, invisible characters (zero-width spaces, joiners, bidi marks, soft hyphens, BOM) are removed and
dash look-alikes become an ASCII hyphen, as Lago's sanitiser does, so that copy-pasted addresses validate and are
stored clean. Case is kept.
"""

from __future__ import annotations

import re
from typing import Final

_INVISIBLE: Final = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e"
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d\u206e\u206f"
    "\u3164\ufeff\uffa0"
)
_DASH_LOOKALIKES: Final = "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u2e3a\u2e3b\ufe58\ufe63\uff0d"

_TRANSLATION: Final = {ord(c): None for c in _INVISIBLE} | {ord(c): "-" for c in _DASH_LOOKALIKES}
_NEEDS_TRANSLATION: Final = re.compile(f"[{re.escape(_INVISIBLE + _DASH_LOOKALIKES)}]")

# Ruby's URI::MailTo::EMAIL_REGEXP, which Lago's EmailValidator applies to each address.
_ADDRESS: Final = (
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*"
)
# Lago splits on commas, strips each part and matches it: the same as one match of the whole list (`\s` is what
# `str.strip` removes), without building the parts.
_ADDRESS_LIST: Final = re.compile(rf"\s*{_ADDRESS}\s*(?:,\s*{_ADDRESS}\s*)*")
# The same rule for pure-ASCII lists, as pydantic-core's (Rust) pattern: its `\s` is Unicode White_Space, which lacks
# some of what `str.strip` removes, so the ASCII whitespace is spelt out. It accepts a subset of `_ADDRESS_LIST`.
_ASCII_SPACE: Final = r"[ \t\n\r\x0b\x0c]*"
ASCII_ADDRESS_LIST: Final = rf"^{_ASCII_SPACE}{_ADDRESS}{_ASCII_SPACE}(?:,{_ASCII_SPACE}{_ADDRESS}{_ASCII_SPACE})*$"


def normalize_email(value: str) -> str:
    """Remove invisible characters and replace dash look-alikes; everything else is kept as written."""
    if value.isascii() or _NEEDS_TRANSLATION.search(value) is None:
        return value
    return value.translate(_TRANSLATION)


def is_valid_email_list(value: str) -> bool:
    """True when every comma-separated part, stripped, is an address; empty parts (`a@b.c,,`) are invalid."""
    return _ADDRESS_LIST.fullmatch(value) is not None


def first_email(value: str | None) -> str | None:
    """The first address of a list, which is what payment providers get."""
    if not value:
        return None
    return value.split(",", 1)[0].strip() or None
