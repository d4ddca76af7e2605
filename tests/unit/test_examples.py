"""The files of `examples/` load as the worker loads them: a providers file with one connection per provider, a
signing-keys file, and the dev stack's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from worker.contract.connections import LookupFailure, load_registry
from worker.security import load_signing_keys, sign
from worker.settings import Settings

EXAMPLES: Final = Path(__file__).resolve().parents[2] / "examples"


def _env_file(path: Path) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def test_the_providers_file_has_one_connection_per_provider() -> None:
    environ = {"STRIPE_ACME_KEY": "sk_test_x", "ADYEN_ACME_API_KEY": "adyen_x", "GOCARDLESS_GLOBEX_TOKEN": "gc_x"}
    registry = load_registry(EXAMPLES / "providers.yaml", environ)
    assert sorted(c.provider for c in registry.connections) == ["adyen", "gocardless", "stripe"]
    stripe = registry.lookup("org_acme", "stripe", None)
    assert not isinstance(stripe, LookupFailure)
    assert stripe.code == "stripe_main"


def test_the_signing_keys_file_signs_with_the_first_key() -> None:
    keys = load_signing_keys(EXAMPLES / "signing-keys.yaml", require_signatures=False)
    value = b'{"message_id": "m"}'
    assert keys.first_key("org_acme") == b"example-acme-key-2026-12"
    assert keys.verify("org_acme", value, sign(b"example-acme-key-2026-06", value))


def test_the_dev_settings_are_valid_and_name_files_that_exist() -> None:
    values = _env_file(EXAMPLES / "dev.env")
    settings = Settings.model_validate(
        {
            "database_url": "postgresql://postgres@127.0.0.1:5432/postgres",
            "kafka_bootstrap_servers": "127.0.0.1:9092",
            **{name.lower(): value for name, value in values.items()},
        }
    )
    assert settings.signing_keys_file is not None
    assert (EXAMPLES.parent / settings.signing_keys_file).is_file()
