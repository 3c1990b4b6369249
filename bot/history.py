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

from .counter import Counts, window_label, window_short

SPARKS = "▁▂▃▄▅▆▇█"
GAP = "·"


def utc_day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).date().isoformat()


def day_snapshot(by_domain: Mapping[str, Counts], peaks: Mapping[str, int]) -> dict[str, Any]:
    """Primitives only, as the store wants them."""
    return {
        domain: {
            "active": {window_short(w): n for w, n in counts.active.items()},
            "new": {window_short(w): n for w, n in counts.new_users.items()},
            "peak_online": max(peaks.get(domain, 0), counts.online_users),
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


def chat_chart(days: list[Day], windows: Iterable[int]) -> str:
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
    return "\n".join(lines)


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
    """XEP-0004 table: reported fields and one item per day (empty values on gap days)."""
    columns = _columns(windows)
    form = Form()
    form["type"] = "result"
    form["title"] = f"Active users, last {len(days)} days (UTC)"
    form.add_reported("date", ftype="text-single", label="Date (UTC)")
    for name, label, _, _ in columns:
        form.add_reported(name, ftype="text-single", label=label)
    form.add_reported("peak_online", ftype="text-single", label="Peak online")
    for day in days:
        item = {"date": day.date}
        for name, _, part, short in columns:
            value = day.total(part, short)
            item[name] = "" if value is None else str(value)
        peak = day.peak_online()
        item["peak_online"] = "" if peak is None else str(peak)
        form.add_item(item)
    return form


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
