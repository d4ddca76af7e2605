"""Provider job snapshots (`provider_jobs.request`) round-trip, including those queued before a field was added."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from worker.domain.customer import COLUMNS, CustomerState
from worker.store.rows import state_from_json, state_json

_NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _state() -> CustomerState:
    return CustomerState(
        id=uuid.uuid4(),
        organization_id="org",
        external_id="cus-1",
        created_at=_NOW,
        updated_at=_NOW,
        high_water_mark=_NOW,
        name="Ada",
        net_payment_term=30,
        provider_payment_methods=("card", "sepa_debit"),
        tax_codes=("VAT",),
        metadata=({"key": "k", "value": "v", "display_in_invoice": True},),
    )


def test_a_snapshot_round_trips() -> None:
    state = _state()
    assert state_from_json(state_json(state)) == state


def test_a_snapshot_from_before_the_last_fields_were_added_gets_their_defaults() -> None:
    state = _state()
    # As written by a worker whose `CustomerState` ended two fields earlier (fields are only ever appended).
    older = orjson.dumps(orjson.loads(state_json(state))[:-2]).decode()
    restored = state_from_json(older)
    assert len(restored) == len(COLUMNS)
    assert restored[:-2] == state[:-2]
    assert restored[-2:] == tuple(CustomerState._field_defaults[column] for column in COLUMNS[-2:])
