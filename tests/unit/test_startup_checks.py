"""Issue 9, outcomes 8 and 10 at start: settings validated without echoing them, `DATABASE_URL` kept secret, and
one warning for organizations with provider connections whose commands are accepted unsigned."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from worker.app import load_configuration
from worker.settings import Settings, describe_errors

DSN = "postgresql://worker:pa55word@db.internal:5432/customers"


def settings(**values: object) -> Settings:
    return Settings(**{"database_url": DSN, "kafka_bootstrap_servers": "broker:9092", **values})  # type: ignore[arg-type]


def test_database_url_is_a_secret() -> None:
    loaded = settings()
    assert isinstance(loaded.database_url, SecretStr)
    assert loaded.database_url.get_secret_value() == DSN
    assert "pa55word" not in repr(loaded) and "pa55word" not in str(loaded.model_dump())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("database_url", "garbage"),
        ("database_url", "mysql://worker:pa55word@db/customers"),
        ("database_url", "postgresql://worker:pa55word@db:notaport/customers"),
        ("database_url", "postgresql://db:0/customers"),
        ("kafka_bootstrap_servers", "broker:notaport"),
        ("kafka_bootstrap_servers", "broker:65536"),
        ("kafka_bootstrap_servers", ""),
        ("kafka_bootstrap_servers", "pa55word@broker:9092"),
    ],
)
def test_malformed_settings_name_the_setting_without_the_value(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(**{name: value})
    message = describe_errors(caught.value)
    assert message.startswith(name.upper() + ":")
    assert "pa55word" not in message and (not value or value not in message)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("database_url", "postgres://worker@db"),
        ("database_url", "postgresql://worker@db1:5432,db2:5433/customers?target_session_attrs=read-write"),
        ("database_url", "postgresql://postgres:@/postgres?host=/var/run/postgresql"),
        ("database_url", "postgresql://worker@[::1]:5432/customers"),
        ("kafka_bootstrap_servers", "broker-1:9092, broker-2:9092,[::1]:9093,broker-3"),
    ],
)
def test_well_formed_settings_are_accepted(name: str, value: str) -> None:
    settings(**{name: value})


def _providers(tmp_path: Path, *organizations: str) -> Path:
    path = tmp_path / "providers.yaml"
    entries = "".join(
        f"  - organization_id: {org}\n    code: stripe_{index}\n    provider: stripe\n"
        "    secret_env: STARTUP_TEST_KEY\n"
        for index, org in enumerate(organizations)
    )
    path.write_text(f"connections:\n{entries}", encoding="utf-8")
    return path


def test_unsigned_provider_organizations_get_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARTUP_TEST_KEY", "sk_test_x")
    keys = tmp_path / "keys.yaml"
    keys.write_text("org_signed: [key-1]\n", encoding="utf-8")
    providers = _providers(tmp_path, "org_signed", "org_b", "org_a", "org_a")
    with capture_logs() as logs:
        load_configuration(settings(providers_file=providers, signing_keys_file=keys))
    warnings = [entry for entry in logs if entry["event"] == "provider_organizations_without_signing_keys"]
    assert len(warnings) == 1
    assert warnings[0]["organizations"] == ["org_a", "org_b"]
    assert warnings[0]["log_level"] == "warning"


@pytest.mark.parametrize("require", [True, False])
def test_no_warning_when_signatures_are_required_or_every_organization_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, require: bool
) -> None:
    monkeypatch.setenv("STARTUP_TEST_KEY", "sk_test_x")
    keys = tmp_path / "keys.yaml"
    keys.write_text("org_signed: [key-1]\n", encoding="utf-8")
    organizations = ("org_signed", "org_other") if require else ("org_signed",)
    with capture_logs() as logs:
        load_configuration(
            settings(
                providers_file=_providers(tmp_path, *organizations), signing_keys_file=keys, require_signatures=require
            )
        )
    assert not [entry for entry in logs if entry["event"] == "provider_organizations_without_signing_keys"]
