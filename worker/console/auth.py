"""Who may use the console: bearer tokens (stored hashed) or an authenticating proxy's identity headers, and the
sessions they open. Deny by default: nothing here grants access without one of the two."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

import yaml

from worker.errors import ConfigurationError

_HEX_SHA256: Final = frozenset("0123456789abcdef")


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Identity:
    actor: str
    role: Role
    via: str  # "token" or "proxy"

    @property
    def can_act(self) -> bool:
        return self.role is Role.OPERATOR


def hash_token(token: str) -> str:
    """What the tokens file stores: the token's SHA-256 in hex (a token is a long random secret, so a fast hash is
    enough; a password would need a slow one)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class _TokenEntry:
    name: str
    role: Role
    digest: bytes


class TokenStore:
    """The tokens of `CONSOLE_TOKENS_FILE`. A lookup compares against every entry in constant time."""

    def __init__(self, entries: list[_TokenEntry]) -> None:
        self._entries = entries

    @classmethod
    def empty(cls) -> TokenStore:
        return cls([])

    @classmethod
    def load(cls, path: Path | None) -> TokenStore:
        if path is None:
            return cls.empty()
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"CONSOLE_TOKENS_FILE: cannot read {path} ({type(exc).__name__})") from None
        items = document.get("tokens") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise ConfigurationError("CONSOLE_TOKENS_FILE: expected `tokens:` with a list of {name, role, sha256}")
        return cls([_entry(index, item) for index, item in enumerate(items)])

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, token: str) -> Identity | None:
        offered = hashlib.sha256(token.encode()).digest()
        found: _TokenEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(offered, entry.digest):
                found = entry
        return None if found is None else Identity(found.name, found.role, "token")


def _entry(index: int, item: object) -> _TokenEntry:
    where = f"CONSOLE_TOKENS_FILE: tokens[{index}]"
    if not isinstance(item, dict):
        raise ConfigurationError(f"{where}: expected a mapping with name, role and sha256")
    name, role, digest = item.get("name"), item.get("role"), str(item.get("sha256", "")).lower()
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{where}: name is required")
    if role not in (Role.VIEWER.value, Role.OPERATOR.value):
        raise ConfigurationError(f"{where}: role must be viewer or operator")
    if len(digest) != 64 or not set(digest) <= _HEX_SHA256:
        raise ConfigurationError(f"{where}: sha256 must be 64 hex digits (customer-worker console hash-token)")
    return _TokenEntry(name.strip(), Role(role), bytes.fromhex(digest))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    networks = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigurationError("CONSOLE_TRUSTED_PROXIES: each entry must be an address or a network") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class ProxyTrust:
    networks: tuple[Network, ...]
    user_header: str
    groups_header: str
    operator_group: str

    def trusts(self, remote: str | None) -> bool:
        if not self.networks or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def identify(self, remote: str | None, headers: dict[str, str]) -> Identity | None:
        """The proxy's user, only when the request comes from a trusted address and names one."""
        if not self.trusts(remote):
            return None
        user = headers.get(self.user_header, "").strip()
        if not user:
            return None
        groups = {group.strip() for group in headers.get(self.groups_header, "").split(",")}
        role = Role.OPERATOR if self.operator_group in groups else Role.VIEWER
        return Identity(user[:200], role, "proxy")


@dataclass(slots=True)
class Session:
    identity: Identity
    csrf: str
    expires_at: float


@dataclass(slots=True)
class SessionStore:
    """Server-side sessions keyed by a random id (the cookie): signing out ends one at once, and a console restart
    ends them all (operators sign in again)."""

    ttl_seconds: float
    _sessions: dict[str, Session] = field(default_factory=dict)

    def open(self, identity: Identity) -> tuple[str, Session]:
        self._prune()
        key = secrets.token_urlsafe(32)
        session = Session(identity, secrets.token_urlsafe(32), time.monotonic() + self.ttl_seconds)
        self._sessions[key] = session
        return key, session

    def get(self, key: str | None) -> Session | None:
        if not key:
            return None
        session = self._sessions.get(key)
        if session is None or session.expires_at < time.monotonic():
            self._sessions.pop(key, None)
            return None
        return session

    def close(self, key: str | None) -> None:
        if key:
            self._sessions.pop(key, None)

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [key for key, session in self._sessions.items() if session.expires_at < now]:
            del self._sessions[key]
