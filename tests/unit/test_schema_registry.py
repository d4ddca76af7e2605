"""Schema Registry (SPEC §12): framed values decode like unframed ones, a bad frame is `invalid_json`, and
`customer-worker schema register` speaks the registry's REST API (a local double of its documented endpoints)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import orjson
import pytest

from worker.cli import main
from worker.contract.codes import DlqReason
from worker.contract.connections import Connections
from worker.contract.decode import Command, DeadLetter, DecodeContext, Rejection, decode
from worker.contract.framing import frame, unframe
from worker.security import SigningKeys

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CONTEXT = DecodeContext(signing_keys=SigningKeys({}), connections=Connections([]))
VALUE = orjson.dumps(
    {"message_id": "m-1", "organization_id": "org_1", "customer": {"external_id": "cus_1", "name": "Framed"}}
)


def test_a_framed_value_decodes_like_the_unframed_one_and_keeps_its_schema_id() -> None:
    plain = decode(VALUE, (), CONTEXT)
    framed = decode(frame(VALUE, 42), (), CONTEXT)
    assert isinstance(plain, Command) and isinstance(framed, Command)
    assert (plain.schema_id, framed.schema_id) == (None, 42)
    assert framed._replace(schema_id=None) == plain
    assert unframe(frame(VALUE, 42)) == (VALUE, 42)
    assert unframe(VALUE) == (VALUE, None)


def test_a_framed_rejection_keeps_its_schema_id() -> None:
    bad = orjson.dumps(
        {
            "message_id": "m-2",
            "organization_id": "org_1",
            "customer": {"external_id": "cus_1", "x": 1, "timezone": "Mars/Olympus"},
        }
    )
    rejected = decode(frame(bad, 2**32 - 1), (), CONTEXT)
    assert isinstance(rejected, Rejection)
    assert rejected.schema_id == 2**32 - 1
    assert decode(bad, (), CONTEXT) == rejected._replace(schema_id=None)


@pytest.mark.parametrize("value", [b"\x00", b"\x00\x00\x00\x00\x07", b"\x00\x00\x00"])
def test_byte_zero_without_a_frame_and_payload_is_invalid_json(value: bytes) -> None:
    decoded = decode(value, (), CONTEXT)
    assert isinstance(decoded, DeadLetter)
    assert decoded.reason == DlqReason.INVALID_JSON


def test_a_frame_around_something_that_is_not_json_is_invalid_json() -> None:
    decoded = decode(frame(b"\xff\xfe not json", 1), (), CONTEXT)
    assert isinstance(decoded, DeadLetter) and decoded.reason == DlqReason.INVALID_JSON


class _Registry(BaseHTTPRequestHandler):
    """The documented subset: POST /subjects/{subject}/versions {"schemaType", "schema"} → {"id"}, the same
    schema answering the same id; GET /subjects; 422 error_code 42201 for a schema that does not parse."""

    schemas: ClassVar[dict[str, int]] = {}
    subjects: ClassVar[dict[str, list[str]]] = {}
    content_types: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/subjects":
            self._answer(200, sorted(self.subjects))
        else:
            self._answer(404, {"error_code": 40401, "message": "Subject not found"})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
            self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
            return
        self.content_types.append(self.headers.get("Content-Type", ""))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            json.loads(body["schema"])
            assert body.get("schemaType") == "JSON"
        except (KeyError, ValueError, AssertionError):
            self._answer(422, {"error_code": 42201, "message": "Invalid schema"})
            return
        schema_id = self.schemas.setdefault(body["schema"], len(self.schemas) + 1)
        versions = self.subjects.setdefault(unquote(parts[1]), [])
        if body["schema"] not in versions:
            versions.append(body["schema"])
        self._answer(200, {"id": schema_id})


@pytest.fixture
def registry() -> Iterator[str]:
    _Registry.schemas, _Registry.subjects, _Registry.content_types = {}, {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_schema_register_puts_each_payload_schema_under_its_topic_value_subject(
    registry: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMMANDS_TOPIC", raising=False)
    monkeypatch.setenv("EVENTS_TOPIC", "billing.customer-events")
    assert main(["schema", "register", "--registry", registry]) == 0
    assert main(["schema", "register", "--registry", registry + "/"]) == 0  # repeatable: same ids, no new version
    assert _Registry.subjects == {
        "customers.upsert.v1-value": [(SCHEMAS / "command.schema.json").read_text()],
        "billing.customer-events-value": [(SCHEMAS / "events.schema.json").read_text()],
    }
    assert set(_Registry.content_types) == {"application/vnd.schemaregistry.v1+json"}
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[:2]
        == lines[2:]
        == [
            "customers.upsert.v1-value: schema id 1",
            "billing.customer-events-value: schema id 2",
        ]
    )


def test_schema_register_reports_a_refusal_and_fails(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "command.schema.json").write_text("{not json")
    (tmp_path / "events.schema.json").write_text("{}")
    assert main(["schema", "register", "--registry", registry, "--schemas", str(tmp_path)]) == 1
    assert "HTTP 422 error_code 42201: Invalid schema" in capsys.readouterr().err


def test_schema_register_reports_an_unreachable_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "register", "--registry", "http://127.0.0.1:9"]) == 1
    assert "registry unreachable" in capsys.readouterr().err
