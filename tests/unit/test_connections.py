"""`PROVIDERS_FILE` (SPEC §9, §11): loading, secrets from the environment, the lookup, and no secret in any text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import pytest
from pydantic import SecretStr

from worker.contract.codes import ErrorCode
from worker.contract.connections import Connection, ConnectionConfig, Connections, LookupFailure, load_connections
from worker.errors import ConfigurationError

STRIPE_SECRET: Final = "sk_test_51HxStripeSecretValue"
ADYEN_SECRET: Final = "AQEyhmfxAdyenSecretValue"
GOCARDLESS_SECRET: Final = "sandbox_GoCardlessSecretValue"
SECRETS: Final = (STRIPE_SECRET, ADYEN_SECRET, GOCARDLESS_SECRET)
ENVIRON: Final = {"ACME_STRIPE": STRIPE_SECRET, "ACME_ADYEN": ADYEN_SECRET, "BETA_GC": GOCARDLESS_SECRET}

YAML_FILE: Final = """
connections:
  - organization_id: org_acme
    code: stripe_main
    provider: stripe
    secret_env: ACME_STRIPE
    api_base: http://127.0.0.1:12111
    success_url: https://acme.example/thanks
  - organization_id: org_acme
    code: adyen_eu
    provider: adyen
    secret_env: ACME_ADYEN
    merchant_account: AcmeECOM
    environment: test
    live_url_prefix: null
    rate_limit_per_second: 5
  - organization_id: org_beta
    code: gc
    provider: gocardless
    secret_env: BETA_GC
    environment: sandbox
