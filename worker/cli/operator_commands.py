"""The operators' job subcommands (issue 20): `jobs list|retry|cancel` (provider jobs) and `parked list|republish`
(with `outbox` as their old name, kept for one release). Each runs through `worker.ops.job_cli`, the code the
console's jobs use. Imports happen when a command runs, so `--help` stays fast."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from worker.cli.commands import _settings, _until_signal
from worker.contract.codes import RefusalReason
from worker.errors import ConfigurationError
from worker.settings import DatabaseSettings

PROVIDER_JOB_STATES = ("pending", "running", "done", "skipped", "failed", "cancelled")


def _provider_filters(args: argparse.Namespace) -> dict[str, Any]:
    values = {
        "state": args.state,
        "connection": args.connection,
        "error_code": args.error_code,
        "organization_id": args.organization,
    }
    return {name: value for name, value in values.items() if value is not None}


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from worker.ops.job_cli import list_provider_jobs

    settings = _settings(DatabaseSettings)
    for line in asyncio.run(list_provider_jobs(settings.database_url, _provider_filters(args), args.id, args.limit)):
        print(line)
    return 0


def _provider_action(args: argparse.Namespace, kind: str, verb: str) -> int:
    from worker.ops.job_cli import run_from_cli
    from worker.ops.jobs import Ids, ProviderJobFilter

    filters = _provider_filters(args)
    if not (args.all or args.id or filters):
        raise ConfigurationError(f"jobs {args.jobs_command}: choose --all, or --id / --state / --connection / ...")
    selection = Ids(tuple(args.id)) if args.id else ProviderJobFilter(**filters)
    settings = _settings(DatabaseSettings)
    return asyncio.run(
        _until_signal(
            lambda stop: run_from_cli(
                settings.database_url,
                kind,  # type: ignore[arg-type]
                selection,
                verb=verb,
                noun="provider job(s)",
                stop=stop,
                dry=args.dry_run,
            )
        )
    )


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    return _provider_action(args, "provider_jobs_retry", "retry")


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    return _provider_action(args, "provider_jobs_cancel", "cancel")


def cmd_parked_list(args: argparse.Namespace) -> int:
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


def cmd_parked_republish(args: argparse.Namespace) -> int:
    from worker.ops.job_cli import run_from_cli
    from worker.ops.jobs import Ids, ParkedFilter

    if not (args.all or args.id or args.reason or args.event_type or args.organization):
        raise ConfigurationError("parked republish: choose --all, or --id / --reason / --event-type / --organization")
    selection = (
        Ids(tuple(args.id))
        if args.id
        else ParkedFilter(reason=args.reason, event_type=args.event_type, organization_id=args.organization)
    )
    settings = _settings(DatabaseSettings)
    return asyncio.run(
        _until_signal(
            lambda stop: run_from_cli(
                settings.database_url,
                "parked_republish",
                selection,
                verb="moved",
                noun="parked event(s) back to the outbox (a running worker publishes them)",
                stop=stop,
                dry=args.dry_run,
            )
        )
    )


def add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`jobs`, `parked` and its old name `outbox`."""
    _add_jobs(commands)
    for name, note in (("parked", ""), ("outbox", " (old name of `parked`, kept for one release)")):
        _add_parked(commands, name, note)


def _add_jobs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = commands.add_parser("jobs", help="provider jobs: list, retry or cancel", description="Needs DATABASE_URL.")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--id", type=int, action="append", help="a provider job's id (repeatable)")
    filters.add_argument("--state", choices=PROVIDER_JOB_STATES, help="only jobs in this state")
    filters.add_argument("--connection", help="only jobs of this connection code")
    filters.add_argument("--error-code", help="only jobs whose last error has this code")
    filters.add_argument("--organization", help="only jobs of this organization_id")
    listing = actions.add_parser("list", parents=[filters], help="print jobs, oldest first, one JSON object per line")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.set_defaults(func=cmd_jobs_list)
    for name, func, what in (
        ("retry", cmd_jobs_retry, "failed and cancelled jobs are due again, pending ones due now"),
        ("cancel", cmd_jobs_cancel, "pending and running jobs end as cancelled, without a call"),
    ):
        action = actions.add_parser(name, parents=[filters], help=f"{what}; as a job, audited, Ctrl-C cancels it")
        action.add_argument("--all", action="store_true", help="every job it applies to (no filter)")
        action.add_argument("--dry-run", action="store_true", help="count the jobs it would touch, change nothing")
        action.set_defaults(func=func)


def _add_parked(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, note: str) -> None:
    parked = commands.add_parser(
        name,
        help=f"events the broker refused for good (parked events){note}",
        description="Needs DATABASE_URL. Republished events are sent by a running worker.",
    )
    actions = parked.add_subparsers(dest="parked_command", required=True)
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--id", type=int, action="append", help="a parked event's id (repeatable)")
    reasons = [reason.value for reason in RefusalReason]
    filters.add_argument("--reason", choices=reasons, help="only this refusal reason")
    filters.add_argument("--event-type", help="only this event type, e.g. customer.rejected")
    listing = actions.add_parser(
        "list",
        parents=[filters],
        help="print parked events, one JSON object per line (payload left out)",
        description="Needs DATABASE_URL.",
    )
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.set_defaults(func=cmd_parked_list)
    again = actions.add_parser(
        "republish",
        parents=[filters],
        help="move parked events back to the outbox, to be published again by a running worker (a job, audited)",
        description="Needs DATABASE_URL. A running worker publishes the events moved back.",
    )
    again.add_argument("--organization", help="only events of this organization_id")
    again.add_argument("--all", action="store_true", help="every parked event (no filter)")
    again.add_argument("--dry-run", action="store_true", help="count the events it would move, move nothing")
    again.set_defaults(func=cmd_parked_republish)
