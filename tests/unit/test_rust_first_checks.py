"""The e-mail and country rules run in pydantic-core first and in Python only when that fails (`customer._RustFirst`).

The split must be invisible: for any string, the customer model answers exactly what the Python rule alone answers
(the same value, or the same Lago code), whichever branch took it.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any, Final

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import PydanticCustomError, SchemaValidator, core_schema

from worker.contract.customer import CUSTOMER, _country, _email
from worker.contract.datasets import COUNTRY_CODES
from worker.contract.email import ASCII_ADDRESS_LIST

# Whitespace that Python's `\s` and `str.strip` know but Rust's `\s` does not (\x1c-\x1f), Unicode spaces, invisible
# characters and dash look-alikes that Lago's sanitiser handles, and plain address characters.
_TRICKY: Final = ["\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000"]
_SANITISED: Final = ["\u200b", "\u00ad", "\ufeff", "\u2013", "\u2212", "\uff0d"]
_EMAIL_ALPHABET: Final = st.sampled_from([*string.ascii_letters[:6], *"09.@-_+,' ", "é", *_TRICKY, *_SANITISED])

_label: st.SearchStrategy[str] = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,3}[a-z0-9])?", fullmatch=True)
addresses: st.SearchStrategy[str] = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    st.text(st.sampled_from([*"ab09.!#'+/=?^_`{|}~-"]), min_size=1, max_size=6),
    st.lists(_label, min_size=1, max_size=3),
)
# Near misses: addresses and junk joined by separators, so that a list is often valid but for one part.
_PART: Final = addresses | st.text(_EMAIL_ALPHABET, max_size=6)
_SEPARATOR: Final = st.sampled_from([",", ", ", " ,", ",,", "", *_TRICKY, *_SANITISED])
email_like: st.SearchStrategy[str] = st.builds(
    lambda parts, seps, pad: pad + "".join(part + sep for part, sep in zip(parts, seps, strict=False)) + parts[-1],
    st.lists(_PART, min_size=1, max_size=4),
    st.lists(_SEPARATOR, min_size=3, max_size=3),
    st.sampled_from(["", " ", *_TRICKY, *_SANITISED]),
)


def _random_case(code: str, flips: list[bool]) -> str:
    return "".join(char.lower() if flip else char for char, flip in zip(code, flips, strict=False))


country_like: st.SearchStrategy[str] = (
    st.builds(_random_case, st.sampled_from(sorted(COUNTRY_CODES)), st.lists(st.booleans(), min_size=2, max_size=2))
    | st.text(st.sampled_from([*"AZaz ", *_TRICKY, "\u0130", "\u0131"]), max_size=3)
    | st.text(max_size=3)
)


def _by_rule(rule: Callable[[str], Any], value: str) -> tuple[str, Any]:
    try:
        return ("value", rule(value))
    except PydanticCustomError as exc:
        return ("error", exc.type)


def _by_model(body: dict[str, Any], path: tuple[str, ...]) -> tuple[str, Any]:
    try:
        validated: Any = CUSTOMER.validate_python({"external_id": "cus_1", **body})
    except ValidationError as exc:
        [error] = exc.errors()
        assert error["loc"] == path
        return ("error", error["type"])
    for part in path:
        validated = validated[part]
    return ("value", validated)


@settings(max_examples=300, deadline=None)
@given(value=email_like)
def test_email_model_answers_as_the_python_rule(value: str) -> None:
    assert _by_model({"email": value}, ("email",)) == _by_rule(_email, value)


@settings(max_examples=300, deadline=None)
@given(value=country_like, nested=st.booleans())
def test_country_model_answers_as_the_python_rule(value: str, nested: bool) -> None:
    body: dict[str, Any] = {"shipping_address": {"country": value}} if nested else {"country": value}
    path = ("shipping_address", "country") if nested else ("country",)
    assert _by_model(body, path) == _by_rule(_country, value)


_FAST_EMAIL: Final = SchemaValidator(core_schema.str_schema(pattern=ASCII_ADDRESS_LIST))


@settings(max_examples=300, deadline=None)
@given(value=email_like)
def test_the_fast_email_pattern_accepts_only_what_the_rule_keeps_unchanged(value: str) -> None:
    try:
        _FAST_EMAIL.validate_python(value)
    except ValidationError:
        return
    assert _email(value) == value


def _fast_branches(schema: Any) -> list[Any]:
    """The first choice of every left-to-right union in a core schema."""
    found: list[Any] = []
    if isinstance(schema, dict):
        if schema.get("type") == "union" and schema.get("mode") == "left_to_right":
            found.append(schema["choices"][0])
        for child in schema.values():
            found += _fast_branches(child)
    elif isinstance(schema, list):
        for child in schema:
            found += _fast_branches(child)
    return found


def test_the_model_checks_usual_values_without_python() -> None:
    # Were the fast branches dropped from the model, the properties above would still hold; this guards the point.
    fast = _fast_branches(CUSTOMER.core_schema)
    assert {"type": "str", "pattern": ASCII_ADDRESS_LIST} in fast
    assert sum(branch.get("expected") == sorted(COUNTRY_CODES) for branch in fast) == 2  # billing and shipping
    _FAST_EMAIL.validate_python(" ana.lopez@acme.example , billing@acme.example")
