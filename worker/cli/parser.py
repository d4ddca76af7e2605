"""The argument parser of `customer-worker`: every subcommand, its options and its help."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.cli.commands import (
    cmd_bench,
    cmd_bench_console,
    cmd_bench_validation,
    cmd_dev,
    cmd_dlq_replay,
    cmd_events_tail,
    cmd_migrate,
    cmd_publish,
    cmd_run,
    cmd_schema,
    cmd_schema_register,
    cmd_topics_create,
)
from worker.cli.operator_commands import add_operator_commands
from worker.contract.codes import DlqReason
from worker.errors import ConfigurationError
from worker.settings import Settings

DESCRIPTION = (
    "Keeps Lago-shaped customer records in sync: Kafka commands in, PostgreSQL, result events out. Each command "
    "reads only the settings (environment variables) it needs: `customer-worker COMMAND --help` names them."
)


def _run_epilog() -> str:
    """The settings (every field of `Settings`, so the list cannot drift) and the exit statuses of `run`."""
    import textwrap

    fields = Settings.model_fields
    required = [name.upper() for name, field in fields.items() if field.is_required()]
    optional = [name.upper() for name, field in fields.items() if not field.is_required()]
    listed = textwrap.fill(
        "optional: " + ", ".join(optional), width=110, initial_indent="  ", subsequent_indent=" " * 12
    )
    return (
        'settings (environment variables; README.md "Settings" gives their defaults and meaning):\n'
        f"  required: {', '.join(required)}\n{listed}\n\n"
        "exit statuses:\n"
        "  0  clean shutdown (SIGTERM or SIGINT)\n"
        "  2  bad configuration: a missing or malformed setting, an unreadable file, HTTP_PORT already in use\n"
        "  3  migrations pending (run `customer-worker migrate` first)\n"
    )


def _add_benchmarks(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`bench`, `bench-validation` and `bench-console` live in `worker_bench`, outside the runtime package: an
    install without it (the container image) keeps the commands, which then say where the benchmarks are."""
    import importlib.util

    helps = {
        "bench": "end-to-end throughput and latency benchmark",
        "bench-validation": "validation throughput on one core",
        "bench-console": "console page timings with 100,000 dead letters and 100,000 provider jobs",
    }
    if importlib.util.find_spec("worker_bench") is None:
        for name, text in helps.items():
            missing = commands.add_parser(name, help=f"{text} (not in this install)")
            missing.set_defaults(func=_benchmarks_missing)
        return
    from worker_bench.args import add_bench_arguments
    from worker_bench.console import add_arguments as add_console_bench_arguments
    from worker_bench.validation import add_arguments as add_validation_arguments

    bench = commands.add_parser("bench", help=helps["bench"])
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    validation = commands.add_parser("bench-validation", help=helps["bench-validation"])
    add_validation_arguments(validation)
    validation.set_defaults(func=cmd_bench_validation)
    console_bench = commands.add_parser("bench-console", help=helps["bench-console"])
    add_console_bench_arguments(console_bench)
    console_bench.set_defaults(func=cmd_bench_console)


