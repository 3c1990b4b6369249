"""Supervision of the bot's background duties (flush, count and history, liveness checks).

A duty runs forever. If it raises, its traceback is logged and it is started again after a
backoff; if it keeps failing, `DutyFailed` ends the bot with a non-zero status, so that the
service manager restarts the whole process (systemd: Restart=on-failure) instead of the bot
running on without, say, ever writing its store again. A duty the bot can run on without
(retention) has no such limit (`max_failures=None`): it is retried, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("bot.supervisor")  # its name from before the layers: admins grep it

EXIT_DUTY_FAILED = 70  # EX_SOFTWARE: not 1 or 2, which the systemd unit treats as fatal


class DutyFailed(Exception):
    """A duty failed too often in a short time: restarting it in-process does not help."""


@dataclass(frozen=True)
class Backoff:
    first_delay: float = 1.0
    max_delay: float = 60.0
    max_failures: int | None = 5  # within `window` seconds: then give up; None: never
    window: float = 600.0


DEFAULT_BACKOFF = Backoff()


async def supervise(
    name: str,
    duty: Callable[[], Awaitable[None]],
    restarts: Counter[str],
    backoff: Backoff = DEFAULT_BACKOFF,
) -> None:
    """Run `duty()` again and again; count each restart in `restarts[name]` (for the metrics)."""
    loop = asyncio.get_running_loop()
    failures: deque[float] = deque()
    delay = backoff.first_delay
    while True:
        started = loop.time()
        try:
            await duty()
            log.error("Background duty %r ended although it should run forever", name)
        except Exception:
            log.exception("Background duty %r failed", name)
        now = loop.time()
        if now - started > backoff.max_delay:
            delay = backoff.first_delay  # it had been running well: not a tight loop
        failures.append(now)
        while failures and failures[0] < now - backoff.window:
            failures.popleft()
        if backoff.max_failures is not None and len(failures) >= backoff.max_failures:
            raise DutyFailed(
                f"background duty {name!r} failed {len(failures)} times within "
                f"{backoff.window:.0f} s; stopping so that the service manager restarts the bot"
            )
        restarts[name] += 1
        log.warning("Restarting background duty %r in %.0f s", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, backoff.max_delay)
