"""The periodic report to admins: when it is due, and its figures and text from the daily snapshots.

Pure: no store, no XMPP, no clock of its own. The figures come from the same daily snapshots as
the `history` command (`history.Day`), so that a report and a history of the same days agree.
A weekly report covers the 7 UTC days before the day it is sent on; a monthly one, sent on the
1st, the calendar month before. Each is compared with the period just before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ..core.client_families import describe
from ..core.counter import ClientCounts
from .history import GAP, Day, sparkline

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
PERIODS = ("weekly", "monthly")
LATE_AFTER = 600  # seconds after the scheduled time: a report sent later says it is late
CLIENTS_SHOWN = 3


@dataclass(frozen=True)
class ReportSettings:
    """`[reports]`: off unless enabled; weekly and/or monthly, at `hour` UTC."""

    enabled: bool = False
    weekly: bool = True
    monthly: bool = False
    weekday: int = 0  # Monday
    hour: int = 8
    recipients: frozenset[str] | None = None  # None: every admin

    @property
    def periods(self) -> tuple[str, ...]:
        if not self.enabled:
            return ()
        return tuple(p for p, on in (("weekly", self.weekly), ("monthly", self.monthly)) if on)


def _at_hour(day: date, hour: int) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp())


def _first_of_month(day: date, months_back: int = 0) -> date:
    month = day.year * 12 + day.month - 1 - months_back
    return date(month // 12, month % 12 + 1, 1)


def latest_scheduled(period: str, settings: ReportSettings, now: float) -> int:
    """The last time (Unix seconds) at or before `now` when the `period` report was due."""
    today = datetime.fromtimestamp(now, UTC).date()
    if period == "weekly":
        day = today - timedelta(days=(today.weekday() - settings.weekday) % 7)
        if _at_hour(day, settings.hour) > now:
            day -= timedelta(days=7)
    else:
        day = _first_of_month(today)
        if _at_hour(day, settings.hour) > now:
            day = _first_of_month(today, 1)
    return _at_hour(day, settings.hour)


def period_days(period: str, scheduled: int) -> tuple[list[str], list[str]]:
    """The dates (YYYY-MM-DD, oldest first) the report due at `scheduled` covers, and those of
    the period before, which it is compared with."""
    sent_on = datetime.fromtimestamp(scheduled, UTC).date()
    if period == "weekly":
        start, previous_start, end = (
            sent_on - timedelta(days=7),
            sent_on - timedelta(days=14),
            sent_on,
        )
    else:
        start, previous_start, end = (
            _first_of_month(sent_on, 1),
            _first_of_month(sent_on, 2),
            sent_on,
        )

    def dates(first: date, stop: date) -> list[str]:
        return [(first + timedelta(days=n)).isoformat() for n in range((stop - first).days)]

    return dates(start, end), dates(previous_start, start)


@dataclass(frozen=True)
class Figures:
    """One report's figures, for all counted domains together or for one of them."""

    dau: list[int | None]  # per day of the period, oldest first; None: the bot was not running
    dau_average: float | None
    dau_min: int | None
    dau_max: int | None
    change: float | None  # of the average DAU against the period before (0.1: +10%)
    wau: int | None  # the last day's 7-day figure
    mau: int | None  # the last day's 30-day figure
    new_users: int | None  # the last day's figure over the period's length (7 or 30 days)
    peak_online: int | None
    gaps: list[str]  # the dates the bot was not running

    @property
    def stickiness(self) -> float | None:
        if self.dau_average is None or not self.mau:
            return None
        return self.dau_average / self.mau


def _only(day: Day, domain: str | None) -> Day:
    if domain is None or day.domains is None:
        return day
    data = day.domains.get(domain)
    return Day(day.date, None if data is None else {domain: data})


