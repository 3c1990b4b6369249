"""The flush duty: the store's pending writes written on fixed ticks, failures said once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("bot.store")


async def flush_periodically(
    store: Store,
    interval: float,
    clock: Callable[[], float] = time.time,
    repeat_error_after: float = 600.0,
    before_flush: Callable[[], None] = lambda: None,
) -> None:
    """Flush every `interval` seconds, on fixed ticks so that the gap between flushes never
    grows: an event is on disk at most `interval` (plus one flush's own time) after it happened.

    A failed flush keeps its records pending for the next tick. It is logged once (again when
    the reason changes, and every `repeat_error_after` seconds while it lasts: a full disk
    must not fill the log too), and the recovery is logged too. A failing `before_flush` (the
    day's peak) is logged at most once per `repeat_error_after`; the flush goes on."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    failing_since: float | None = None
    last_reason, last_logged, failures = "", 0.0, 0
    hook_logged = -repeat_error_after
    while True:
        next_tick = max(next_tick + interval, loop.time())  # no backlog after a stall
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
        try:
            before_flush()
        except Exception:  # the hook's fault (the day's peak) must never stop the records
            if loop.time() - hook_logged >= repeat_error_after:
                log.exception("Before a flush, the hook failed; the records are written anyway")
                hook_logged = loop.time()
        try:
            written = await store.flush_off_loop(int(clock()))
        except StoreError as exc:
            failures += 1
            now = loop.time()
            if failing_since is None:
                failing_since = now
            if str(exc) != last_reason or now - last_logged >= repeat_error_after:
                log.error("%s; they are kept in memory and retried at the next flush", exc)
                last_reason, last_logged = str(exc), now
            continue
        if failing_since is not None:
            log.warning(
                "Store writes work again after %d failed flushes over %.0f s; %d users written",
                failures,
                loop.time() - failing_since,
                written,
            )
            failing_since, last_reason, failures = None, "", 0
        if written:
            log.debug("Stored %d changed users", written)
