"""The `customer-worker` command (SPEC §10). Each subcommand reads only the settings it needs."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from worker.cli.parser import build_parser
from worker.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, ConfigurationError

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `customer-worker events tail | head`: the reader left, which is no error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit; give it somewhere to go
        return 0
    except Exception as exc:
        from worker.outages import rejected_setting

        message = rejected_setting(exc)
        if message is not None:
            print(f"configuration error: {message}", file=sys.stderr)
            return EXIT_CONFIG
        if type(exc).__module__.startswith("aiokafka"):
            # A broker that cannot be reached or refuses: one line a person can act on, not a library traceback.
            text = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            print(
                f"customer-worker {args.command}: Kafka error ({text}); check KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr
            )
            return EXIT_FAILED
        raise
    return code
