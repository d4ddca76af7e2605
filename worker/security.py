"""Producer authentication (SPEC §8): HMAC-SHA256 of the exact value bytes, per organization, with key rotation."""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from worker.errors import ConfigurationError, yaml_problem

SIGNATURE_HEADER = "x-signature"
_PREFIX = b"sha256="
_DIGEST_SIZE = hashlib.sha256().digest_size


class SigningKeys:
    """Secrets per organization; several per organization so keys can be rotated without downtime."""

    __slots__ = ("_keyed", "_keys", "require_signatures")

    def __init__(self, keys: Mapping[str, list[bytes]], *, require_signatures: bool = False) -> None:
        self._keys = {org: tuple(secrets) for org, secrets in keys.items() if secrets}
        # Keyed once: copying a keyed HMAC skips the key schedule and OpenSSL's digest lookup on every command.
        self._keyed = {
            org: tuple(hmac.new(key, digestmod=hashlib.sha256) for key in secrets)
            for org, secrets in self._keys.items()
        }
        self.require_signatures = require_signatures

    def __repr__(self) -> str:
        return f"SigningKeys(organizations={len(self._keys)}, require_signatures={self.require_signatures})"

    def organizations(self) -> frozenset[str]:
        return frozenset(self._keys)

    def first_key(self, organization_id: str) -> bytes | None:
        keys = self._keys.get(organization_id)
        return keys[0] if keys else None

    def verify(self, organization_id: str, value: bytes, header: bytes | None) -> bool:
        """True when the command may be processed: signed under one of the organization's keys, or unsigned
        for an organization without keys while signatures are not required."""
        keyed = self._keyed.get(organization_id)
        if not keyed:
            return not self.require_signatures
        if header is None or not header.startswith(_PREFIX):
            return False
        try:
            presented = binascii.a2b_hex(header[len(_PREFIX) :].strip())
        except (binascii.Error, ValueError):
            return False
        if len(presented) != _DIGEST_SIZE:
            return False
        # Each comparison is constant-time; stopping at the matching key tells a forger nothing (a forgery matches
        # none, and then every key is tried).
        for keyed_hmac in keyed:
            mac = keyed_hmac.copy()
            mac.update(value)
            if hmac.compare_digest(mac.digest(), presented):
                return True
        return False


def unsigned_provider_organizations(keys: SigningKeys, provider_organizations: Iterable[str]) -> list[str]:
    """Organizations with provider connections (they can make the worker call a payment provider) whose commands
    are accepted unsigned: no keys of their own while `REQUIRE_SIGNATURES` is false. Sorted; empty when signatures
    are required."""
    if keys.require_signatures:
        return []
    return sorted(set(provider_organizations) - keys.organizations())


def sign(key: bytes, value: bytes) -> bytes:
    """The `x-signature` header value for a command value."""
    return _PREFIX + hmac.new(key, value, hashlib.sha256).hexdigest().encode("ascii")


def load_signing_keys(path: Path | None, *, require_signatures: bool) -> SigningKeys:
    """Read `SIGNING_KEYS_FILE` (`{organization_id: [secret, ...]}`, YAML or JSON)."""
    if path is None:
        return SigningKeys({}, require_signatures=require_signatures)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"SIGNING_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"SIGNING_KEYS_FILE: {path} is not valid YAML or JSON ({yaml_problem(exc)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"SIGNING_KEYS_FILE: {path} must be a mapping of organization_id to a list of keys")
    keys: dict[str, list[bytes]] = {}
    for org, secrets in raw.items():
        if not isinstance(org, str) or not isinstance(secrets, list) or not secrets:
            raise ConfigurationError(
                f"SIGNING_KEYS_FILE: entry {org!r} must map an organization_id to a non-empty list of keys"
            )
        if not all(isinstance(secret, str) and secret for secret in secrets):
            raise ConfigurationError(f"SIGNING_KEYS_FILE: keys of {org!r} must be non-empty strings")
        keys[org] = [secret.encode("utf-8") for secret in secrets]
    return SigningKeys(keys, require_signatures=require_signatures)
