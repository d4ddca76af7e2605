"""The console's sign-in rules: hashed tokens with roles, and proxy identity believed only from trusted addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.console.auth import Identity, ProxyTrust, Role, SessionStore, TokenStore, hash_token, parse_networks
from worker.errors import ConfigurationError

ERIN = Identity("erin", Role.VIEWER, "token")


def _store(tmp_path: Path, text: str) -> TokenStore:
    path = tmp_path / "tokens.yaml"
    path.write_text(text, encoding="utf-8")
    return TokenStore.load(path)


def test_a_token_is_recognised_by_its_hash_with_its_role(tmp_path: Path) -> None:
    store = _store(
        tmp_path,
        f"tokens:\n  - {{name: alice, role: operator, sha256: {hash_token('s3cret-a')}}}\n"
        f"  - {{name: bob, role: viewer, sha256: {hash_token('s3cret-b').upper()}}}\n",
    )
    alice, bob = store.identify("s3cret-a"), store.identify("s3cret-b")
    assert alice is not None and (alice.actor, alice.role, alice.can_act) == ("alice", Role.OPERATOR, True)
    assert bob is not None and (bob.actor, bob.role, bob.can_act) == ("bob", Role.VIEWER, False)
    assert store.identify("s3cret-c") is None
    assert store.identify(hash_token("s3cret-a")) is None  # the stored hash is not itself a token


def test_no_tokens_file_lets_nobody_in() -> None:
    assert TokenStore.load(None).identify("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: {}", "expected `tokens:`"),
        ("tokens:\n  - {name: a, role: admin, sha256: " + "0" * 64 + "}", "role must be viewer or operator"),
        ("tokens:\n  - {name: a, role: viewer, sha256: abc}", "sha256 must be 64 hex digits"),
        ("tokens:\n  - {role: viewer, sha256: " + "0" * 64 + "}", "name is required"),
        ("tokens: [", "cannot read"),
    ],
)
def test_a_bad_tokens_file_is_a_configuration_error_that_quotes_no_secret(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        _store(tmp_path, text)
    assert "0" * 64 not in str(caught.value)


def test_proxy_headers_are_believed_only_from_trusted_addresses() -> None:
    trust = ProxyTrust(parse_networks("10.0.0.0/8, ::1"), "X-Forwarded-User", "X-Forwarded-Groups", "cw-operators")
    headers = {"X-Forwarded-User": "carol@example.org", "X-Forwarded-Groups": "staff, cw-operators"}
    carol = trust.identify("10.1.2.3", headers)
    assert carol is not None and carol.role is Role.OPERATOR and carol.via == "proxy"
    viewer = trust.identify("::1", {"X-Forwarded-User": "dave"})
    assert viewer is not None and viewer.role is Role.VIEWER
    assert trust.identify("192.168.1.1", headers) is None
    assert trust.identify(None, headers) is None
    assert trust.identify("10.1.2.3", {}) is None
    nobody = ProxyTrust((), "X-Forwarded-User", "X-Forwarded-Groups", "cw-operators")
    assert nobody.identify("127.0.0.1", headers) is None


def test_a_bad_trusted_proxy_entry_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CONSOLE_TRUSTED_PROXIES"):
        parse_networks("10.0.0.0/8, not-an-address")


def test_sessions_end_on_close_and_on_expiry() -> None:
    sessions = SessionStore(ttl_seconds=60)
    key, session = sessions.open(ERIN)
    assert sessions.get(key) is session and len(session.csrf) >= 32
    sessions.close(key)
    assert sessions.get(key) is None
    expired = SessionStore(ttl_seconds=-1)
    old, _ = expired.open(ERIN)
    assert expired.get(old) is None


def test_hash_token_prints_a_line_the_tokens_file_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from worker.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("my-long-random-token\n"))
    assert main(["console", "hash-token", "--name", "ops-frank", "--role", "operator", "--stdin"]) == 0
    line = capsys.readouterr().out
    assert "my-long-random-token" not in line
    frank = _store(tmp_path, "tokens:\n" + line).identify("my-long-random-token")
    assert frank is not None and (frank.actor, frank.role) == ("ops-frank", Role.OPERATOR)
    assert main(["console", "hash-token", "--name", "ops-gina"]) == 0  # a new token: on stderr, shown once
    printed = capsys.readouterr()
    token = printed.err.strip().splitlines()[-1]
    gina = _store(tmp_path, "tokens:\n" + printed.out).identify(token)
    assert gina is not None and gina.role is Role.VIEWER
