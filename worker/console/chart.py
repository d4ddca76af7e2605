"""Stacked bar charts as plain geometry for a server-rendered SVG (templates/_chart.html): no script, no inline
style (the CSP forbids both), colours from the stylesheet's `.series-N` classes, a <title> per bar for the exact
figure, and a table of the same numbers beside it for screen readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from worker.console.queries import Series

WIDTH: Final = 720
HEIGHT: Final = 180
_LEFT: Final = 44
_BOTTOM: Final = 20
_TOP: Final = 8
_TICKS: Final = 6
_SERIES_CLASSES: Final = 8


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: int
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    text: str


@dataclass(frozen=True, slots=True)
class Legend:
    label: str
    series: int
    total: int


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    width: int
    height: int
    bars: list[Bar]
    ticks: list[Tick]
    legend: list[Legend]
    maximum: int
    plot_left: int
    plot_bottom: int

    @property
    def empty(self) -> bool:
        return not self.bars


def stacked(title: str, data: Series, *, fixed_order: tuple[str, ...] = (), time_format: str = "%H:%M") -> Chart:
    """Stacked bars, one per bucket; series in `fixed_order` first (stable colours), then the others by name."""
    labels = [label for label in fixed_order if label in data.values]
    labels += [label for label in data.labels if label not in labels]
    count = max(len(data.buckets), 1)
    totals = [sum(data.values[label][position] for label in labels) for position in range(len(data.buckets))]
    maximum = max(totals, default=0)
    plot_width = WIDTH - _LEFT - 4
    plot_height = HEIGHT - _BOTTOM - _TOP
    slot = plot_width / count
    bar_width = max(slot * 0.8, 1.0)
    bars: list[Bar] = []
    for position, at in enumerate(data.buckets):
        base = 0
        for label in labels:
            value = data.values[label][position]
            if value <= 0:
                continue
            height = plot_height * value / maximum
            top = HEIGHT - _BOTTOM - plot_height * (base + value) / maximum
            stamp = _stamp(at, time_format)
            bars.append(
                Bar(
                    _LEFT + position * slot,
                    top,
                    bar_width,
                    height,
                    _series_of(label, labels),
                    f"{stamp} {label}: {value}",
                )
            )
            base += value
    step = max(count // _TICKS, 1)
    ticks = [
        Tick(_LEFT + position * slot, _stamp(at, time_format))
        for position, at in enumerate(data.buckets)
        if position % step == 0 and _LEFT + position * slot < WIDTH - 36  # a label must fit in the picture
    ]
    legend = [Legend(label, _series_of(label, labels), sum(data.values[label])) for label in labels]
    return Chart(title, WIDTH, HEIGHT, bars, ticks, legend, maximum, _LEFT, HEIGHT - _BOTTOM)


def _series_of(label: str, labels: list[str]) -> int:
    return labels.index(label) % _SERIES_CLASSES


def _stamp(at: datetime, time_format: str) -> str:
    return at.strftime(time_format)
