"""Which broker answers are the record's fault (issue 18, case 3): aiokafka 0.14 names neither -1 nor 87; the worker
registers 87 (INVALID_RECORD) under a class of its own, so that `UnknownError` stands only for answers that name no
cause, which are outages unless retries show otherwise (see tests/integration/test_unexplained_refusals.py)."""

from __future__ import annotations

import pytest
from aiokafka.errors import UnknownError, for_code

from worker.outages import is_outage
from worker.transport.records import InvalidRecordError, UnexplainedRefusalError, refusal, unexplained


def test_invalid_record_is_read_by_its_code_and_refused_for_good() -> None:
    assert for_code(87) is InvalidRecordError
    refused = refusal(for_code(87)())
    assert refused is not None and refused.reason == "invalid_record"
    assert not unexplained(for_code(87)())


@pytest.mark.parametrize("code", [-1, 88, 119, 32767])
def test_a_code_that_names_no_cause_is_unexplained_not_a_refusal(code: int) -> None:
    error = for_code(code)()
    assert isinstance(error, UnknownError)
    assert refusal(error) is None
    assert unexplained(error)


def test_an_unexplained_refusal_is_an_outage() -> None:
    assert is_outage(UnexplainedRefusalError("kafka: UnknownError"))
