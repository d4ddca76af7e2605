"""The decode stage returns an answer for every input, framed or not (issue 18, case 1; SPEC §7, §12).

A Schema Registry frame used to reach the duplicate-name check: its second parser read the leading byte 0 as UTF-16
and raised `UnicodeDecodeError`, which escaped `decode`, so the consumer polled the same batch again, forever. Any
framed value written with a space or a quote-colon inside a string (JSON text in a metadata value), or a schema id
whose bytes read `":` (8762), did it. Now the check reads the payload, and whatever one record makes a check raise
is that record's dead letter (`processing_error`), never an exception out of the stage.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.contract.codes import DlqReason
from worker.contract.connections import Connections
from worker.contract.decode import Command, DeadLetter, DecodeContext, Decoded, Rejection, decode
from worker.contract.framing import frame
from worker.security import SigningKeys

CONTEXT: Final = DecodeContext(signing_keys=SigningKeys({}), connections=Connections.empty())
FUZZ: Final = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUOTE_COLON_ID: Final = int.from_bytes(b'\x00\x00":', "big")  # 8762: the frame's id bytes end in `":`

schema_ids = st.sampled_from([0, 1, QUOTE_COLON_ID, int.from_bytes(b'":":', "big"), 2**32 - 1]) | st.integers(
    0, 2**32 - 1
)
# Strings with what a hand-written or pretty-printed value holds: quotes, colons, JSON text, escapes.
tricky_text = st.text(max_size=12) | st.sampled_from(['{"a": 1}', '":', '" : "', "\\", '\\":', "\x00", "é", "\u2028"])
json_leaves: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | tricky_text
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=16,
)
envelopes = st.fixed_dictionaries(
    {
        "message_id": st.text(min_size=1, max_size=20),
        "organization_id": st.text(min_size=1, max_size=20),
        "customer": st.fixed_dictionaries(
            {"external_id": tricky_text},
            optional={
                "name": tricky_text,
                "metadata": st.lists(
                    st.fixed_dictionaries({"key": tricky_text, "value": tricky_text}) | json_values, max_size=6
                ),
                "billing_configuration": st.dictionaries(tricky_text, json_values, max_size=3),
            },
        ),
    },
    optional={"occurred_at": st.just("2026-11-24T10:15:00Z") | json_values, "extra": json_values},
)
# How writers other than a compact one lay a document out: the duplicate check's slow path only runs for these.
layouts = st.sampled_from(
    [
        {},
        {"indent": 2},
        {"separators": (", ", ": ")},
        {"separators": (",", " : ")},
        {"ensure_ascii": False},
        {"indent": "\t", "ensure_ascii": False},
    ]
)


def _answered(outcome: Decoded) -> None:
    assert isinstance(outcome, Command | Rejection | DeadLetter), outcome
    if isinstance(outcome, DeadLetter):
        assert outcome.reason in DlqReason


def _without_schema_id(outcome: Decoded) -> Decoded:
    return outcome if isinstance(outcome, DeadLetter) else outcome._replace(schema_id=None)


@FUZZ
@given(raw=st.binary(max_size=120), schema_id=schema_ids)
def test_any_bytes_framed_or_not_get_an_answer(raw: bytes, schema_id: int) -> None:
    _answered(decode(raw, [], CONTEXT))
    _answered(decode(frame(raw, schema_id), [], CONTEXT))
    _answered(decode(b"\x00" + raw[:4], [], CONTEXT))  # a frame cut short


@FUZZ
@given(document=json_values, layout=layouts, schema_id=schema_ids)
def test_any_json_framed_or_not_gets_an_answer(document: Any, layout: dict[str, Any], schema_id: int) -> None:
    value = json.dumps(document, **layout).encode()
    _answered(decode(value, [], CONTEXT))
    _answered(decode(frame(value, schema_id), [], CONTEXT))


@FUZZ
@given(envelope=envelopes, layout=layouts, schema_id=schema_ids)
def test_a_framed_envelope_is_answered_as_its_payload_is(
    envelope: dict[str, Any], layout: dict[str, Any], schema_id: int
) -> None:
    value = json.dumps(envelope, **layout).encode()
    unframed = decode(value, [], CONTEXT)
    framed = decode(frame(value, schema_id), [], CONTEXT)
    _answered(framed)
    assert _without_schema_id(framed) == unframed
    if not isinstance(framed, DeadLetter):
        assert framed.schema_id == schema_id


def test_the_reproduced_stall_is_a_command_again() -> None:
    # The issue's reproduction: JSON text in a metadata value, and a schema id that reads `":`.
    value = orjson.dumps(
        {
            "message_id": "m-1",
            "organization_id": "org_fuzz",
            "customer": {"external_id": "c", "metadata": [{"key": "k", "value": '{"a": 1}'}]},
        }
    )
    for schema_id in (1, QUOTE_COLON_ID):
        outcome = decode(frame(value, schema_id), [], CONTEXT)
        assert isinstance(outcome, Command), outcome
        assert outcome.schema_id == schema_id
    spaced = json.dumps({"message_id": "m-2", "organization_id": "org_fuzz", "customer": {"external_id": "c"}})
    assert isinstance(decode(frame(spaced.encode(), QUOTE_COLON_ID), [], CONTEXT), Command)


def test_a_framed_value_that_repeats_a_name_is_still_invalid_envelope() -> None:
    # The check now reads the payload: what it finds in an unframed value, it finds in a framed one.
    value = b'{"message_id": "m", "organization_id": "org_a", "organization_id": "org_b", "customer": {}}'
    for candidate in (value, frame(value, 1), frame(value, QUOTE_COLON_ID)):
        outcome = decode(candidate, [], CONTEXT)
        assert isinstance(outcome, DeadLetter)
        assert (outcome.reason, outcome.error) == (DlqReason.INVALID_ENVELOPE, "an object repeats a member name")


def test_a_check_that_raises_dead_letters_that_record_as_processing_error() -> None:
    # The clock is read only for a record with `occurred_at`: a failing check, met by one record and not another.
    def broken_clock() -> datetime:
        raise RuntimeError("clock unavailable: org_secret cus_42")

    context = DecodeContext(signing_keys=SigningKeys({}), connections=Connections.empty(), clock=broken_clock)
    envelope = {"message_id": "m", "organization_id": "org_fuzz", "customer": {"external_id": "c"}}
    with_time = orjson.dumps({**envelope, "occurred_at": "2026-11-24T10:15:00Z"})
    outcome = decode(with_time, [], context)
    assert outcome == DeadLetter(DlqReason.PROCESSING_ERROR, "decoding failed: RuntimeError")
    assert isinstance(decode(orjson.dumps(envelope), [], context), Command)
