"""The periodic count: first shortly after start, then every interval plus jitter, logged like the
seed, with the day's history kept up to date after each count."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from bot.activity import ActivityTracker
from bot.daemon import count_periodically
from bot.store import Store

from .support import bot_settings

pytestmark = pytest.mark.asyncio


class FakeServer:
    component_jid = "active.example.test"
    component_secret = "s"
    component_port = 5347
    domain = "example.test"


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
