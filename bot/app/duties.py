"""The background duties of a running bot: what each does, how often, how its failures are borne.

flush (the store, and before it today's peak), count (the figures in the log, then the hourly
housekeeping), liveness (the sessions' pings), retention and notify when configured. Each runs
supervised (supervisor.py): a duty that keeps failing stops the bot with 70, except retention
and notify, which the counting bot never exits for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..activity.tracker import ActivityTracker
from ..admin.notify import Notifier
from ..config import Settings
from ..core.counter import window_label
from ..storage.flushing import flush_periodically
from ..storage.store import Store, inactive_users
from ..xmpp.component import ActiveUsersComponent
from .day_history import DayHistory
from .supervisor import Backoff, supervise

log = logging.getLogger("bot.daemon")  # its name from before the layers: admins grep it


async def count_periodically(
    tracker: ActivityTracker,
    settings: Settings,
    clock: Callable[[], float] = time.time,
    jitter: Callable[[float], float] = lambda upper: random.uniform(0, upper),
    after_count: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Log the figures shortly after start, then every interval plus jitter, like the seed;
    `after_count` keeps the day's history snapshot up to date."""
    await asyncio.sleep(settings.first_count_after)
    while True:
        started = time.perf_counter()
        counts = tracker.counts(int(clock()))
        took_us = (time.perf_counter() - started) * 1e6
        figures = ", ".join(f"{n} ({window_label(w)})" for w, n in counts.active.items())
        log.info(
            "Active users (took %.0f µs): %s; online: %d users, %d sessions; known: %d",
            took_us,
            figures,
            counts.online_users,
            counts.online_sessions,
            counts.known_users,
        )
        if after_count is not None:
            await after_count()
        await asyncio.sleep(settings.count_interval + jitter(settings.count_jitter))


async def retain_periodically(
    apply_retention: Callable[[], Awaitable[object]],
    settings: Settings,
    jitter: Callable[[float], float] = lambda upper: random.uniform(0, upper),
) -> None:
    """Forget the users inactive beyond `retention_days`, shortly after start, then every
    count interval: a duty of its own, so that a failing pass never stops the counts."""
    await asyncio.sleep(settings.first_count_after)
    while True:
        await apply_retention()
        await asyncio.sleep(settings.count_interval + jitter(settings.count_jitter))


@dataclasses.dataclass
class Duties:
    """The duties of one bot, their backoffs and their restarts (`restarts`, for the metrics and
    the alerts). A duty calls its parts at each pass: a part replaced meanwhile is the one used."""

    settings: Settings
    backoff: Backoff
    restarts: Counter[str]  # duty -> restarts
    clock: Callable[[], float]
    store: Store
    tracker: ActivityTracker
    component: ActiveUsersComponent
    notifier: Notifier
    day_history: DayHistory
    heartbeat_clock: Callable[[], float]  # the time the flush's heartbeat records

    def names(self) -> tuple[str, ...]:
        retention = ("retention",) if self.settings.retention_days else ()
        notify = ("notify",) if self.notifier.enabled else ()
        return ("flush", "count", "liveness", *retention, *notify)

    def supervised(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The duties, each supervised (see `supervisor`), by name."""
        settings, history = self.settings, self.day_history
        duties: dict[str, Callable[[], Awaitable[None]]] = {
            "flush": lambda: flush_periodically(
                self.store,
                settings.flush_interval,
                self.heartbeat_clock,
                before_flush=lambda: history.guarded(history.record_peak_if_risen),
            ),
            "count": lambda: count_periodically(
                self.tracker, settings, self.clock, after_count=lambda: self.after_count()
            ),
            # Every session's pings, or (liveness off) those of sessions that said unavailable
            # but still answered.
            "liveness": self.component.liveness.run_forever,
        }
        backoffs = {name: self.backoff for name in duties}
        if settings.retention_days:
            duties["retention"] = lambda: retain_periodically(self.apply_retention, settings)
            # The bot runs on without retention (it only keeps data longer): retried with a
            # backoff up to the count interval, never a reason to exit.
            backoffs["retention"] = dataclasses.replace(
                self.backoff,
                max_delay=max(self.backoff.first_delay, settings.count_interval),
                max_failures=None,
            )
        if self.notifier.enabled:
            duties["notify"] = self.notifier.run_forever
            # Reports and alerts are extras: the counting bot never exits for them.
            backoffs["notify"] = dataclasses.replace(self.backoff, max_failures=None)
        return {
            name: supervise(name, duty, self.restarts, backoffs[name])
            for name, duty in duties.items()
        }

    async def after_count(self) -> None:
        """The hourly housekeeping: the figures in the admins' contact lists, today's history
        snapshot. (Retention is a duty of its own.)"""
        self.component.refresh_contacts()
        self.day_history.guarded(self.day_history.record_today)

    async def apply_retention(self) -> int:
        """One retention pass: forget the users inactive for over `retention_days`."""
        days = self.settings.retention_days
        if not days:
            return 0
        active_since = int(self.clock()) - days * 86_400
        candidates = await asyncio.to_thread(
            inactive_users, self.settings.store_path, active_since
        )  # the scan reads the file on another connection; the loop only forgets
        forgotten = await self.tracker.forget_inactive_soon(candidates, active_since)
        if forgotten:
            log.info("Retention: forgot %d users inactive for over %d days", forgotten, days)
        return forgotten
