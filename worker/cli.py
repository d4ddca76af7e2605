"""The `customer-worker` command (SPEC §10). Each subcommand reads only the settings it needs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from worker.errors import ConfigurationError
from worker.settings import DatabaseSettings, KafkaSettings, Settings, SigningSettings, describe_errors

EXIT_CONFIG = 2
S = TypeVar("S", bound=BaseSettings)


def _settings(kind: Callable[[], S]) -> S:
    try:
        return kind()
    except ValidationError as exc:
        raise ConfigurationError(f"configuration error: {describe_errors(exc)}") from None


def cmd_run(_: argparse.Namespace) -> int:
    from worker.app import Worker, load_configuration
    from worker.observability import configure_logging

    settings = _settings(Settings)
    configure_logging(settings.log_level, settings.log_format)
    configuration = load_configuration(settings)
    return asyncio.run(Worker(configuration).run())


def cmd_migrate(_: argparse.Namespace) -> int:
    from worker.store.migrations import migrate_dsn

    settings = _settings(DatabaseSettings)
    done = asyncio.run(migrate_dsn(settings.database_url))
    print(f"applied {len(done)} migration(s)" + "".join(f"\n  {m.version:04d}_{m.name}" for m in done))
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from worker.tools.topics import create_topics

    settings = _settings(KafkaSettings)
    created = asyncio.run(create_topics(settings, partitions=args.partitions, replication=args.replication))
    names = (settings.commands_topic, settings.events_topic, settings.dlq_topic)
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from worker.security import load_signing_keys
    from worker.tools.publish import publish_file

    settings = _settings(KafkaSettings)
    signing = _settings(SigningSettings)
    keys = load_signing_keys(signing.signing_keys_file, require_signatures=False)
    count = asyncio.run(publish_file(settings, args.file, keys))
    print(f"published {count} command(s) to {settings.commands_topic}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from worker.tools.dlq import ReplayFilter, replay

    settings = _settings(KafkaSettings)
    selection = ReplayFilter(
        reason=args.reason,
        organization_id=args.organization,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        partition=args.partition,
    )
    count = asyncio.run(replay(settings, selection))
    print(f"republished {count} record(s) from {settings.dlq_topic} to {settings.commands_topic}")
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from worker.tools.outbox import list_events, selection_of

    settings = _settings(DatabaseSettings)
    selection = selection_of(args.id, args.reason, args.event_type)
    for line in asyncio.run(list_events(settings.database_url, selection, args.limit)):
        print(line)
    return 0


def cmd_outbox_republish(args: argparse.Namespace) -> int:
    from worker.tools.outbox import republish, selection_of

    if not (args.all or args.id or args.reason or args.event_type):
        raise ConfigurationError("outbox republish: choose --all, or --id / --reason / --event-type")
    settings = _settings(DatabaseSettings)
    count = asyncio.run(republish(settings.database_url, selection_of(args.id, args.reason, args.event_type)))
    print(f"moved {count} parked event(s) back to the outbox; a running worker publishes them")
    return 0


def _add_outbox(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = commands.add_parser("outbox", help="events the broker refused for good (parked events)")
    actions = outbox.add_subparsers(dest="outbox_command", required=True)
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--id", type=int, action="append", help="a parked event's id (repeatable)")
    filters.add_argument("--reason", choices=["too_large", "invalid_record"], help="only this refusal reason")
    filters.add_argument("--event-type", help="only this event type, e.g. customer.rejected")
    listing = actions.add_parser(
        "list", parents=[filters], help="print parked events, one JSON object per line (payload left out)"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.set_defaults(func=cmd_outbox_list)
    again = actions.add_parser(
        "republish",
        parents=[filters],
        help="move parked events back to the outbox, to be published again by a running worker",
    )
    again.add_argument("--all", action="store_true", help="every parked event (no filter)")
    again.set_defaults(func=cmd_outbox_republish)


def cmd_dev(args: argparse.Namespace) -> int:
    from worker.observability import configure_logging
    from worker.tools.dev import default_data_dir, run_dev

    configure_logging("WARNING" if args.demo else "INFO", "console")
    return asyncio.run(run_dev(args.data_dir or default_data_dir(), demo=args.demo, partitions=args.partitions))


def cmd_schema(args: argparse.Namespace) -> int:
    from worker import schema

    written = schema.write(args.out)
    for path in written:
        print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from worker.tools import bench

    return bench.main(args)


def cmd_bench_validation(args: argparse.Namespace) -> int:
    from worker import bench_validation

    return bench_validation.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="customer-worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="run the worker").set_defaults(func=cmd_run)
    commands.add_parser("migrate", help="apply database migrations (idempotent)").set_defaults(func=cmd_migrate)

    topics = commands.add_parser("topics", help="manage topics").add_subparsers(dest="topics_command", required=True)
    create = topics.add_parser("create", help="create the three topics if missing")
    create.add_argument("--partitions", type=int, default=6)
    create.add_argument("--replication", type=int, default=1)
    create.set_defaults(func=cmd_topics_create)

    dev = commands.add_parser("dev", help="embedded PostgreSQL and broker, migrated, with the worker running")
    dev.add_argument("--demo", action="store_true", help="publish sample commands, print their events, stop")
    dev.add_argument("--data-dir", type=Path, default=None)
    dev.add_argument("--partitions", type=int, default=3)
    dev.set_defaults(func=cmd_dev)

    publish = commands.add_parser("publish", help="publish commands from a JSON-lines file ('-' for stdin)")
    publish.add_argument("file")
    publish.set_defaults(func=cmd_publish)

    dlq = commands.add_parser("dlq", help="dead-letter topic").add_subparsers(dest="dlq_command", required=True)
    replay = dlq.add_parser("replay", help="republish dead-lettered records to the commands topic")
    replay.add_argument(
        "--reason",
        choices=["invalid_json", "invalid_envelope", "too_large", "processing_error", "unreadable_record"],
    )
    replay.add_argument("--organization")
    replay.add_argument("--partition", type=int)
    replay.add_argument("--from-offset", type=int)
    replay.add_argument("--to-offset", type=int)
    replay.set_defaults(func=cmd_dlq_replay)

    _add_outbox(commands)

    bench = commands.add_parser("bench", help="end-to-end throughput and latency benchmark")
    from worker.tools.bench_args import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    validation = commands.add_parser("bench-validation", help="validation throughput on one core")
    from worker.bench_validation import add_arguments

    add_arguments(validation)
    validation.set_defaults(func=cmd_bench_validation)

    schema = commands.add_parser("schema", help="write JSON Schema and AsyncAPI files")
    schema.add_argument("--out", type=Path, default=_default_schema_dir())
    schema.set_defaults(func=cmd_schema)
    return parser


def _default_schema_dir() -> Path:
    checkout = Path(__file__).resolve().parents[1]
    return checkout / "schemas" if (checkout / "pyproject.toml").is_file() else Path.cwd() / "schemas"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
