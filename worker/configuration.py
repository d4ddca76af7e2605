"""What is read once at start, from the settings' files: a bad file stops the worker before it connects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog

from worker.contract.connections import Connections, load_connections
from worker.contract.decode import DecodeContext
from worker.security import SigningKeys, load_signing_keys, unsigned_provider_organizations
from worker.settings import Settings

log = structlog.get_logger("worker.app")


@dataclass(frozen=True, slots=True)
class Configuration:
    """What is read once at start: a bad file stops the worker before it connects to anything."""

    settings: Settings
    connections: Connections
    signing_keys: SigningKeys

    def decode_context(self) -> DecodeContext:
        return DecodeContext(
            signing_keys=self.signing_keys,
            connections=self.connections,
            max_clock_skew=timedelta(seconds=self.settings.max_clock_skew),
        )


def load_configuration(settings: Settings) -> Configuration:
    connections = load_connections(settings.providers_file)
    keys = load_signing_keys(settings.signing_keys_file, require_signatures=settings.require_signatures)
    unsigned = unsigned_provider_organizations(keys, (c.organization_id for c in connections.all))
    if unsigned:
        log.warning(
            "provider_organizations_without_signing_keys",
            organizations=unsigned,
            hint="their commands are accepted unsigned; set SIGNING_KEYS_FILE keys or REQUIRE_SIGNATURES=true",
        )
    return Configuration(settings=settings, connections=connections, signing_keys=keys)
