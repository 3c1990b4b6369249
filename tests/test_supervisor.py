"""Background duties are supervised: a failure is logged with its traceback and the duty restarts;
a duty that keeps failing ends the bot with status 70, so that systemd restarts it."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from bot.app.daemon import Bot
from bot.app.supervisor import EXIT_DUTY_FAILED, Backoff, DutyFailed, supervise
from bot.storage.pending import Batch

from .support import FAST, RunningBot, bot_settings

pytestmark = pytest.mark.asyncio

QUICK = Backoff(first_delay=0.01, max_delay=0.04, max_failures=3, window=60)


async def until(condition, timeout: float = 5) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_a_failing_duty_is_logged_and_restarted_with_backoff(caplog, monkeypatch):
    runs = 0
    delays: list[float] = []
    running = asyncio.Event()
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("bot.app.supervisor.asyncio.sleep", sleep)

    async def duty() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"failure {runs}")
        running.set()
        await asyncio.Event().wait()  # then runs forever

    restarts: Counter[str] = Counter()
    task = asyncio.create_task(supervise("flush", duty, restarts, QUICK))
    await asyncio.wait_for(running.wait(), 5)
    task.cancel()
    assert restarts == Counter({"flush": 2})
    assert delays == [0.01, 0.02]  # backoff doubles
    failures = [r for r in caplog.records if r.getMessage() == "Background duty 'flush' failed"]
    assert [str(r.exc_info[1]) for r in failures] == ["failure 1", "failure 2"]  # tracebacks


async def test_a_duty_that_keeps_failing_gives_up():
    async def duty() -> None:
        raise RuntimeError("always")

    restarts: Counter[str] = Counter()
    with pytest.raises(DutyFailed, match="'count' failed 3 times"):
        await asyncio.wait_for(supervise("count", duty, restarts, QUICK), 5)
    assert restarts["count"] == 2


async def test_the_bot_restarts_a_failed_flush_and_loses_nothing(prosody, tmp_path, caplog):
    bot = Bot(bot_settings(prosody, tmp_path / "a.db"), timing=FAST, backoff=QUICK)
    real_write = bot.store.write_batch
    failures = 0

    def flaky_flush(batch: Batch) -> None:
        nonlocal failures
        if failures < 1:
            failures += 1
            raise RuntimeError("a bug in the flush")
        return real_write(batch)

    bot.store.write_batch = flaky_flush
    running = await RunningBot(bot).start()
    try:
        await until(lambda: bot.duty_restarts["flush"] == 1)
        assert running.task is not None
        assert not running.task.done()
        await until(lambda: not bot.store.pending)  # the restarted duty writes what was pending
        assert bot.metrics_snapshot().duty_restarts == {"flush": 1}
    finally:
        assert await running.stop() == 0
    assert "Background duty 'flush' failed" in caplog.text


async def test_the_bot_exits_70_when_a_duty_keeps_failing(prosody, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    bot = Bot(bot_settings(prosody, tmp_path / "a.db"), timing=FAST, backoff=QUICK)

    def broken_flush(batch: Batch) -> None:
        raise RuntimeError("always broken")

    bot.store.write_batch = broken_flush
    running = await RunningBot(bot).start()
    assert running.task is not None
    assert await asyncio.wait_for(running.task, 10) == EXIT_DUTY_FAILED
    assert "background duty 'flush' failed 3 times" in caplog.text
