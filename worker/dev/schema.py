"""The published contract as files (SPEC §10 `customer-worker schema`): JSON Schemas and an AsyncAPI document.

    generate() -> {file name: content}     write(out_dir) -> written paths     drift(out_dir) -> stale file names

* `command.schema.json`: the command record value (`CommandEnvelope`, validation mode: what producers may send).
* `events/<event_type>.schema.json`: one per result event (serialization mode: what consumers receive).
* `events.schema.json`: any result event, discriminated by `event_type`.
* `asyncapi.yaml`: AsyncAPI 3.0.0 for the three topics of SPEC §1, with the schemas inlined under
  `components/schemas`.

The schemas come from the pydantic models in `worker.contract`, so they cannot say more than the models do: rules that
are checked in code (currency, country and language lists, e-mail syntax, payment-method combinations) are described,
not encoded. Output is deterministic (sorted keys, LF, trailing newline) so that a test can detect drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from worker.contract.codes import DlqReason
from worker.contract.envelope import CommandEnvelope
from worker.contract.events import EVENT_MODELS, AnyEvent, EventEnvelope
from worker.security import SIGNATURE_HEADER
from worker.settings import KafkaSettings

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
CONTRACT_VERSION: Final = "1.0.0"
"""Version of the wire contract (the `v1` of the topic names), not of the package."""

COMMAND_FILE: Final = "command.schema.json"
EVENTS_FILE: Final = "events.schema.json"
ASYNCAPI_FILE: Final = "asyncapi.yaml"

EVENT_SUMMARIES: Final = {
    "customer.created": "The command created the customer.",
    "customer.updated": "The command updated an existing customer (also when it changed nothing).",
    "customer.rejected": "The command failed validation or authentication; no customer data was written.",
    "customer.skipped": "The stale guard held the command back (its occurred_at is older than the customer's).",
    "customer.payment_provider_created": "The customer was created at the payment provider.",
    "customer.payment_provider_error": "The payment provider call failed for good.",
    "customer.checkout_url_generated": "A provider checkout / setup link was made for the customer.",
}
"""SPEC §6, for the AsyncAPI messages."""

_TRACEPARENT_PATTERN: Final = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_COMPONENT_REF: Final = "#/components/schemas/{model}"
_KAFKA_BINDING_VERSION: Final = "0.5.0"


def event_file(event_type: str) -> str:
    return f"events/{event_type}.schema.json"


def _dump_json(schema: dict[str, Any]) -> bytes:
    return (json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated objects in full instead of as YAML anchors and aliases, which many tools render poorly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump_yaml(document: dict[str, Any]) -> bytes:
    text = yaml.dump(
        document, Dumper=_NoAliasDumper, sort_keys=True, allow_unicode=True, default_flow_style=False, width=120
    )
    return text.encode("utf-8")


def _with_dialect(schema: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def command_schema() -> dict[str, Any]:
    return _with_dialect(CommandEnvelope.model_json_schema(mode="validation"))


def event_schema(model: type[EventEnvelope]) -> dict[str, Any]:
    return _with_dialect(model.model_json_schema(mode="serialization"))


def any_event_schema() -> dict[str, Any]:
    schema = TypeAdapter(AnyEvent).json_schema(mode="serialization")
    return _with_dialect({"title": "AnyEvent", "description": "Any value of the events topic.", **schema})


def _topic(name: str) -> str:
    default = KafkaSettings.model_fields[name].default
    assert isinstance(default, str)
    return default


def _string(description: str, **constraints: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **constraints}


def _headers(
    properties: dict[str, dict[str, Any]], required: list[str] | None = None, *, others: bool = False
) -> dict[str, Any]:
    """Headers as a JSON object; every header is required unless `required` names the ones that are."""
    required = list(properties) if required is None else required
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": others}


_CONTENT_TYPE: Final = _string("Always `application/json`.", const="application/json")
_TRACEPARENT: Final = _string("W3C trace context.", pattern=_TRACEPARENT_PATTERN)
_SCHEMA_ID: Final = _string(
    "The Schema Registry id (decimal) of the command's framed value; present when the command was framed.",
    pattern="^[0-9]+$",
)
# The command's own answer carries its schema id; provider events answer a provider call later and do not.
_ANSWER_EVENTS: Final = frozenset({"customer.created", "customer.updated", "customer.rejected", "customer.skipped"})


def _kafka_key(description: str) -> dict[str, Any]:
    return {"kafka": {"key": _string(description), "bindingVersion": _KAFKA_BINDING_VERSION}}


def asyncapi_document() -> dict[str, Any]:
    inputs: list[tuple[type[CommandEnvelope] | type[EventEnvelope], JsonSchemaMode]] = [
        (CommandEnvelope, "validation"),
        *((model, "serialization") for model in EVENT_MODELS.values()),
    ]
    references, definitions = models_json_schema(inputs, ref_template=_COMPONENT_REF)

    command_message = {
        "name": "customer.upsert",
        "title": "Customer upsert command",
        "summary": "Create or update one customer (the body of Lago's POST /api/v1/customers).",
        "contentType": "application/json",
        "headers": _headers(
            {
                "content-type": _CONTENT_TYPE,
                "traceparent": _string(
                    "W3C trace context, carried to the result events.", pattern=_TRACEPARENT_PATTERN
                ),
                SIGNATURE_HEADER: _string(
                    "`sha256=` and the hex HMAC-SHA256 of the exact value bytes under one of the organization's keys "
                    "(SIGNING_KEYS_FILE). Required for organizations that have keys, and for every organization "
                    "when REQUIRE_SIGNATURES is true.",
                    pattern="^sha256=[0-9a-f]{64}$",
                ),
            },
            required=[],
            others=True,
        ),
        "payload": references[(CommandEnvelope, "validation")],
        "bindings": _kafka_key("`{organization_id}:{external_id}`, so that one customer's commands stay in order."),
    }

    event_messages: dict[str, Any] = {}
    for event_type, model in EVENT_MODELS.items():
        event_messages[event_type] = {
            "name": event_type,
            "title": model.__name__,
            "summary": EVENT_SUMMARIES.get(event_type, event_type),
            "contentType": "application/json",
            "headers": _headers(
                {
                    "event-type": _string("The payload's `event_type`.", const=event_type),
                    "content-type": _CONTENT_TYPE,
                    "traceparent": _string(
                        "The command's trace id (a new span id); present when the command had one.",
                        pattern=_TRACEPARENT_PATTERN,
                    ),
                    **({"schema-id": _SCHEMA_ID} if event_type in _ANSWER_EVENTS else {}),
                },
                required=["event-type", "content-type"],
            ),
            "payload": references[(model, "serialization")],
            "bindings": _kafka_key(
                "`{organization_id}:{external_id}` (`{organization_id}:` for a rejection without external_id)."
            ),
        }

    dead_letter_message = {
        "name": "dead-letter",
        "title": "Dead-lettered command record",
        "summary": "A record that cannot be answered per customer, or a poison record; key, value and headers kept.",
        "headers": _headers(
            {
                "dlq-reason": {"type": "string", "enum": [reason.value for reason in DlqReason]},
                "dlq-error": _string("A short description of the cause, without personal data."),
                "dlq-source-topic": _string("Topic the record was read from."),
                "dlq-source-partition": _string("Its partition, in decimal.", pattern="^[0-9]+$"),
                "dlq-source-offset": _string("Its offset, in decimal.", pattern="^[0-9]+$"),
                "dlq-failed-at": _string("When it was dead-lettered (RFC 3339).", format="date-time"),
            },
            others=True,
        ),
        "payload": {"description": "The original record value, byte for byte: not necessarily JSON, possibly empty."},
        "bindings": _kafka_key("The original record key, unchanged."),
    }

    commands = _topic("commands_topic")
    events = _topic("events_topic")
    dlq = _topic("dlq_topic")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "customer-worker",
            "version": CONTRACT_VERSION,
            "description": "Consumes Lago-shaped customer upsert commands, applies them to PostgreSQL and publishes "
            "result events. Topic names are defaults: COMMANDS_TOPIC, EVENTS_TOPIC and DLQ_TOPIC change them.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "commands": {
                "address": commands,
                "title": "Customer upsert commands",
                "description": "Keyed `{organization_id}:{external_id}`; the value is at most 1 MiB.",
                "messages": {"customer.upsert": {"$ref": "#/components/messages/customer.upsert"}},
            },
            "events": {
                "address": events,
                "title": "Result events",
                "description": "One or more events per answered command, in command order per customer.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in event_messages},
            },
            "deadLetters": {
                "address": dlq,
                "title": "Dead letters",
                "description": "Unreadable and poison command records; `customer-worker dlq replay` republishes them.",
                "messages": {"dead-letter": {"$ref": "#/components/messages/dead-letter"}},
            },
        },
        "operations": {
            "receiveCommands": {
                "action": "receive",
                "channel": {"$ref": "#/channels/commands"},
                "summary": "The worker consumes commands (consumer group KAFKA_GROUP_ID, default customer-worker).",
                "messages": [{"$ref": "#/channels/commands/messages/customer.upsert"}],
            },
            "sendEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "summary": "The worker publishes result events from its outbox, at least once, with stable event_id.",
                "messages": [{"$ref": f"#/channels/events/messages/{name}"} for name in event_messages],
            },
            "sendDeadLetters": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetters"},
                "summary": "The worker copies records it cannot answer to the dead-letter topic.",
                "messages": [{"$ref": "#/channels/deadLetters/messages/dead-letter"}],
            },
        },
        "components": {
            "schemas": definitions["$defs"],
            "messages": {
                "customer.upsert": command_message,
                **event_messages,
                "dead-letter": dead_letter_message,
            },
        },
    }


def generate() -> dict[str, bytes]:
    """Every published file, by its path relative to the schema directory."""
    files = {COMMAND_FILE: _dump_json(command_schema()), EVENTS_FILE: _dump_json(any_event_schema())}
    for event_type, model in EVENT_MODELS.items():
        files[event_file(event_type)] = _dump_json(event_schema(model))
    files[ASYNCAPI_FILE] = _dump_yaml(asyncapi_document())
    return dict(sorted(files.items()))


def write(out_dir: Path) -> list[Path]:
    """Write every file under `out_dir`, creating directories; returns the paths written."""
    written = []
    for name, content in generate().items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def drift(out_dir: Path) -> list[str]:
    """Names of the files under `out_dir` that are missing or differ from `generate()`, plus stale schema files
    that it no longer produces (an event type removed or renamed)."""
    expected = generate()
    stale = [
        name
        for name, content in expected.items()
        if not (out_dir / name).is_file() or (out_dir / name).read_bytes() != content
    ]
    if out_dir.is_dir():
        present = {path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*.schema.json")}
        stale += sorted(present - expected.keys())
    return stale
