"""One snapshot per UTC day: each window's figure, new users and the peak of users online.

The snapshot of today is rewritten at every periodic count and at shutdown, so a day keeps the
last figures the bot saw that day. A day without a snapshot is a day the bot was down: a gap,
shown as such, never as zeros.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from slixmpp.plugins.xep_0004 import Form

from ..core.counter import Counts, window_label, window_short
from .forms import Row, preformatted, rows_form

SPARKS = "▁▂▃▄▅▆▇█"
GAP = "·"


def utc_day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).date().isoformat()


def day_snapshot(by_domain: Mapping[str, Counts], peaks: Mapping[str, int]) -> dict[str, Any]:
    """Primitives only, as the store wants them. `peaks`: the day's peak of users online per
    domain, as the tracker's `DayPeaks.today` gives it (a domain without one: those online)."""
    return {
        domain: {
            "active": {window_short(w): n for w, n in counts.active.items()},
            "new": {window_short(w): n for w, n in counts.new_users.items()},
            "peak_online": peaks.get(domain, counts.online_users),
        }
        for domain, counts in by_domain.items()
    }


@dataclass(frozen=True)
class Day:
    date: str
    domains: Mapping[str, Any] | None  # None: the bot was down all day

    def total(self, part: str, window: str) -> int | None:
        if self.domains is None:
            return None
        values = [d[part].get(window) for d in self.domains.values() if window in d[part]]
        return sum(values) if values else None

    def peak_online(self) -> int | None:
        if self.domains is None:
            return None
        return sum(int(d["peak_online"]) for d in self.domains.values())


def last_days(stored: Mapping[str, Any], today: str, count: int) -> list[Day]:
    """The `count` days up to today, oldest first, gaps included."""
    end = date.fromisoformat(today)
    dates = [(end - timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]
    return [Day(day, stored.get(day)) for day in dates]


def sparkline(values: Iterable[int | None]) -> str:
    values = list(values)
    present = [v for v in values if v is not None]
    if not present:
        return GAP * len(values)
    high = max(present) or 1  # from zero: a bar's height is honest, not relative to the minimum
    return "".join(GAP if v is None else SPARKS[v * (len(SPARKS) - 1) // high] for v in values)


def chart_lines(days: list[Day], windows: Iterable[int]) -> list[str]:
    """A title line, then one sparkline per window and one for the peak online, lined up in a
    monospaced font (the command line prints them as they are)."""
    lines = [
        f"Active users over the last {len(days)} days (UTC, oldest first; "
        f"{GAP} = the bot was not running):"
    ]
    for window in windows:
        values = [day.total("active", window_short(window)) for day in days]
        present = [v for v in values if v is not None]
        summary = f"now {present[-1]}, max {max(present)}" if present else "no data"
        lines.append(f"{window_label(window):>11}  {sparkline(values)}  ({summary})")
    peaks = [day.peak_online() for day in days]
    present_peaks = [v for v in peaks if v is not None]
    if present_peaks:
        lines.append(f"{'peak online':>11}  {sparkline(peaks)}  (max {max(present_peaks)})")
    return lines


def chat_chart(days: list[Day], windows: Iterable[int]) -> str:
    """The chart as chat: its title, then the sparklines in a preformatted block (XEP-0393),
    so that they line up in the clients that draw chat in a proportional font."""
    title, *charts = chart_lines(days, windows)
    return f"{title}\n{preformatted(charts)}"


def _columns(windows: Iterable[int]) -> list[tuple[str, str, str, str]]:
    """(field name, label, part, window) of each figure column."""
    columns = []
    for window in windows:
        short = window_short(window)
        columns.append((f"active_{short}", f"Active, {window_label(window)}", "active", short))
    for window in windows:
        short = window_short(window)
        columns.append((f"new_{short}", f"New, {window_label(window)}", "new", short))
    return columns


def history_form(days: list[Day], windows: Iterable[int]) -> Form:
    """One row per day, oldest first (forms.py: a field per row, the figures hidden for scripts
    too); a gap day says the bot was not running, and its hidden figures are empty."""
    windows = list(windows)
    columns = _columns(windows)
    spans = " / ".join(window_label(w) for w in windows)
    instructions = (
        f"One row per UTC day, oldest first: users active in the last {spans} (as counted "
        "that day) · new users in the same windows · the peak of users online that day."
    )
    rows = []
    for day in days:
        cells = {name: _cell(day.total(part, short)) for name, _, part, short in columns}
        cells["peak_online"] = _cell(day.peak_online())
        if day.domains is None:
            text = "no figures: the bot was not running"
        else:
            active = " / ".join(cells[f"active_{window_short(w)}"] for w in windows)
            new = " / ".join(cells[f"new_{window_short(w)}"] for w in windows)
            text = f"{active} · new {new} · peak {cells['peak_online']}"
        rows.append(Row(key=day.date, label=day.date, text=text, cells=cells))
    return rows_form(f"Active users, last {len(days)} days (UTC)", instructions, rows)


def _cell(value: int | None) -> str:
    return "" if value is None else str(value)


def history_csv(days: list[Day], windows: Iterable[int], domains: Iterable[str]) -> str:
    """One row per day and domain; gap days have empty figures."""
    columns = _columns(windows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", "domain", *[name for name, *_ in columns], "peak_online"])
    for day in days:
        for domain in domains:
            data = (day.domains or {}).get(domain)
            if data is None:
                writer.writerow([day.date, domain, *[""] * len(columns), ""])
                continue
            figures = [data[part].get(short, "") for _, _, part, short in columns]
            writer.writerow([day.date, domain, *figures, data["peak_online"]])
    return out.getvalue()
