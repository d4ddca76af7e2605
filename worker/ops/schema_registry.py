"""`customer-worker schema register`: the payload schemas in `schemas/` under `<topic>-value` subjects of a
Confluent-compatible Schema Registry, through its REST API (`POST /subjects/{subject}/versions`, schema type JSON).

Registering the same schema again is a no-op on the registry's side (it answers the existing id), so the command is
safe to repeat from a deployment pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

import httpx

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
# Which file describes the values of which topic; the DLQ keeps foreign bytes and has no schema of its own.
SCHEMA_FILES: Final = {"commands": "command.schema.json", "events": "events.schema.json"}


class RegistryError(Exception):
    """The registry refused a schema or could not be reached; the message names the subject, never credentials."""


@dataclass(frozen=True, slots=True)
class Registered:
    subject: str
    schema_id: int


def subjects(schemas: Path, topics: dict[str, str]) -> dict[str, Path]:
    """`<topic>-value` → schema file, for the `commands` and `events` topics of `topics`."""
    return {f"{topics[role]}-value": schemas / name for role, name in SCHEMA_FILES.items()}


def register(
    registry_url: str,
    schemas: Path,
    topics: dict[str, str],
    *,
    auth: tuple[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[Registered]:
    done: list[Registered] = []
    with httpx.Client(base_url=registry_url.rstrip("/"), auth=auth, transport=transport, timeout=30) as client:
        for subject, path in subjects(schemas, topics).items():
            body = {"schemaType": "JSON", "schema": path.read_text(encoding="utf-8")}
            try:
                response = client.post(
                    f"/subjects/{quote(subject, safe='')}/versions",
                    json=body,
                    headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
                )
            except httpx.HTTPError as exc:
                raise RegistryError(f"{subject}: registry unreachable ({type(exc).__name__})") from None
            if response.status_code != 200:
                raise RegistryError(f"{subject}: HTTP {response.status_code} {_reason(response)}")
            done.append(Registered(subject, int(response.json()["id"])))
    return done


def _reason(response: httpx.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        return ""
    if isinstance(document, dict):
        return f"error_code {document.get('error_code')}: {document.get('message')}"
    return ""
