"""The published schemas (`schemas/`) match the models, and real payloads match the published schemas."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import orjson
import pytest
import yaml

from worker.contract.codes import DlqReason
from worker.contract.events import EVENT_MODELS
from worker.dev.schema import ASYNCAPI_FILE, COMMAND_FILE, EVENTS_FILE, drift, event_file, generate, write
from worker.domain.customer import CustomerState, MetadataEntry
from worker.domain.events import build_event

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SCHEMAS: Final = REPO_ROOT / "schemas"


def test_schemas_directory_is_up_to_date() -> None:
    stale = drift(SCHEMAS)
    assert not stale, f"schemas/ is out of date ({', '.join(stale)}): run `customer-worker schema`"


def test_generate_is_deterministic_and_ends_with_a_newline() -> None:
    first, second = generate(), generate()
    assert first == second
    for name, content in first.items():
        assert content.endswith(b"\n") and not content.endswith(b"\n\n"), name
        assert b"\r\n" not in content, name


def test_generate_names_every_file() -> None:
    expected = {COMMAND_FILE, EVENTS_FILE, ASYNCAPI_FILE, *(event_file(event_type) for event_type in EVENT_MODELS)}
    assert set(generate()) == expected
    assert event_file("customer.created") == "events/customer.created.schema.json"


def test_json_files_have_sorted_keys() -> None:
    for name, content in generate().items():
        if name.endswith(".json"):
            document = json.loads(content)
            assert content == (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def test_write_then_drift_is_empty(tmp_path: Path) -> None:
    written = write(tmp_path / "out")
    assert sorted(path.relative_to(tmp_path / "out").as_posix() for path in written) == sorted(generate())
    assert drift(tmp_path / "out") == []


def test_drift_names_changed_missing_and_stale_files(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / COMMAND_FILE).write_text("{}\n")
    (tmp_path / event_file("customer.skipped")).unlink()
    (tmp_path / "events" / "customer.deleted.schema.json").write_text("{}\n")
    assert drift(tmp_path) == [COMMAND_FILE, event_file("customer.skipped"), "events/customer.deleted.schema.json"]


def test_drift_of_a_missing_directory_lists_every_file(tmp_path: Path) -> None:
    assert drift(tmp_path / "absent") == list(generate())


# --- AsyncAPI ---------------------------------------------------------------------------------------------------


def asyncapi() -> dict[str, Any]:
    document = yaml.safe_load(generate()[ASYNCAPI_FILE])
    assert isinstance(document, dict)
    return document


def resolve(document: dict[str, Any], reference: str) -> Any:
    assert reference.startswith("#/"), reference
    node: Any = document
    for part in reference[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


def test_asyncapi_describes_the_three_topics() -> None:
    document = asyncapi()
    assert document["asyncapi"] == "3.0.0"
    addresses = {name: channel["address"] for name, channel in document["channels"].items()}
    assert addresses == {
        "commands": "customers.upsert.v1",
        "events": "customers.events.v1",
        "deadLetters": "customers.upsert.v1.dlq",
    }
    operations = {name: (op["action"], op["channel"]["$ref"]) for name, op in document["operations"].items()}
    assert operations == {
        "receiveCommands": ("receive", "#/channels/commands"),
        "sendEvents": ("send", "#/channels/events"),
        "sendDeadLetters": ("send", "#/channels/deadLetters"),
    }


def test_asyncapi_every_reference_resolves() -> None:
    document = asyncapi()
    references = all_refs(document)
    assert len(references) > 20
    for reference in references:
        assert resolve(document, reference) is not None, reference


def message_of(document: dict[str, Any], channel: str, name: str) -> dict[str, Any]:
    message = resolve(document, document["channels"][channel]["messages"][name]["$ref"])
    assert isinstance(message, dict)
    return message


def test_asyncapi_message_headers() -> None:
    document = asyncapi()
    command = message_of(document, "commands", "customer.upsert")
    assert set(command["headers"]["properties"]) == {"content-type", "traceparent", "x-signature"}
    assert re.fullmatch(command["headers"]["properties"]["x-signature"]["pattern"], "sha256=" + "ab" * 32)
    assert command["payload"] == {"$ref": "#/components/schemas/CommandEnvelope"}

    assert set(document["channels"]["events"]["messages"]) == set(EVENT_MODELS)
    for event_type, model in EVENT_MODELS.items():
        message = message_of(document, "events", event_type)
        headers = message["headers"]["properties"]
        # The command's own answer carries the schema id of a framed command (SPEC §12); provider events do not.
        answers = {"customer.created", "customer.updated", "customer.rejected", "customer.skipped"}
        expected = {"event-type", "content-type", "traceparent"} | ({"schema-id"} if event_type in answers else set())
        assert set(headers) == expected
        assert headers["event-type"]["const"] == event_type
        assert message["payload"] == {"$ref": f"#/components/schemas/{model.__name__}"}

    dead_letter = message_of(document, "deadLetters", "dead-letter")
    dlq_headers = dead_letter["headers"]["properties"]
    assert set(dlq_headers) == {
        "dlq-reason",
        "dlq-error",
        "dlq-source-topic",
        "dlq-source-partition",
        "dlq-source-offset",
        "dlq-failed-at",
    }
    assert dlq_headers["dlq-reason"]["enum"] == [reason.value for reason in DlqReason]


def test_asyncapi_inlines_the_same_schemas_as_the_json_files() -> None:
    components = asyncapi()["components"]["schemas"]
    created = json.loads(generate()[event_file("customer.created")])
    assert set(components["CustomerCreated"]["required"]) == set(created["required"])
    assert set(components["LagoCustomer"]["properties"]) == set(created["$defs"]["LagoCustomer"]["properties"])
    command = json.loads(generate()[COMMAND_FILE])
    assert set(components["CommandEnvelope"]["required"]) == set(command["required"])


# --- real payloads against the generated JSON Schemas -----------------------------------------------------------------
# `jsonschema` is not a dependency: this validator covers the keywords pydantic emits for these models.

_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> list[str]:
    if "$ref" in schema:
        return schema_errors(value, resolve(root, schema["$ref"]), root, path)
    errors: list[str] = []
    if "anyOf" in schema and all(schema_errors(value, option, root, path) for option in schema["anyOf"]):
        errors.append(f"{path}: matches no anyOf branch")
    if "oneOf" in schema:
        matching = sum(not schema_errors(value, option, root, path) for option in schema["oneOf"])
        if matching != 1:
            errors.append(f"{path}: matches {matching} oneOf branches")
    if "type" in schema:
        expected = _TYPES[schema["type"]]
        is_bool = isinstance(value, bool)
        if not isinstance(value, expected) or (is_bool and schema["type"] in ("integer", "number")):
            return [*errors, f"{path}: {type(value).__name__} is not {schema['type']}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: length {len(value)} out of bounds")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{path}: does not match {schema['pattern']}")
        if schema.get("format") == "uuid":
            UUID(value)
        if schema.get("format") == "date-time" and not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", value):
            errors.append(f"{path}: {value!r} is not an RFC 3339 UTC date-time")
    in_range = schema.get("minimum", value) <= value <= schema.get("maximum", value) if isinstance(value, int) else True
    if not in_range:
        errors.append(f"{path}: {value} out of range")
    if isinstance(value, dict):
        errors += [f"{path}: missing {name}" for name in schema.get("required", []) if name not in value]
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                errors += schema_errors(item, properties[name], root, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected {name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(item, schema["additionalProperties"], root, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{path}[{index}]")
    return errors


NOW: Final = datetime(2026, 11, 24, 10, 15, 0, 123000, tzinfo=UTC)
FULL_STATE: Final = CustomerState(
    id=UUID("8d3c6a1e-52a0-4f7e-9a57-0d9f3c1e2a10"),
    organization_id="org_acme",
    external_id="cus_001",
    created_at=NOW,
    updated_at=NOW,
    name="Acme Inc",
    email="billing@acme.example",
    country="FR",
    currency="EUR",
    timezone="Europe/Paris",
    customer_type="company",
    net_payment_term=30,
    finalize_zero_amount_invoice="skip",
    invoice_grace_period=3,
    document_locale="fr",
    payment_provider="stripe",
    payment_provider_code="stripe_main",
    provider_customer_id="cus_Q1",
    provider_payment_methods=("card", "link"),
    shipping_city="Lyon",
    tax_codes=("vat_20",),
    metadata=(MetadataEntry(key="segment", value="enterprise", display_in_invoice=True),),
)
EMPTY_STATE: Final = CustomerState(
    id=UUID("8d3c6a1e-52a0-4f7e-9a57-0d9f3c1e2a11"),
    organization_id="org_acme",
    external_id="cus_002",
    created_at=NOW,
    updated_at=NOW,
)


def built(event_type: str, **fields: Any) -> dict[str, Any]:
    event = build_event(
        event_id=UUID("0f8e2c7a-6a55-4c0b-9b0e-1d2f3a4b5c6d"),
        event_type=event_type,
        organization_id="org_acme",
        message_id="6c3f0c8e-2b1a-4f0e-9a57-0d9f3c1e2a10",
        external_id=fields.pop("external_id", "cus_001"),
        occurred_at=NOW,
        traceparent=None,
        **fields,
    )
    payload = orjson.loads(event.payload)
    assert isinstance(payload, dict)
    return payload


PAYLOADS = [
    pytest.param("customer.created", built("customer.created", customer=FULL_STATE), id="created-full"),
    pytest.param("customer.created", built("customer.created", customer=EMPTY_STATE), id="created-empty"),
    pytest.param("customer.updated", built("customer.updated", customer=FULL_STATE), id="updated"),
    pytest.param(
        "customer.rejected",
        built("customer.rejected", external_id=None, errors={"external_id": ["value_is_mandatory"]}),
        id="rejected-without-external-id",
    ),
    pytest.param("customer.skipped", built("customer.skipped", extra={"reason": "stale"}), id="skipped"),
    pytest.param(
        "customer.payment_provider_created",
        built("customer.payment_provider_created", customer=FULL_STATE),
        id="payment-provider-created",
    ),
    pytest.param(
        "customer.payment_provider_error",
        built(
            "customer.payment_provider_error",
            customer=FULL_STATE,
            extra={
                "provider_error": {
                    "provider": "stripe",
                    "error_code": "card_declined",
                    "message": "declined",
                    "http_status": 402,
                }
            },
        ),
        id="payment-provider-error",
    ),
    pytest.param(
        "customer.checkout_url_generated",
        built(
            "customer.checkout_url_generated",
            customer=FULL_STATE,
            extra={"checkout_url": "https://checkout.example/c/1"},
        ),
        id="checkout-url",
    ),
]


@pytest.mark.parametrize(("event_type", "payload"), PAYLOADS)
def test_built_event_payload_validates_against_its_published_schema(event_type: str, payload: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / event_file(event_type)).read_text())
    assert set(schema["required"]) <= set(payload), "a required field is missing from the payload"
    assert schema_errors(payload, schema, schema) == []
    union = json.loads((SCHEMAS / EVENTS_FILE).read_text())
    assert schema_errors(payload, union, union) == []


def test_customer_object_carries_every_schema_field() -> None:
    schema = json.loads((SCHEMAS / event_file("customer.created")).read_text())
    customer = built("customer.created", customer=EMPTY_STATE)["customer"]
    lago_customer = schema["$defs"]["LagoCustomer"]
    assert set(customer) == set(lago_customer["properties"]) == set(lago_customer["required"])


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda p: p.pop("event_id"), id="missing-event_id"),
        pytest.param(lambda p: p["customer"].pop("tax_codes"), id="missing-customer-field"),
        pytest.param(lambda p: p.update(unexpected=1), id="extra-field"),
        pytest.param(lambda p: p["customer"].update(finalize_zero_amount_invoice=None), id="null-finalize"),
        pytest.param(lambda p: p["customer"]["metadata"][0].update(display_in_invoice="yes"), id="bad-type"),
        pytest.param(lambda p: p.update(event_type="customer.deleted"), id="bad-event-type"),
    ],
)
def test_the_validator_catches_a_broken_payload(mutate: Any) -> None:
    schema = json.loads((SCHEMAS / event_file("customer.created")).read_text())
    payload = built("customer.created", customer=FULL_STATE)
    mutate(payload)
    assert schema_errors(payload, schema, schema) != []


def test_the_spec_example_command_validates_against_the_command_schema() -> None:
    schema = json.loads((SCHEMAS / COMMAND_FILE).read_text())
    command = {
        "message_id": "6c3f0c8e-2b1a-4f0e-9a57-0d9f3c1e2a10",
        "organization_id": "org_acme",
        "occurred_at": "2026-11-24T10:15:00Z",
        "customer": {"external_id": "cus_001", "name": "Acme Inc", "currency": "EUR"},
    }
    assert schema_errors(command, schema, schema) == []
    assert schema_errors({"message_id": "m", "customer": {}}, schema, schema) != []
