"""Producer authentication (SPEC §8, §11): HMAC-SHA256 over the exact value bytes, key rotation, the rejection."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

from worker.contract.codes import DlqReason
from worker.contract.connections import Connections
from worker.contract.decode import Command, DeadLetter, DecodeContext, Decoded, Rejection, decode
from worker.errors import ConfigurationError
from worker.security import SIGNATURE_HEADER, SigningKeys, load_signing_keys, sign

SIGNED_ORG: Final = "org_signed"
UNSIGNED_ORG: Final = "org_open"
CURRENT_KEY: Final = b"current-key-6f1d2a"
PREVIOUS_KEY: Final = b"previous-key-93be41"
FORGED_KEY: Final = b"forged-key-000000"
KEYS: Final = SigningKeys({SIGNED_ORG: [CURRENT_KEY, PREVIOUS_KEY]})
INVALID_SIGNATURE: Final = {"base": ["invalid_signature"]}
TRACEPARENT: Final = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def context(keys: SigningKeys = KEYS) -> DecodeContext:
    return DecodeContext(signing_keys=keys, connections=Connections.empty())


def command(organization_id: str = SIGNED_ORG, **customer: Any) -> bytes:
    return orjson.dumps(
        {
            "message_id": "msg-1",
            "organization_id": organization_id,
            "customer": {"external_id": "cus_001", "name": "Acme", **customer},
        }
    )


def signed_with(key: bytes, value: bytes) -> list[tuple[str, bytes]]:
    return [(SIGNATURE_HEADER, sign(key, value)), ("traceparent", TRACEPARENT.encode())]


def assert_signature_rejection(outcome: Decoded) -> Rejection:
    assert isinstance(outcome, Rejection), outcome
    assert outcome.errors == INVALID_SIGNATURE
    assert outcome.record_as_processed is False
    return outcome


def test_sign_is_the_hex_hmac_sha256_of_the_value() -> None:
    value = command()
    expected = hmac.new(CURRENT_KEY, value, hashlib.sha256).hexdigest()
    assert sign(CURRENT_KEY, value) == b"sha256=" + expected.encode()


def test_valid_signature_is_accepted() -> None:
    value = command()
    outcome = decode(value, signed_with(CURRENT_KEY, value), context())
    assert isinstance(outcome, Command), outcome
    assert outcome.traceparent == TRACEPARENT


def test_rotated_second_key_is_accepted() -> None:
    value = command()
    assert isinstance(decode(value, signed_with(PREVIOUS_KEY, value), context()), Command)


def test_signature_under_a_key_of_another_organization_is_rejected() -> None:
    other = SigningKeys({SIGNED_ORG: [CURRENT_KEY], "org_b": [FORGED_KEY]})
    value = command()
    assert_signature_rejection(decode(value, signed_with(FORGED_KEY, value), context(other)))


def test_wrong_signature_is_rejected() -> None:
    value = command()
    outcome = assert_signature_rejection(decode(value, signed_with(FORGED_KEY, value), context()))
    assert (outcome.message_id, outcome.organization_id, outcome.external_id) == ("msg-1", SIGNED_ORG, "cus_001")
    assert outcome.traceparent == TRACEPARENT


def test_missing_signature_is_rejected() -> None:
    assert_signature_rejection(decode(command(), [("traceparent", TRACEPARENT.encode())], context()))


def test_signature_of_the_same_json_written_differently_is_rejected() -> None:
    value = command()
    reformatted = json.dumps(orjson.loads(value), indent=2).encode()
    assert orjson.loads(reformatted) == orjson.loads(value)
    assert_signature_rejection(decode(reformatted, signed_with(CURRENT_KEY, value), context()))


TAMPERINGS = [
    pytest.param(lambda v: v.replace(b'"Acme"', b'"Acne"'), id="one-letter-of-the-name"),
    pytest.param(lambda v: v.replace(b'"msg-1"', b'"msg-2"'), id="message-id"),
    pytest.param(lambda v: v.replace(b'"cus_001"', b'"cus_002"'), id="external-id"),
    pytest.param(lambda v: v + b" ", id="trailing-space"),
    pytest.param(lambda v: b"\n" + v, id="leading-newline"),
]


@pytest.mark.parametrize("tamper", TAMPERINGS)
def test_a_changed_byte_in_the_value_is_rejected(tamper: Any) -> None:
    value = command()
    tampered: bytes = tamper(value)
    assert tampered != value
    assert orjson.loads(tampered)["customer"]["external_id"].startswith("cus_"), "still a readable command"
    assert_signature_rejection(decode(tampered, signed_with(CURRENT_KEY, value), context()))


def _digest(value: bytes) -> bytes:
    return hmac.new(CURRENT_KEY, value, hashlib.sha256).hexdigest().encode()


MALFORMED = [
    pytest.param(_digest, id="no-prefix"),
    pytest.param(lambda v: b"sha1=" + _digest(v), id="other-algorithm-prefix"),
    pytest.param(lambda v: b"sha256:" + _digest(v), id="colon-instead-of-equals"),
    pytest.param(lambda v: b"sha256=" + _digest(v)[:-1], id="63-hex-chars"),
    pytest.param(lambda v: b"sha256=" + _digest(v) + b"0", id="65-hex-chars"),
    pytest.param(lambda v: b"sha256=" + b"g" * 64, id="non-hex"),
    pytest.param(lambda v: b"sha256=" + b"0" * 64, id="zero-digest"),
    pytest.param(lambda v: b"sha256=", id="prefix-only"),
    pytest.param(lambda v: b"", id="empty"),
    pytest.param(lambda v: b"sha256=" + hmac.new(CURRENT_KEY, v, hashlib.sha256).digest(), id="raw-digest-bytes"),
    pytest.param(lambda v: b"sha256=" + b"\xff" * 64, id="non-ascii"),
]


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_signature_header_is_rejected(header: Any) -> None:
    value = command()
    assert_signature_rejection(decode(value, [(SIGNATURE_HEADER, header(value))], context()))


def test_signature_rejection_reports_only_invalid_signature() -> None:
    """Even with a body full of errors, an invalid occurred_at and an unknown connection (SPEC §11: alone)."""
    value = orjson.dumps(
        {
            "message_id": "msg-1",
            "organization_id": SIGNED_ORG,
            "occurred_at": "not a timestamp",
            "customer": {
                "currency": "usd",
                "email": "a@b.c,,",
                "metadata": [{"key": "k" * 21}],
                "billing_configuration": {"payment_provider": "stripe", "sync_with_provider": True},
            },
        }
    )
    outcome = assert_signature_rejection(decode(value, [(SIGNATURE_HEADER, sign(FORGED_KEY, value))], context()))
    assert outcome.external_id is None
    assert outcome.unknown_fields == 0


def test_a_validation_rejection_is_recorded_as_processed() -> None:
    value = command(currency="usd")
    outcome = decode(value, signed_with(CURRENT_KEY, value), context())
    assert isinstance(outcome, Rejection)
    assert outcome.errors == {"currency": ["value_is_invalid"]}
    assert outcome.record_as_processed is True


def test_signature_is_not_checked_before_the_envelope_is_readable() -> None:
    """Unreadable records go to the DLQ whatever their signature: they cannot be answered per customer."""
    outcome = decode(b"not json", [], context())
    assert isinstance(outcome, DeadLetter) and outcome.reason is DlqReason.INVALID_JSON
    unreadable = orjson.dumps({"organization_id": SIGNED_ORG, "customer": {}})
    outcome = decode(unreadable, [], context())
    assert isinstance(outcome, DeadLetter) and outcome.reason is DlqReason.INVALID_ENVELOPE


def test_org_without_keys_needs_no_signature() -> None:
    value = command(UNSIGNED_ORG)
    assert isinstance(decode(value, [], context()), Command)
    assert isinstance(decode(value, [(SIGNATURE_HEADER, b"sha256=garbage")], context()), Command)


def test_org_without_keys_is_rejected_when_signatures_are_required() -> None:
    keys = SigningKeys({SIGNED_ORG: [CURRENT_KEY]}, require_signatures=True)
    value = command(UNSIGNED_ORG)
    assert_signature_rejection(decode(value, [], context(keys)))
    # No key exists to sign under, so no signature can pass.
    assert_signature_rejection(decode(value, signed_with(CURRENT_KEY, value), context(keys)))
    signed = command(SIGNED_ORG)
    assert isinstance(decode(signed, signed_with(CURRENT_KEY, signed), context(keys)), Command)


def test_empty_key_list_counts_as_no_keys() -> None:
    keys = SigningKeys({UNSIGNED_ORG: []})
    assert keys.first_key(UNSIGNED_ORG) is None
    assert isinstance(decode(command(UNSIGNED_ORG), [], context(keys)), Command)


def test_first_key_is_the_signing_key() -> None:
    assert KEYS.first_key(SIGNED_ORG) == CURRENT_KEY
    assert KEYS.first_key(UNSIGNED_ORG) is None


def test_secrets_are_not_in_repr() -> None:
    for text in (repr(KEYS), str(KEYS), repr(context())):
        assert CURRENT_KEY.decode() not in text
        assert PREVIOUS_KEY.decode() not in text
    assert "organizations=1" in repr(KEYS)


# --- load_signing_keys (SPEC §8, §11: YAML or JSON, {organization_id: [secret, ...]}) -------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_from_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "keys.yaml", "org_a:\n  - first-secret\n  - second-secret\norg_b: [only-secret]\n")
    keys = load_signing_keys(path, require_signatures=True)
    assert keys.require_signatures is True
    assert keys.first_key("org_a") == b"first-secret"
    value = command("org_a")
    assert keys.verify("org_a", value, sign(b"second-secret", value))
    assert keys.verify("org_b", value, sign(b"only-secret", value))
    assert not keys.verify("org_b", value, sign(b"first-secret", value))


def test_load_from_json(tmp_path: Path) -> None:
    path = write(tmp_path, "keys.json", json.dumps({"org_a": ["json-secret", "older"], "org_b": ["b-secret"]}))
    keys = load_signing_keys(path, require_signatures=False)
    assert keys.require_signatures is False
    assert keys.first_key("org_a") == b"json-secret"
    assert keys.first_key("org_b") == b"b-secret"


def test_non_ascii_secret_is_utf8(tmp_path: Path) -> None:
    keys = load_signing_keys(write(tmp_path, "keys.yaml", "org_a: [clé-secrète]\n"), require_signatures=False)
    assert keys.first_key("org_a") == "clé-secrète".encode()


def test_no_file_means_no_keys() -> None:
    keys = load_signing_keys(None, require_signatures=True)
    assert keys.require_signatures is True
    assert not keys.verify("org_a", b"{}", None)
    assert load_signing_keys(None, require_signatures=False).verify("org_a", b"{}", None)


def test_empty_file_means_no_keys(tmp_path: Path) -> None:
    keys = load_signing_keys(write(tmp_path, "keys.yaml", ""), require_signatures=False)
    assert keys.first_key("org_a") is None


SECRET: Final = "sup3r-s3cret-value"

MALFORMED_FILES = [
    pytest.param(f"org_a: [{SECRET}\n", id="unclosed-flow-list"),
    pytest.param(f'{{"org_a": ["{SECRET}"]', id="truncated-json"),
    pytest.param(f"- {SECRET}\n", id="top-level-list"),
    pytest.param(f"{SECRET}\n", id="top-level-string"),
    pytest.param(f"org_a: {SECRET}\n", id="secret-not-in-a-list"),
    pytest.param("org_a: []\n", id="empty-list"),
    pytest.param("org_a:\n", id="null-list"),
    pytest.param(f"org_a: [{SECRET}, 12345]\n", id="non-string-key"),
    pytest.param(f'org_a: ["{SECRET}", ""]\n', id="empty-string-key"),
    pytest.param(f"org_a: [{{nested: {SECRET}}}]\n", id="mapping-as-key"),
    pytest.param(f"123: [{SECRET}]\n", id="numeric-organization"),
    pytest.param(f"org_a: [{SECRET}]\n\tbad: indentation\n", id="tab-indentation"),
]


@pytest.mark.parametrize("text", MALFORMED_FILES)
def test_malformed_file_is_a_configuration_error_naming_the_setting(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "keys.yaml", text)
    with pytest.raises(ConfigurationError) as raised:
        load_signing_keys(path, require_signatures=False)
    message = str(raised.value)
    assert "SIGNING_KEYS_FILE" in message
    assert SECRET not in message
    # A chained YAML error would print the offending line (the secret) in a traceback.
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SIGNING_KEYS_FILE") as raised:
        load_signing_keys(tmp_path / "absent.yaml", require_signatures=False)
    assert "absent.yaml" in str(raised.value)


def test_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SIGNING_KEYS_FILE"):
        load_signing_keys(tmp_path, require_signatures=False)


def test_loaded_keys_do_not_show_secrets(tmp_path: Path) -> None:
    keys = load_signing_keys(write(tmp_path, "keys.yaml", f"org_a: [{SECRET}]\n"), require_signatures=False)
    assert SECRET not in repr(keys) and SECRET not in str(keys)
