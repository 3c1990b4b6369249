"""The bot's background duties keep each other's faults to themselves: a retention pass that keeps
failing never restarts the count nor stops the bot, and a fault in the day's peak costs the peak,
never the records (the flushes go on; the shutdown still writes what is pending).

A real Bot connected to the session's Prosody, with the fault injected into the one part it
belongs to (the tracker's retention or peak code)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.app.daemon import Bot
from bot.app.supervisor import Backoff
from bot.core.model import UserRecord
from bot.storage.flushing import flush_periodically
from bot.storage.store import Store

from .support import FAST, RunningBot, bot_settings

QUICK = Backoff(first_delay=0.01, max_delay=0.05, max_failures=3, window=600)


async def until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def stored(path) -> set[str]:
    with Store(path, readonly=True) as store:
        return {jid for jid, _ in store.users()}


def broken_peak() -> bool:
    raise RuntimeError("a bug in the day's peak")


@pytest.mark.asyncio
async def test_a_failing_retention_pass_neither_restarts_the_count_nor_stops_the_bot(
    prosody, tmp_path
):
    settings = bot_settings(
        prosody,
        tmp_path / "a.db",
        retention_days=400,
        first_count_after=0,
        count_interval=0.05,
    )
    bot = Bot(settings, timing=FAST, backoff=QUICK)  # 3 failures of a duty: the bot exits 70
    passes = counts = 0

    async def failing_retention(*_args: object) -> int:
        nonlocal passes
        passes += 1
        raise OSError("reading the store for retention failed")

    count_housekeeping = bot.duties.after_count

    async def counted() -> None:
        nonlocal counts
        counts += 1
        await count_housekeeping()

    bot.tracker.forget_inactive_soon = failing_retention
    bot.duties.after_count = counted
    running = await RunningBot(bot).start()
    try:
        await until(lambda: passes >= 8)
        assert not running.task.done(), f"the bot stopped: exit {running.task.result()}"
        assert bot.duty_restarts["count"] == 0
        assert bot.duty_restarts["retention"] >= 7
        counts_then = counts
        await until(lambda: counts >= counts_then + 3)  # the counts go on
    finally:
        assert await running.stop() == 0


@pytest.mark.asyncio
async def test_a_fault_in_the_peak_costs_the_peak_never_the_flushes(prosody, tmp_path, clients):
    path = tmp_path / "a.db"
    bot = Bot(bot_settings(prosody, path, flush_interval=0.1), timing=FAST, backoff=QUICK)
    bot.tracker.peaks.take_rose = broken_peak  # every flush's hook fails
    running = await RunningBot(bot).start()
    try:
        await clients.login("alice@example.test/phone")
        await running.expect("available", "alice@example.test/phone")
        await until(lambda: "alice@example.test" in stored(path), timeout=3)
        assert bot.history_failures >= 1
        assert bot.duty_restarts["flush"] == 0
    finally:
        assert await running.stop() == 0


@pytest.mark.asyncio
async def test_a_fault_in_the_peak_at_shutdown_still_writes_the_pending_records(
    prosody, tmp_path, clients
):
    path = tmp_path / "a.db"
    bot = Bot(bot_settings(prosody, path, flush_interval=3600), timing=FAST)  # no flush before
    running = await RunningBot(bot).start()
    await clients.login("alice@example.test/phone")
    await running.expect("available", "alice@example.test/phone")
    assert bot.store.pending >= 1
    bot.tracker.peaks.take_rose = broken_peak  # the shutdown's snapshot of today fails
    assert await running.stop() == 0
    assert bot.history_failures == 1
    assert "alice@example.test" in stored(path)


@pytest.mark.asyncio
async def test_a_failing_hook_never_stops_the_flushes(tmp_path):
    """flush_periodically itself: whatever `before_flush` raises, the records are written."""
    calls = 0

    def failing_hook() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug before the flush")

    with Store(tmp_path / "a.db") as store:
        store.put("alice@example.test", UserRecord(1_800_000_000, 1_800_000_000, 0))
        task = asyncio.create_task(
            flush_periodically(store, 0.01, lambda: 1_800_000_000, before_flush=failing_hook)
        )
        try:
            await until(lambda: store.pending == 0 and calls >= 3, timeout=3)
            assert not task.done()  # still flushing: the hook's fault did not end it
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert stored(tmp_path / "a.db") == {"alice@example.test"}
