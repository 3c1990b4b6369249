"""Alerts to admins: one message when an incident starts and one when it is over, never a stream.

Pure state machines fed with observations and the time; each returns the messages to send (an
empty list almost always). No store, no XMPP: `notify.py` feeds them and delivers. Kinds:
privileges not granted (or lost) after connecting; the store failing its writes for longer than
a set time; a duty restarting repeatedly; the XMPP link down for longer than a set time (said
when it is back: it cannot be said while it is down); a day whose DAU is below a set share of the
median of the same weekday over the four weeks before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from statistics import median
from typing import Any

from .history import Day

DUTY_WINDOW = 3600  # seconds: restarts counted over this window; quiet this long ends it
WEEKS_COMPARED = 4
MIN_WEEKS = 2  # a weekday median needs at least this many of the 4 earlier days


@dataclass(frozen=True)
class AlertSettings:
    """`[alerts]`: off unless enabled; each kind off with 0 (or false)."""

    enabled: bool = False
    privileges: bool = True
    store_failing_for: float = 300.0  # seconds
    link_down_for: float = 300.0  # seconds
    duty_restarts: int = 3  # restarts of one duty within DUTY_WINDOW
    dau_below: float = 0.5  # share of the same weekday's median DAU
    recipients: frozenset[str] | None = None  # None: every admin


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lasted(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class Incident:
    """Trouble that counts once it has lasted `after` seconds: `observe` returns "started" once
    then, and "over" once when it ends (only if "started" was said)."""

    def __init__(self, after: float = 0.0) -> None:
        self.after = after
        self.since: float | None = None  # when the trouble was first seen
        self.said = False

    def observe(self, bad: bool, now: float) -> str | None:
        if bad:
            if self.since is None:
                self.since = now
            if not self.said and now - self.since >= self.after:
                self.said = True
                return "started"
            return None
        said, self.since, self.said = self.said, None, False
        return "over" if said else None


class Alerts:
    """Every kind's state; the methods return the messages the admins should get."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.privileges = Incident()
        self.store = Incident(settings.store_failing_for)
        self._store_seen: tuple[float | None, int] | None = None  # (last write, failures)
        self._store_failures_base = 0
        self.link_down_at: float | None = None
        self.duties: dict[str, deque[float]] = {}
        self._duty_counts: dict[str, int] = {}
        self.duty_incidents: dict[str, Incident] = {}
        self.dau_checked: str = ""  # the last day checked (YYYY-MM-DD)
        self.dau_low_since: str = ""  # the first low day of an open incident

    # --- privileges ---------------------------------------------------------------------------

    def privileges_checked(self, missing: Sequence[str], now: float) -> list[str]:
        """After each connection: the counted domains that did not grant presence."""
        if not self.settings.privileges:
            return []
        said = self.privileges.observe(bool(missing), now)
        if said == "started":
            return [
                f"Alert: no presence privilege from {', '.join(missing)} (XEP-0356) since "
                f"connecting at {when(now)}: the bot does not see their users log in or out, so "
                'the figures are low. Enable mod_privilege with presence = "managed_entity" '
                "for the bot (see the bot's log)."
            ]
        if said == "over":
            return [f"Over: presence privileges granted again at {when(now)}."]
        return []

    # --- the store ------------------------------------------------------------------------------

    def store_health(
        self, last_write_at: float | None, failed_writes: int, now: float
    ) -> list[str]:
        """Each check: the store's last successful write and its count of failed writes."""
        if not self.settings.store_failing_for:
            return []
        if self._store_seen is None or self._store_seen[0] != last_write_at:
            self._store_failures_base = failed_writes  # a write succeeded since the last check
        self._store_seen = (last_write_at, failed_writes)
        failing = failed_writes > self._store_failures_base
        since = self.store.since
        said = self.store.observe(failing, now)
        if said == "started":
            return [
                f"Alert: the store has failed to write since {when(self.store.since or now)} "
                f"({failed_writes - self._store_failures_base} failed writes). The figures are "
                "kept in memory meanwhile; a stop now would lose them. The bot's log says why."
            ]
        if said == "over":
            return [
                f"Over: the store writes again ({when(since or now)} to {when(now)}); "
                "nothing was lost."
            ]
        return []

    # --- the XMPP link --------------------------------------------------------------------------

    def link_down(self, now: float) -> None:
        if self.link_down_at is None:
            self.link_down_at = now

    def link_up(self, now: float) -> list[str]:
        down, self.link_down_at = self.link_down_at, None
        limit = self.settings.link_down_for
        if down is None or not limit or now - down < limit:
            return []
        return [
            f"Alert, over: the bot was disconnected from the XMPP server from {when(down)} to "
            f"{when(now)} ({_lasted(now - down)}). Logins and logouts meanwhile were not seen; "
            "sessions still open were re-learnt when it reconnected."
        ]

    # --- duties ---------------------------------------------------------------------------------

    def duty_restarts(self, restarts: Mapping[str, int], now: float) -> list[str]:
        """Each check: every duty's restarts so far (the supervisor's counter)."""
        limit = self.settings.duty_restarts
        if not limit:
            return []
        messages = []
        for name in sorted(set(restarts) | set(self.duties)):
            count = restarts.get(name, 0)
            times = self.duties.setdefault(name, deque())
            times.extend([now] * max(0, count - self._duty_counts.get(name, 0)))
            self._duty_counts[name] = count
            while times and times[0] <= now - DUTY_WINDOW:
                times.popleft()
            incident = self.duty_incidents.setdefault(name, Incident())
            said = incident.observe(len(times) >= limit if not incident.said else bool(times), now)
            if said == "started":
                messages.append(
                    f"Alert: the bot's duty {name!r} restarted {len(times)} times within the "
                    f"last {DUTY_WINDOW // 60} min; its log says why."
                )
            elif said == "over":
                messages.append(
                    f"Over: the duty {name!r} has run without a restart for "
                    f"{DUTY_WINDOW // 60} min."
                )
        return messages

    # --- a day's DAU ----------------------------------------------------------------------------

    def dau_day(self, day: str, days: Mapping[str, Any]) -> list[str]:
        """Once per ended UTC day (`day`), with the stored snapshots (`days`: date -> snapshot)."""
        share = self.settings.dau_below
        if not share or day <= self.dau_checked:
            return []
        self.dau_checked = day
        verdict = dau_drop(day, days)
        if verdict is None:
            return []  # not enough data: an open incident stays open
        value, typical = verdict
        low = value < share * typical
        if low and not self.dau_low_since:
            self.dau_low_since = day
            return [
                f"Alert: {day} ({_weekday(day)}) had {value:,} daily active users, below "
                f"{share:.0%} of the usual {typical:,.0f} (the median of the {WEEKS_COMPARED} "
                f"{_weekday(day)}s before). A server or client problem may keep users away."
            ]
        if not low and self.dau_low_since:
            since, self.dau_low_since = self.dau_low_since, ""
            return [
                f"Over: {day} had {value:,} daily active users, back to the usual "
                f"{typical:,.0f} (low since {since})."
            ]
        return []


def _weekday(day: str) -> str:
    return date.fromisoformat(day).strftime("%A")


def dau_drop(day: str, days: Mapping[str, Any]) -> tuple[int, float] | None:
    """(the day's DAU, the median DAU of the same weekday over the 4 weeks before), or None
    when the day or too many of those weeks have no snapshot."""
    value = Day(day, days.get(day)).total("active", "1d")
    if value is None:
        return None
    start = date.fromisoformat(day)
    earlier = [
        Day(d, days.get(d)).total("active", "1d")
        for d in ((start - timedelta(weeks=w)).isoformat() for w in range(1, WEEKS_COMPARED + 1))
    ]
    present = [v for v in earlier if v is not None]
    if len(present) < MIN_WEEKS:
        return None
    return value, float(median(present))
