"""The fast path never disagrees with the full validation: whenever it accepts a command, the full path accepts
the same bytes with the same result; and it does accept the common case (else it would only cost time)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_contract_properties import (
    CONTEXT,
    ORG,
    PROPERTY_SETTINGS,
    customers,
    identifiers,
    json_values,
    valid_customers,
)
from worker.contract import fastpath
from worker.contract.decode import Command, _decode_in_full, _plainly_valid, decode


def _same_as_full_path(value: bytes) -> Command | None:
    full = _decode_in_full(value, [], CONTEXT)
    fast = _plainly_valid(value, [], CONTEXT)
    if fast is not None:
        assert fast == full, f"fast path gave {fast}, the full path {full}"
    assert decode(value, [], CONTEXT) == full
    return fast


@PROPERTY_SETTINGS
@given(case=valid_customers(), occurred_at=st.sampled_from([None, "2026-11-24T10:15:00Z", "2026-11-24t10:15:00z"]))
def test_valid_customers_take_the_fast_path_with_the_full_paths_result(
    case: tuple[dict[str, Any], dict[str, Any]], occurred_at: str | None
) -> None:
    sent, _ = case
    document: dict[str, Any] = {"message_id": "msg-fast", "organization_id": ORG, "customer": sent}
    if occurred_at is not None:
        document["occurred_at"] = occurred_at
    value = orjson.dumps(document)
    fast = _same_as_full_path(value)
    if b"\\u0000" not in value:
        assert fast is not None, "a plainly valid command should not need the full path"


@PROPERTY_SETTINGS
@given(
    message_id=identifiers,
    customer=customers,
    occurred_at=st.none() | json_values,
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("message_id", "customer")), json_values),
)
def test_arbitrary_bodies_never_make_the_paths_disagree(
    message_id: str, customer: dict[str, Any], occurred_at: Any, extra: dict[str, Any]
) -> None:
    document = {**extra, "message_id": message_id, "organization_id": ORG, "customer": customer}
    if occurred_at is not None:
        document["occurred_at"] = occurred_at
    _same_as_full_path(orjson.dumps(document))


def test_unknown_fields_and_errors_leave_the_fast_path() -> None:
    base = {"message_id": "m", "organization_id": ORG, "customer": {"external_id": "x", "name": "n"}}
    assert fastpath.read(orjson.dumps(base)) is not None
    for customer in (
        {"external_id": "x", "surprise": 1},
        {"external_id": "x", "metadata": [{"key": "a", "value": "b", "id": 3}]},
        {"external_id": "x", "country": "zz"},
        {"external_id": "x", "metadata": [{"key": "a", "value": "b"}, {"key": "a", "value": "c"}]},
        {"external_id": " "},
        {"name": "no external id"},
    ):
        assert fastpath.read(orjson.dumps({**base, "customer": customer})) is None, customer
