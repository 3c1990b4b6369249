"""The periodic count: first shortly after start, then every interval plus jitter, logged like the
seed, with the day's history kept up to date after each count."""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import replace

import pytest

from bot.activity.tracker import ActivityTracker
from bot.app.duties import count_periodically
from bot.storage.store import Store

from .support import bot_settings


class FakeServer:
    component_jid = "active.example.test"
    component_secret = "s"
    component_port = 5347
    domain = "example.test"


@pytest.mark.asyncio
async def test_counts_are_logged_on_schedule_like_the_seed(tmp_path, caplog):
    settings = replace(
        bot_settings(FakeServer, tmp_path / "a.db"),
        first_count_after=0.01,
        count_interval=0.02,
        count_jitter=300,
    )
    jitters: list[float] = []
    counted = asyncio.Queue()

    async def after_count() -> None:
        counted.put_nowait(None)

    with Store(settings.store_path) as store:
        tracker = ActivityTracker(store, settings.domains)
        tracker.load(1_800_000_000)
        tracker.session_started("alice@example.test", "phone", 1_800_000_000)
        caplog.set_level(logging.INFO, logger="bot.daemon")
        task = asyncio.create_task(
            count_periodically(
                tracker,
                settings,
                clock=lambda: 1_800_000_000,
                jitter=lambda upper: jitters.append(upper) or 0.0,
                after_count=after_count,
            )
        )
        for _ in range(3):
            await asyncio.wait_for(counted.get(), 5)
        task.cancel()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Active users")]
    assert len(lines) >= 3
    assert lines[0].startswith("Active users (took ")
    assert " µs): 1 (24 hours), 1 (7 days), 1 (30 days); online: 1 users, 1 sessions" in lines[0]
    assert jitters[:2] == [300, 300]  # jitter drawn from 0..jitter every time


@pytest.mark.asyncio
async def test_first_count_waits_first_count_after_then_each_wait_is_interval_plus_a_new_draw(
    tmp_path,
):
    """Measured with the loop's clock: every wait is at least what it should be. (Timers are
    never early; they may be late on a loaded machine, so only lower bounds are asserted, and
    the waits are chosen so that a missing delay or jitter falls far below them.)"""
    settings = replace(
        bot_settings(FakeServer, tmp_path / "a.db"),
        first_count_after=0.3,
        count_interval=0.05,
        count_jitter=10,
    )
    draws = iter([0.25, 0.15, 0.2])
    drawn: list[tuple[float, float]] = []  # (upper bound asked, value drawn)

    def jitter(upper: float) -> float:
        value = next(draws)
        drawn.append((upper, value))
        return value

    loop = asyncio.get_running_loop()
    counted_at: list[float] = []
    counted = asyncio.Queue()

    async def after_count() -> None:
        counted_at.append(loop.time())
        counted.put_nowait(None)

    with Store(settings.store_path) as store:
        tracker = ActivityTracker(store, settings.domains)
        tracker.load(1_800_000_000)
        started = loop.time()
        task = asyncio.create_task(
            count_periodically(
                tracker,
                settings,
                clock=lambda: 1_800_000_000,
                jitter=jitter,
                after_count=after_count,
            )
        )
        try:
            for _ in range(3):
                await asyncio.wait_for(counted.get(), 10)
        finally:
            task.cancel()
    waits = [
        later - earlier
        for earlier, later in zip([started, *counted_at[:-1]], counted_at, strict=True)
    ]
    expected = [0.3, 0.05 + 0.25, 0.05 + 0.15]
    resolution = 0.001  # the loop may run a timer up to its clock resolution early
    assert all(wait >= want - resolution for wait, want in zip(waits, expected, strict=True)), (
        f"waits {waits}, expected at least {expected}"
    )
    assert [upper for upper, _ in drawn] == [10, 10, 10]  # a new draw after every count


def test_default_jitter_is_uniform_between_zero_and_the_configured_jitter():
    jitter = inspect.signature(count_periodically).parameters["jitter"].default
    draws = [jitter(300) for _ in range(2000)]
    assert all(0 <= draw <= 300 for draw in draws)
    assert min(draws) < 15  # spread over the range, not a constant
    assert max(draws) > 285
    assert len(set(draws)) > 1900