"""

CONNECTIONS: Final[list[dict[str, Any]]] = [
    {"organization_id": "org_acme", "code": "stripe_main", "provider": "stripe", "secret_env": "ACME_STRIPE"},
    {"organization_id": "org_acme", "code": "adyen_eu", "provider": "adyen", "secret_env": "ACME_ADYEN"},
    {"organization_id": "org_beta", "code": "gc", "provider": "gocardless", "secret_env": "BETA_GC"},
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def json_file(tmp_path: Path, connections: list[dict[str, Any]]) -> Path:
    return write(tmp_path, "providers.json", json.dumps({"connections": connections}))


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_load_from_yaml(tmp_path: Path) -> None:
    registry = load_connections(write(tmp_path, "providers.yaml", YAML_FILE), ENVIRON)
    assert [c.code for c in registry.all] == ["stripe_main", "adyen_eu", "gc"]
    stripe = registry.get("org_acme", "stripe_main")
    assert stripe is not None
    assert (stripe.organization_id, stripe.provider, stripe.code) == ("org_acme", "stripe", "stripe_main")
    assert stripe.secret.get_secret_value() == STRIPE_SECRET
    assert str(stripe.config.api_base) == "http://127.0.0.1:12111/"
    assert str(stripe.config.success_url) == "https://acme.example/thanks"
    adyen = registry.get("org_acme", "adyen_eu")
    assert adyen is not None
    assert adyen.secret.get_secret_value() == ADYEN_SECRET
    assert (adyen.config.merchant_account, adyen.config.environment) == ("AcmeECOM", "test")
    assert adyen.config.rate_limit_per_second == 5
    gocardless = registry.get("org_beta", "gc")
    assert gocardless is not None and gocardless.secret.get_secret_value() == GOCARDLESS_SECRET


def test_load_from_json(tmp_path: Path) -> None:
    registry = load_connections(json_file(tmp_path, CONNECTIONS), ENVIRON)
    assert {(c.organization_id, c.code, c.provider) for c in registry.all} == {
        ("org_acme", "stripe_main", "stripe"),
        ("org_acme", "adyen_eu", "adyen"),
        ("org_beta", "gc", "gocardless"),
    }
    assert registry.all[0].config.rate_limit_per_second == 25.0


def test_secret_is_read_from_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONLY_STRIPE", STRIPE_SECRET)
    path = json_file(tmp_path, [{**CONNECTIONS[0], "secret_env": "ONLY_STRIPE"}])
    connection = load_connections(path).get("org_acme", "stripe_main")
    assert connection is not None and connection.secret.get_secret_value() == STRIPE_SECRET


def test_an_explicit_environment_is_used_instead_of_the_process_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_STRIPE", "from-the-process")
    connection = load_connections(json_file(tmp_path, CONNECTIONS), ENVIRON).get("org_acme", "stripe_main")
    assert connection is not None and connection.secret.get_secret_value() == STRIPE_SECRET


def test_no_file_and_empty_file_give_no_connections(tmp_path: Path) -> None:
    assert load_connections(None, ENVIRON).all == ()
    assert load_connections(write(tmp_path, "providers.yaml", ""), ENVIRON).all == ()
    assert load_connections(write(tmp_path, "none.yaml", "connections: []\n"), ENVIRON).all == ()


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_missing_env_var_names_the_variable_and_no_secret(tmp_path: Path, value: str | None) -> None:
    environ = {name: secret for name, secret in ENVIRON.items() if name != "ACME_ADYEN"}
    if value is not None:
        environ["ACME_ADYEN"] = value
    with pytest.raises(ConfigurationError) as raised:
        load_connections(json_file(tmp_path, CONNECTIONS), environ)
    message = str(raised.value)
    assert "PROVIDERS_FILE" in message
    assert "ACME_ADYEN" in message
    assert "adyen_eu" in message
    assert_no_secret(message)
    assert_no_secret(repr(raised.value))


def test_duplicate_code_in_one_organization_is_an_error(tmp_path: Path) -> None:
    duplicate = [*CONNECTIONS, {**CONNECTIONS[1], "code": "stripe_main"}]
    with pytest.raises(ConfigurationError, match="PROVIDERS_FILE") as raised:
        load_connections(json_file(tmp_path, duplicate), ENVIRON)
    assert "stripe_main" in str(raised.value)
    assert_no_secret(str(raised.value))


def test_same_code_in_two_organizations_is_allowed(tmp_path: Path) -> None:
    connections = [*CONNECTIONS, {**CONNECTIONS[0], "organization_id": "org_beta"}]
    registry = load_connections(json_file(tmp_path, connections), ENVIRON)
    first, second = registry.get("org_acme", "stripe_main"), registry.get("org_beta", "stripe_main")
    assert first is not None and second is not None and first is not second


BAD_ENTRIES = [
    pytest.param({**CONNECTIONS[0], "provider": "paypal"}, "provider", id="unknown-provider"),
    pytest.param({**CONNECTIONS[0], "provider": "Stripe"}, "provider", id="provider-case"),
    pytest.param({k: v for k, v in CONNECTIONS[0].items() if k != "code"}, "code", id="missing-code"),
    pytest.param({**CONNECTIONS[0], "code": ""}, "code", id="empty-code"),
    pytest.param({**CONNECTIONS[0], "organization_id": ""}, "organization_id", id="empty-organization"),
    pytest.param({k: v for k, v in CONNECTIONS[0].items() if k != "secret_env"}, "secret_env", id="no-secret_env"),
    pytest.param({**CONNECTIONS[0], "api_base": "not a url"}, "api_base", id="bad-api-base"),
    pytest.param({**CONNECTIONS[0], "rate_limit_per_second": 0}, "rate_limit_per_second", id="zero-rate-limit"),
    pytest.param({**CONNECTIONS[0], "environment": "prod"}, "environment", id="bad-environment"),
    # A secret written into the file itself is refused, and not echoed.
    pytest.param({**CONNECTIONS[0], "secret": STRIPE_SECRET}, "secret", id="inline-secret"),
    pytest.param({**CONNECTIONS[0], "api_key": ADYEN_SECRET}, "api_key", id="inline-api-key"),
    pytest.param({**CONNECTIONS[0], "secret_env": 12}, "secret_env", id="secret_env-not-a-string"),
]


@pytest.mark.parametrize(("entry", "field"), BAD_ENTRIES)
def test_malformed_entry_is_a_configuration_error(tmp_path: Path, entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_connections(json_file(tmp_path, [entry]), ENVIRON)
    message = str(raised.value)
    assert "PROVIDERS_FILE" in message
    assert field in message
    assert_no_secret(message)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"connections:\n  - code: [{STRIPE_SECRET}\n", id="bad-yaml"),
        pytest.param(f'{{"connections": [{{"code": "{STRIPE_SECRET}"', id="truncated-json"),
        pytest.param(f"- {STRIPE_SECRET}\n", id="top-level-list"),
        pytest.param(f"connections: {STRIPE_SECRET}\n", id="connections-not-a-list"),
        pytest.param("connection: []\n", id="misspelt-key"),
    ],
)
def test_malformed_file_is_a_configuration_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigurationError, match="PROVIDERS_FILE") as raised:
        load_connections(write(tmp_path, "providers.yaml", text), ENVIRON)
    assert_no_secret(str(raised.value))
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PROVIDERS_FILE"):
        load_connections(tmp_path / "absent.yaml", ENVIRON)


def test_repr_and_str_never_show_a_secret(tmp_path: Path) -> None:
    registry = load_connections(write(tmp_path, "providers.yaml", YAML_FILE), ENVIRON)
    texts = [repr(registry), str(registry), repr(registry.all), str(registry.all)]
    for connection in registry.all:
        texts += [
            repr(connection),
            str(connection),
            f"{connection}",
            repr(connection.secret),
            str(connection.secret),
            repr(connection.config),
            connection.config.model_dump_json(),
            json.dumps(connection.config.model_dump(mode="json")),
        ]
    for text in texts:
        assert_no_secret(text)
    assert "**********" in repr(registry.all[0])


# --- the lookup (SPEC §11) -----------------------------------------------------------------------------------------


def make(organization_id: str, code: str, provider: str) -> Connection:
    config = ConnectionConfig.model_validate(
        {"organization_id": organization_id, "code": code, "provider": provider, "secret_env": "X"}
    )
    return Connection(config=config, secret=SecretStr("s"))


REGISTRY: Final = Connections(
    [
        make("org_acme", "stripe_main", "stripe"),
        make("org_acme", "adyen_eu", "adyen"),
        make("org_acme", "adyen_us", "adyen"),
        make("org_beta", "stripe_beta", "stripe"),
    ]
)
NOT_FOUND: Final = LookupFailure(ErrorCode.PAYMENT_PROVIDER_NOT_FOUND)
CODE_MISSING: Final = LookupFailure(ErrorCode.PAYMENT_PROVIDER_CODE_MISSING)


@pytest.mark.parametrize(
    ("organization_id", "provider", "code", "expected"),
    [
        pytest.param("org_acme", "stripe", None, "stripe_main", id="single-of-provider"),
        pytest.param("org_acme", "stripe", "stripe_main", "stripe_main", id="by-code"),
        pytest.param("org_acme", "adyen", "adyen_us", "adyen_us", id="by-code-among-two"),
        pytest.param("org_acme", "adyen", None, CODE_MISSING, id="two-without-code"),
        pytest.param("org_acme", "gocardless", None, NOT_FOUND, id="none-of-provider"),
        pytest.param("org_acme", "gocardless", "gc", NOT_FOUND, id="unknown-code"),
        pytest.param("org_acme", "stripe", "adyen_eu", NOT_FOUND, id="code-of-another-provider"),
        pytest.param("org_acme", "stripe", "stripe_beta", NOT_FOUND, id="code-of-another-organization"),
        pytest.param("org_beta", "stripe", None, "stripe_beta", id="other-organization-single"),
        pytest.param("org_beta", "adyen", None, NOT_FOUND, id="other-organization-none"),
        pytest.param("org_unknown", "stripe", None, NOT_FOUND, id="unknown-organization"),
    ],
)
def test_lookup(organization_id: str, provider: str, code: str | None, expected: str | LookupFailure) -> None:
    found = REGISTRY.lookup(organization_id, provider, code)
    if isinstance(expected, LookupFailure):
        assert found == expected
    else:
        assert isinstance(found, Connection)
        assert (found.organization_id, found.code) == (organization_id, expected)


def test_get_is_scoped_by_organization() -> None:
    assert REGISTRY.get("org_acme", "stripe_beta") is None
    found = REGISTRY.get("org_beta", "stripe_beta")
    assert found is not None and found.organization_id == "org_beta"


def test_duplicate_code_in_the_constructor_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="stripe_main"):
        Connections([make("org_acme", "stripe_main", "stripe"), make("org_acme", "stripe_main", "adyen")])


def test_empty_registry() -> None:
    registry = Connections.empty()
    assert registry.all == ()
    assert registry.lookup("org_acme", "stripe", None) == NOT_FOUND
