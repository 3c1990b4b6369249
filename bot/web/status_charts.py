"""The status page's charts: inline SVG line charts, one point per day, days without data shaded.

`chart` is a pure function from a title, its series and the days to an `<h3>` and a `<figure>`
holding the SVG and its legend; no script, no external asset.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

_WIDTH, _LEFT, _RIGHT, _TOP, _BOTTOM = 640, 58, 12, 12, 26
_PLOT_HEIGHT = 150


@dataclass(frozen=True)
class Series:
    key: str
    name: str
    color: str
    values: list[int | None]  # one per day; None: no data that day


def chart(title: str, series: list[Series], dates: list[str], gaps: list[bool]) -> str:
    """A line chart, one point per day with data; days without data are shaded gaps (the lines
    break there: a missing day is never drawn as a zero)."""
    n = len(dates)
    height = _TOP + _PLOT_HEIGHT + _BOTTOM
    plot_width = _WIDTH - _LEFT - _RIGHT
    step = plot_width / max(n - 1, 1)
    present = [v for s in series for v in s.values if v is not None]
    top = _nice_ceiling(max(present, default=0))

    def x(i: int) -> float:
        return _LEFT + (i * step if n > 1 else plot_width / 2)

    def y(value: int) -> float:
        return _TOP + _PLOT_HEIGHT * (1 - value / top)

    out = [
        f"<h3>{_e(title)}</h3>",
        f'<figure><svg viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{_e(title)}">',
    ]
    for start, end in _runs(gaps):  # shaded days without data
        left = max(_LEFT, x(start) - step / 2)
        right = min(_WIDTH - _RIGHT, x(end) + step / 2)
        out.append(
            f'<rect class="gap" x="{left:.1f}" y="{_TOP}" width="{max(right - left, 1):.1f}" '
            f'height="{_PLOT_HEIGHT}"/>'
        )
    for fraction in (0, 0.5, 1):
        level = _TOP + _PLOT_HEIGHT * (1 - fraction)
        out.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{level:.1f}" '
            f'y2="{level:.1f}"/><text x="{_LEFT - 6}" y="{level + 4:.1f}" text-anchor="end">'
            f"{_compact(top * fraction)}</text>"
        )
    if n:
        baseline = _TOP + _PLOT_HEIGHT + _BOTTOM - 2
        out.append(f'<text x="{_LEFT}" y="{baseline}">{_short_date(dates[0])}</text>')
        out.append(
            f'<text x="{_WIDTH - _RIGHT}" y="{baseline}" text-anchor="end">'
            f"{_short_date(dates[-1])}</text>"
        )
    for s in series:
        out.append(_series_svg(s, dates, x, y))
    out.append("</svg>")
    legend = "".join(
        f'<li><span class="key" style="background:{s.color}"></span>{_e(s.name)}</li>'
        for s in series
    )
    if any(gaps):
        legend += '<li><span class="key nodata"></span>no data: the bot was not running</li>'
    out.append(f'<figcaption><ul class="legend">{legend}</ul></figcaption></figure>')
    return "".join(out)


def _series_svg(
    series: Series, dates: list[str], x: Callable[[int], float], y: Callable[[int], float]
) -> str:
    commands, points = [], []
    previous_present = False
    for i, value in enumerate(series.values):
        if value is None:
            previous_present = False
            continue
        px, py = x(i), y(value)
        commands.append(f"{'L' if previous_present else 'M'}{px:.1f} {py:.1f}")
        points.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5"><title>{_e(series.name)} '
            f"{dates[i]}: {_number(value)}</title></circle>"
        )
        previous_present = True
    path = f'<path d="{"".join(commands)}"/>' if commands else ""
    return (
        f'<g class="series" data-series="{series.key}" style="stroke:{series.color};'
        f'fill:{series.color}">{path}{"".join(points)}</g>'
    )


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """(first, last) index of each run of True."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def _nice_ceiling(value: int) -> int:
    """The chart's top: a round number at least `value` (and at least 2, so that its half, the
    middle grid line, is a whole number too)."""
    magnitude = 1
    while True:
        for factor in (2, 4, 6, 8, 10) if magnitude == 1 else (2, 3, 4, 5, 6, 8, 10):
            if factor * magnitude >= value:
                return factor * magnitude
        magnitude *= 10


def _compact(value: float) -> str:
    """An axis label: 950, 1.5k, 20k, 1.2M."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}".removesuffix(".0") + suffix
    return f"{value:.0f}"


def _short_date(day: str) -> str:
    return date.fromisoformat(day).strftime("%d %b")


def _number(value: int) -> str:
    return f"{value:,}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
