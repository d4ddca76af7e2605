"""Payment provider connections (SPEC §9 `PROVIDERS_FILE`) and the connection lookup of SPEC §3 and §11.

The file is read and checked once at start; each connection's secret is read from the environment variable it
names and held as a `SecretStr`, so it never reaches a log line or a repr. Every lookup is scoped to one
organization: a command can never reach another organization's connection.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, ValidationError

from worker.contract.codes import ErrorCode
from worker.errors import ConfigurationError, yaml_problem

ProviderName = Literal["stripe", "adyen", "gocardless"]


class ConnectionConfig(BaseModel):
    """One entry of `connections:` as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    organization_id: str = Field(min_length=1, max_length=255)
    code: str = Field(min_length=1, max_length=255)
    provider: ProviderName
    secret_env: str = Field(min_length=1)
    api_base: HttpUrl | None = None
    rate_limit_per_second: float = Field(default=25.0, gt=0)
    # Stripe
    success_url: HttpUrl | None = None
    # Adyen
    merchant_account: str | None = None
    environment: Literal["test", "live", "sandbox"] | None = None
    live_url_prefix: str | None = None
    return_url: HttpUrl | None = None
    payment_link_amount: int = Field(default=0, ge=0)
    payment_link_currency: str = "EUR"


class ProvidersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    connections: list[ConnectionConfig] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Connection:
    config: ConnectionConfig
    secret: SecretStr

    @property
    def code(self) -> str:
        return self.config.code

    @property
    def provider(self) -> ProviderName:
        return self.config.provider

    @property
    def organization_id(self) -> str:
        return self.config.organization_id


@dataclass(frozen=True, slots=True)
class LookupFailure:
    code: ErrorCode


class ProviderRegistry:
    """All connections, indexed per organization."""

    def __init__(self, connections: list[Connection]) -> None:
        self._by_code: dict[tuple[str, str], Connection] = {}
        self._by_provider: dict[tuple[str, str], list[Connection]] = defaultdict(list)
        for connection in connections:
            key = (connection.organization_id, connection.code)
            if key in self._by_code:
                raise ConfigurationError(
                    f"PROVIDERS_FILE: connection code {connection.code!r} appears twice for one organization"
                )
            self._by_code[key] = connection
            self._by_provider[(connection.organization_id, connection.provider)].append(connection)
        self._connections = tuple(connections)

    @classmethod
    def empty(cls) -> ProviderRegistry:
        return cls([])

    @property
    def connections(self) -> tuple[Connection, ...]:
        return self._connections

    def get(self, organization_id: str, code: str) -> Connection | None:
        return self._by_code.get((organization_id, code))

    def lookup(self, organization_id: str, provider: str, code: str | None) -> Connection | LookupFailure:
        """SPEC §11: by code when one is given, else the organization's single connection of that provider."""
        if code is not None:
            found = self._by_code.get((organization_id, code))
            if found is None or found.provider != provider:
                return LookupFailure(ErrorCode.PAYMENT_PROVIDER_NOT_FOUND)
            return found
        candidates = self._by_provider.get((organization_id, provider), [])
        if not candidates:
            return LookupFailure(ErrorCode.PAYMENT_PROVIDER_NOT_FOUND)
        if len(candidates) > 1:
            return LookupFailure(ErrorCode.PAYMENT_PROVIDER_CODE_MISSING)
        return candidates[0]


def load_registry(path: Path | None, environ: Mapping[str, str] | None = None) -> ProviderRegistry:
    """Read `PROVIDERS_FILE`; raises ConfigurationError naming the file, entry or variable at fault."""
    if path is None:
        return ProviderRegistry.empty()
    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"PROVIDERS_FILE: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"PROVIDERS_FILE: {path} is not valid YAML or JSON ({yaml_problem(exc)})") from None
    try:
        parsed = ProvidersFile.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors())
        raise ConfigurationError(f"PROVIDERS_FILE: {path}: {where}") from None
    connections = []
    for config in parsed.connections:
        secret = env.get(config.secret_env)
        if not secret:
            raise ConfigurationError(
                f"PROVIDERS_FILE: connection {config.code!r} names secret_env {config.secret_env}, which is not set"
            )
        connections.append(Connection(config=config, secret=SecretStr(secret)))
    return ProviderRegistry(connections)
