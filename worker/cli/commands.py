"""The subcommands of `customer-worker`: each imports what it needs when it runs, so `--help` stays fast."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from worker.errors import ConfigurationError
from worker.settings import DatabaseSettings, KafkaSettings, Settings, SigningSettings, describe_errors

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
S = TypeVar("S", bound=BaseSettings)


def _settings(kind: Callable[[], S]) -> S:
    try:
        return kind()
    except ValidationError as exc:
        raise ConfigurationError(f"configuration error: {describe_errors(exc)}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from worker.app import Worker, load_configuration
    from worker.observability import configure_logging
    from worker.tracing import configure_from_env, shutdown

    settings = _settings(Settings)
    if args.processes is not None:
        settings = settings.model_copy(update={"worker_processes": args.processes})
    configure_logging(settings.log_level, settings.log_format)
    configuration = load_configuration(settings)
    if settings.worker_processes > 1:
        from worker.processes import run_processes

        # The configuration was loaded above only to fail fast; each process loads its own.
        return run_processes(settings, settings.worker_processes)
    index = os.environ.get("WORKER_PROCESS_INDEX")
    if index is not None:
        # One of a replica's processes: its log lines say which.
        import structlog

        structlog.contextvars.bind_contextvars(process=int(index))
    configure_from_env()
    try:
        return asyncio.run(Worker(configuration).run())
    finally:
        shutdown()


def cmd_migrate(_: argparse.Namespace) -> int:
    from worker.store.migrations import migrate_dsn

    settings = _settings(DatabaseSettings)
    done = asyncio.run(migrate_dsn(settings.database_url))
    print(f"applied {len(done)} migration(s)" + "".join(f"\n  {m.version:04d}_{m.name}" for m in done))
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from worker.ops.topics import create_worker_topics

    settings = _settings(KafkaSettings)
    created = asyncio.run(create_worker_topics(settings, partitions=args.partitions, replication=args.replication))
    names = (settings.commands_topic, settings.events_topic, settings.dlq_topic)
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from worker.ops.publish import publish_file
    from worker.security import load_signing_keys

    # A dry run only reads the file: it needs no broker.
    settings = None if args.dry_run else _settings(KafkaSettings)
    signing = _settings(SigningSettings)
    keys = load_signing_keys(signing.signing_keys_file, require_signatures=False)
    return asyncio.run(
        _until_signal(
            lambda stop: publish_file(
                settings, args.file, keys, dry_run=args.dry_run, skip_invalid=args.skip_invalid, stop=stop
            )
        )
    )


async def _until_signal(work: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run `work` with an event that SIGINT and SIGTERM set: long commands stop cleanly and print their summary."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await work(stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from worker.ops.dlq import ReplayFilter, format_summary, replay

    settings = _settings(KafkaSettings)
    selection = ReplayFilter(
        reason=args.reason,
        organization_id=args.organization,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        partition=args.partition,
    )

    async def work(stop: asyncio.Event) -> int:
        stats = await replay(
            settings, selection, dry_run=args.dry_run, limit=args.limit, watch_seconds=args.watch, stop=stop
        )
        print(format_summary(stats, settings), flush=True)
        if stats.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if stats.stuck else 0

    return asyncio.run(_until_signal(work))


def cmd_events_tail(args: argparse.Namespace) -> int:
    from worker.ops.events import EventFilter, tail

    settings = _settings(KafkaSettings)
    selection = EventFilter(organization_id=args.organization, event_types=frozenset(args.type or ()))
    fmt = args.format if args.format != "auto" else ("text" if sys.stdout.isatty() else "json")
    return asyncio.run(
        _until_signal(
            lambda stop: tail(
                settings,
                selection,
                from_beginning=args.from_beginning,
                text=fmt == "text",
                limit=args.limit,
                stop=stop,
            )
        )
    )


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from worker.ops.parked import list_events, selection_of

    settings = _settings(DatabaseSettings)
    selection = selection_of(args.id, args.reason, args.event_type)
    lines = asyncio.run(list_events(settings.database_url, selection, args.limit))
    for line in lines:
        print(line)
    if not lines:
        # stdout stays empty for scripts; a person sees that the command ran and found nothing.
        filtered = any((args.id, args.reason, args.event_type))
        print("no parked events" + (" match the filter" if filtered else ""), file=sys.stderr)
    return 0


def cmd_outbox_republish(args: argparse.Namespace) -> int:
    from worker.ops.parked import republish, selection_of

    if not (args.all or args.id or args.reason or args.event_type):
        raise ConfigurationError("outbox republish: choose --all, or --id / --reason / --event-type")
    settings = _settings(DatabaseSettings)
    count = asyncio.run(republish(settings.database_url, selection_of(args.id, args.reason, args.event_type)))
    print(f"moved {count} parked event(s) back to the outbox; a running worker publishes them")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from worker.dev.command import default_data_dir, print_env, run_dev

    data_dir = args.data_dir or default_data_dir()
    if args.print_env:
        return print_env(data_dir)
    from worker.observability import configure_logging

    configure_logging("WARNING" if args.demo else "INFO", "console")
    return asyncio.run(run_dev(data_dir, demo=args.demo, partitions=args.partitions))


def cmd_schema(args: argparse.Namespace) -> int:
    from worker.dev import schema

    written = schema.write(args.out)
    for path in written:
        print(path)
    return 0


def cmd_schema_register(args: argparse.Namespace) -> int:
    """Topics from COMMANDS_TOPIC / EVENTS_TOPIC (or their defaults); basic auth from SCHEMA_REGISTRY_USERNAME /
    SCHEMA_REGISTRY_PASSWORD when set."""
    import os

    from worker.ops.schema_registry import RegistryError, register

    topics = {
        "commands": os.environ.get("COMMANDS_TOPIC", "customers.upsert.v1"),
        "events": os.environ.get("EVENTS_TOPIC", "customers.events.v1"),
    }
    user, password = os.environ.get("SCHEMA_REGISTRY_USERNAME"), os.environ.get("SCHEMA_REGISTRY_PASSWORD")
    try:
        done = register(args.registry, args.schemas, topics, auth=(user, password or "") if user else None)
    except RegistryError as exc:
        print(f"schema register: {exc}", file=sys.stderr)
        return 1
    for item in done:
        print(f"{item.subject}: schema id {item.schema_id}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from worker_bench import bench

    return bench.main(args)


def cmd_bench_validation(args: argparse.Namespace) -> int:
    from worker_bench import validation as bench_validation

    return bench_validation.run(args)
