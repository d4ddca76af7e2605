"""`customer-worker console` (the operators' web console, docs/console.md) and `console hash-token`."""

from __future__ import annotations

import argparse
import asyncio
import sys


def add_console(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = commands.add_parser(
        "console",
        help="serve the operators' web console (CONSOLE_PORT)",
        description="Serves the operator console on CONSOLE_HOST:CONSOLE_PORT (default 127.0.0.1:8090) and runs the "
        "replay, republish and retry jobs started from it. Needs DATABASE_URL and the Kafka settings. Sign-in: "
        "tokens of CONSOLE_TOKENS_FILE, or identity headers from CONSOLE_TRUSTED_PROXIES. See docs/console.md.",
    )
    console.set_defaults(func=cmd_console)
    actions = console.add_subparsers(dest="console_command", required=False)
    hashing = actions.add_parser(
        "hash-token",
        help="print a token's line for CONSOLE_TOKENS_FILE (a new random token unless one is read from stdin)",
    )
    hashing.add_argument("--name", required=True, help="who the token is for (shown in the audit log)")
    hashing.add_argument("--role", choices=["viewer", "operator"], default="viewer", help="default: viewer")
    hashing.add_argument("--stdin", action="store_true", help="hash the token read from stdin instead of a new one")
    hashing.set_defaults(func=cmd_console_hash_token)


def cmd_console(_: argparse.Namespace) -> int:
    from worker.cli.commands import _settings
    from worker.console.server import serve
    from worker.observability import configure_logging
    from worker.settings import ConsoleSettings, DatabaseSettings, KafkaSettings

    database, kafka, console = _settings(DatabaseSettings), _settings(KafkaSettings), _settings(ConsoleSettings)
    configure_logging("INFO", "console" if sys.stderr.isatty() else "json")
    return asyncio.run(serve(database.database_url, console, kafka))


def cmd_console_hash_token(args: argparse.Namespace) -> int:
    from worker.console.auth import hash_token, new_token

    token = sys.stdin.readline().strip() if args.stdin else new_token()
    if not token:
        print("console hash-token: empty token on stdin", file=sys.stderr)
        return 2
    if not args.stdin:
        print(f"# the token (give it to {args.name}; it is shown once, only its hash is kept):", file=sys.stderr)
        print(token, file=sys.stderr)
    print(f"  - {{name: {args.name!r}, role: {args.role}, sha256: {hash_token(token)}}}")
    return 0
