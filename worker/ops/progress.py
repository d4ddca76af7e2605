"""Progress of long CLI work: a rich progress bar on a terminal, plain lines (at most one every few seconds)
otherwise, so a log file or CI output stays readable. Always on stderr: stdout carries the command's results."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_PLAIN_INTERVAL = 2.0


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressReporter:
    """`advance(n)` as work is done; `total` may be unknown (None). Use as a context manager."""

    def __init__(self, label: str, total: int | None, *, stream: IO[str] | None = None) -> None:
        self._label = label
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        self._done = 0
        self._last_line = 0.0
        self._printed = 0
        self._bar: Progress | None = None
        self._task: object = None
        if is_terminal(self._stream):
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self._stream),
                transient=True,
            )

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=self._total)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._done != self._printed:
            self._print_count()  # the last count, not the first of a burst that came within one interval

    @property
    def done(self) -> int:
        return self._done

    def advance(self, count: int = 1) -> None:
        self._done += count
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done)  # type: ignore[arg-type]
            return
        now = time.monotonic()
        if now - self._last_line >= _PLAIN_INTERVAL:
            self._last_line = now
            self._print_count()

    def _print_count(self) -> None:
        of = f"/{self._total}" if self._total is not None else ""
        print(f"{self._label}: {self._done}{of}", file=self._stream, flush=True)
        self._printed = self._done

    def note(self, text: str) -> None:
        """A line that stays (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self._stream, flush=True)