def _benchmarks_missing(args: argparse.Namespace) -> int:
    raise ConfigurationError(
        f"customer-worker {args.command}: the benchmarks (package worker_bench) are not in this install, such as "
        "the container image; run them from a checkout or a `pip install .` of the project"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("customer-worker")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="customer-worker", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the worker",
        description="Consume commands, apply them to PostgreSQL, publish result events, serve /healthz, /readyz "
        "and /metrics on HTTP_PORT. Stops cleanly on SIGTERM or SIGINT.",
        epilog=_run_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--processes",
        type=int,
        choices=range(1, 65),
        metavar="N",
        default=None,
        help="worker processes in this replica, one core each, under one HTTP endpoint (default: WORKER_PROCESSES, 1)",
    )
    run.set_defaults(func=cmd_run)
    commands.add_parser(
        "migrate", help="apply database migrations (idempotent)", description="Needs DATABASE_URL."
    ).set_defaults(func=cmd_migrate)

    topics = commands.add_parser("topics", help="manage topics").add_subparsers(dest="topics_command", required=True)
    create = topics.add_parser(
        "create", help="create the three topics if missing", description="Needs KAFKA_BOOTSTRAP_SERVERS."
    )
    create.add_argument("--partitions", type=int, default=6, help="partitions of each new topic (default 6)")
    create.add_argument("--replication", type=int, default=1, help="replication factor of each new topic (default 1)")
    create.set_defaults(func=cmd_topics_create)

    dev = commands.add_parser(
        "dev",
        help="embedded PostgreSQL and broker, migrated, with the worker running",
        description="Starts an embedded PostgreSQL and Tansu broker on loopback, migrates, creates the topics, "
        "prints the settings a client needs and runs the worker until Ctrl-C.",
    )
    dev.add_argument("--demo", action="store_true", help="publish sample commands, print their events, stop")
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the embedded servers keep data and logs (default: "
        ".devstack/ in the checkout, else ~/.cache/customer-worker/devstack)",
    )
    dev.add_argument("--partitions", type=int, default=3, help="partitions of the topics it creates (default 3)")
    dev.add_argument(
        "--console",
        action="store_true",
        help="also serve the operator console on CONSOLE_PORT (default 8090) with a dev operator token it prints",
    )
    dev.add_argument(
        "--print-env",
        action="store_true",
        help='print the export lines of the running dev stack, for eval "$(customer-worker dev --print-env)"',
    )
    dev.set_defaults(func=cmd_dev)

    publish = commands.add_parser(
        "publish",
        help="publish commands from a JSON-lines file ('-' for stdin)",
        description="Every non-empty line must be one JSON object (a command, SPEC §2). Lines are sent byte for "
        "byte, keyed {organization_id}:{external_id}, signed with the organization's first key of "
        "SIGNING_KEYS_FILE. Nothing is sent when a line is invalid, unless --skip-invalid. Needs "
        "KAFKA_BOOTSTRAP_SERVERS (not for --dry-run); COMMANDS_TOPIC and the other KAFKA_* settings apply.",
    )
    publish.add_argument("file", help="JSON-lines file of commands, or '-' to read stdin")
    publish.add_argument("--dry-run", action="store_true", help="check every line and count, send nothing")
    publish.add_argument("--skip-invalid", action="store_true", help="send the valid lines, skip (and report) the rest")
    publish.set_defaults(func=cmd_publish)

    dlq = commands.add_parser("dlq", help="dead-letter topic").add_subparsers(dest="dlq_command", required=True)
    replay = dlq.add_parser(
        "replay",
        help="republish dead-lettered records to the commands topic",
        description="Replays the records the DLQ held when it started (never those written afterwards, so it "
        "always ends), minus their dlq-* headers. Prints a summary at the end and on Ctrl-C/SIGTERM "
        "(exit 130 then). Runs as an operator job (audited, a result per record, shown by the console). Needs "
        "KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (a dry run: Kafka only); reads DLQ_TOPIC, writes COMMANDS_TOPIC; "
        "the other KAFKA_* settings apply.",
    )
    replay.add_argument(
        "--reason",
        choices=[reason.value for reason in DlqReason],
        help="only records dead-lettered for this reason",
    )
    replay.add_argument("--organization", help="only records whose value names this organization_id")
    replay.add_argument("--partition", type=int, help="only this DLQ partition")
    replay.add_argument("--from-offset", type=int, help="only DLQ offsets at or after this one")
    replay.add_argument("--to-offset", type=int, help="only DLQ offsets at or before this one")
    replay.add_argument("--dry-run", action="store_true", help="count what would be replayed, by reason and partition")
    replay.add_argument("--limit", type=int, help="replay at most N records")
    replay.add_argument(
        "--watch",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after sending, watch the DLQ this long for replayed records that come straight back (default 5; 0 skips)",
    )
    replay.set_defaults(func=cmd_dlq_replay)

    events = commands.add_parser("events", help="result events").add_subparsers(dest="events_command", required=True)
    tail_parser = events.add_parser(
        "tail",
        help="follow the events topic",
        description="Prints events as they are published, until Ctrl-C: one JSON object per line, or a readable "
        "line per event on a terminal. Needs KAFKA_BOOTSTRAP_SERVERS; reads EVENTS_TOPIC; the other KAFKA_* "
        "settings apply.",
    )
    tail_parser.add_argument("--organization", help="only events of this organization_id")
    tail_parser.add_argument("--type", action="append", metavar="EVENT_TYPE", help="only this event type (repeatable)")
    tail_parser.add_argument("--from-beginning", action="store_true", help="start at the topic's first event")
    tail_parser.add_argument(
        "--format",
        choices=["auto", "json", "text"],
        default="auto",
        help="json: one event per line; text: a readable line; auto (default): text on a terminal, else json",
    )
    tail_parser.add_argument("--limit", type=int, help="stop after N matching events")
    tail_parser.set_defaults(func=cmd_events_tail)

    add_operator_commands(commands)
    from worker.cli.console import add_console

    add_console(commands)

    _add_benchmarks(commands)

    schema = commands.add_parser("schema", help="write JSON Schema and AsyncAPI files")
    schema.add_argument(
        "--out", type=Path, default=_default_schema_dir(), help="output folder (default: schemas/ of the checkout)"
    )
    schema.set_defaults(func=cmd_schema)
    schema_commands = schema.add_subparsers(dest="schema_command", required=False)
    register = schema_commands.add_parser("register", help="register schemas/ under <topic>-value subjects")
    register.add_argument("--registry", required=True, help="Schema Registry base URL")
    register.add_argument(
        "--schemas",
        type=Path,
        default=_default_schema_dir(),
        help="folder of the schemas (default: schemas/ of the checkout)",
    )
    register.set_defaults(func=cmd_schema_register)
    return parser


def _default_schema_dir() -> Path:
    checkout = Path(__file__).resolve().parents[2]
    return checkout / "schemas" if (checkout / "pyproject.toml").is_file() else Path.cwd() / "schemas"