def _average(values: Sequence[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def figures(
    period: str, days: Sequence[Day], previous: Sequence[Day], domain: str | None = None
) -> Figures:
    """The figures of `days` (the period, oldest first), compared with `previous`."""
    days = [_only(day, domain) for day in days]
    previous = [_only(day, domain) for day in previous]
    dau = [day.total("active", "1d") for day in days]
    present = [v for v in dau if v is not None]
    average, before = _average(dau), _average([d.total("active", "1d") for d in previous])
    change = None if average is None or not before else (average - before) / before
    last = next((day for day in reversed(days) if day.domains is not None), None)
    peaks = [p for p in (day.peak_online() for day in days) if p is not None]
    return Figures(
        dau=dau,
        dau_average=average,
        dau_min=min(present) if present else None,
        dau_max=max(present) if present else None,
        change=change,
        wau=None if last is None else last.total("active", "7d"),
        mau=None if last is None else last.total("active", "30d"),
        new_users=None if last is None else last.total("new", _LENGTH[period]),
        peak_online=max(peaks) if peaks else None,
        gaps=[day.date for day in days if day.domains is None],
    )


_LENGTH = {"weekly": "7d", "monthly": "30d"}


def client_changes(
    now: Mapping[str, ClientCounts], before: Mapping[str, int] | None, window: int
) -> list[tuple[str, int, int]]:
    """(family, users now, change) of the clients whose users active over `window` changed most
    since the last report (`before`: family -> users then); without a last report, the most
    used clients, with a change of 0."""
    current = {family: counts.active.get(window, 0) for family, counts in now.items()}
    if before is None:
        ranked = sorted(current.items(), key=lambda item: (-item[1], item[0]))
        return [(family, n, 0) for family, n in ranked[:CLIENTS_SHOWN] if n]
    changes = [
        (family, current.get(family, 0), current.get(family, 0) - before.get(family, 0))
        for family in sorted(set(current) | set(before))
    ]
    changes.sort(key=lambda item: (-abs(item[2]), item[0]))
    return [change for change in changes[:CLIENTS_SHOWN] if change[2]]


def _n(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _signed_percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:+.0%}"


def _day_label(day: str) -> str:
    return date.fromisoformat(day).strftime("%a %d %b %Y")


def _dau_line(fig: Figures, previous_label: str) -> str:
    if fig.dau_average is None:
        return "Daily active users: no data (the bot was not running)"
    return (
        f"Daily active users: average {fig.dau_average:,.1f}, min {_n(fig.dau_min)}, "
        f"max {_n(fig.dau_max)} ({_signed_percent(fig.change)} vs {previous_label})"
    )


def report_text(
    period: str,
    scheduled: int,
    sent_at: int,
    days: Sequence[Day],
    previous: Sequence[Day],
    domains: Sequence[str],
    clients: list[tuple[str, int, int]],
    clients_compared: bool,
) -> str:
    """The chat message: plain text with XEP-0393 *bold* for the title, one fact per line."""
    total = figures(period, days, previous)
    title = "Weekly" if period == "weekly" else "Monthly"
    previous_label = "the 7 days before" if period == "weekly" else "the month before"
    lines = [f"*{title} report*, {_day_label(days[0].date)} to {_day_label(days[-1].date)} (UTC)"]
    if sent_at - scheduled > LATE_AFTER:
        due = datetime.fromtimestamp(scheduled, UTC).strftime("%a %d %b %H:%M UTC")
        lines.append(f"(late: it was due {due}, when the bot was not running)")
    lines += [
        _dau_line(total, previous_label),
        f"DAU per day: {sparkline(total.dau)}  ({GAP} = the bot was not running)",
        f"Weekly active: {_n(total.wau)} · monthly active: {_n(total.mau)} · "
        f"new users: {_n(total.new_users)}",
        f"Stickiness (DAU/MAU): {'n/a' if total.stickiness is None else f'{total.stickiness:.0%}'}"
        f" · peak online: {_n(total.peak_online)}",
    ]
    if clients:
        what = "largest change since the last report" if clients_compared else "most used"
        shown = ", ".join(
            f"{describe(family)[0]} {users:,} ({change:+,})"
            if clients_compared
            else f"{describe(family)[0]} {users:,}"
            for family, users, change in clients
        )
        lines.append(f"Clients, {what}: {shown}")
    if total.gaps:
        lines.append("Bot not running on: " + ", ".join(total.gaps))
    else:
        lines.append("Bot running every day of the period.")
    if len(domains) > 1:
        for domain in domains:
            part = figures(period, days, previous, domain)
            average = "n/a" if part.dau_average is None else f"{part.dau_average:,.1f}"
            lines.append(
                f"{domain}: DAU average {average} ({_signed_percent(part.change)}), "
                f"WAU {_n(part.wau)}, MAU {_n(part.mau)}, new {_n(part.new_users)}, "
                f"peak online {_n(part.peak_online)}"
            )
    return "\n".join(lines)
