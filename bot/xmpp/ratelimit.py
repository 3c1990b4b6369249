"""What an outsider's flood can cost, bounded: per-sender token buckets (a flood from one JID is
dropped without slowing anyone else), and log lines about refused requests at a bounded rate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """Allows `burst` messages at once per sender, then one every `1 / rate` seconds.

    Remembers at most `max_senders` senders (the least recently seen are dropped first), so a
    flood from many forged senders cannot grow memory without bound.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,  # an interval clock: never the wall clock
        *,
        burst: int = 5,
        rate: float = 0.5,
        max_senders: int = 10_000,
    ) -> None:
        self._clock = clock
        self._burst = burst
        self._rate = rate
        self._max_senders = max_senders
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def allow(self, sender: str) -> bool:
        now = self._clock()
        tokens, at = self._buckets.pop(sender, (float(self._burst), now))
        elapsed = max(0.0, now - at)  # a clock that steps back gives no tokens, takes none
        tokens = min(float(self._burst), tokens + elapsed * self._rate)
        allowed = tokens >= 1
        self._buckets[sender] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self._max_senders:
            self._buckets.popitem(last=False)
        return allowed


class RefusalLog:
    """Log lines about refused requests that nobody can turn into a flood of the log.

    Within each `period` of seconds, the first refusal of a sender gets its own line, for at
    most `senders_per_period` senders; every other refusal is only counted, and the count is
    logged in one summary line when the period ends: at most `senders_per_period + 1` lines
    per period, whatever arrives. `schedule(delay, callback)` (the event loop's `call_later`)
    writes the summary on time; without it, the summary waits for the next refusal.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        clock: Callable[[], float] = time.monotonic,  # an interval clock: never the wall clock
        *,
        level: int = logging.INFO,
        period: float = 600.0,
        senders_per_period: int = 10,
        schedule: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None = None,
    ) -> None:
        self._logger = logger
        self._what = what  # in the summary: "3 more <what> in the last 10 minutes"
        self._clock = clock
        self._level = level
        self._period = period
        self._senders_per_period = senders_per_period
        self._schedule = schedule
        self._period_start = clock()
        self._logged: set[str] = set()  # senders with a line of their own in this period
        self._counted = 0  # refusals of this period without a line of their own
        self._summary_timer: asyncio.TimerHandle | None = None

    def refused(self, sender: str, message: str, *args: object) -> None:
        """Note a refusal: `message % args` is logged if it is the sender's first of the period
        (and the period still has room for a new sender); otherwise it is counted."""
        now = self._clock()
        if now - self._period_start >= self._period:
            self.summarize()
        if sender not in self._logged and len(self._logged) < self._senders_per_period:
            self._logged.add(sender)
            self._logger.log(self._level, message, *args)
            return
        self._counted += 1
        if self._schedule is not None and self._summary_timer is None:
            delay = max(0.0, self._period_start + self._period - now)
            self._summary_timer = self._schedule(delay, self.summarize)

    def summarize(self) -> None:
        """Log how many refusals were only counted, and begin a new period."""
        if self._summary_timer is not None:
            self._summary_timer.cancel()  # when a refusal summarized first
            self._summary_timer = None
        now = self._clock()
        if self._counted:
            self._logger.log(
                self._level,
                "%d more %s in the last %.0f minutes (only the first of each sender is logged)",
                self._counted,
                self._what,
                max(now - self._period_start, 0.0) / 60,
            )
        self._period_start = now
        self._logged.clear()
        self._counted = 0
