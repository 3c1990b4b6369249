"""Stopping when the store cannot be written: retried for a bounded time, then the loss is said
plainly and the exit status is 2 (never a claim that the records are kept)."""

from __future__ import annotations

import logging

import pytest

from bot.app.daemon import EXIT_NOT_SAVED, Bot
from bot.storage.pending import Batch
from bot.storage.store import Store
from bot.testbed.clients import connect_client, disconnect_client

from .support import FAST, RunningBot, bot_settings

pytestmark = pytest.mark.asyncio


async def test_stop_while_the_disk_is_full_retries_then_says_what_is_lost(
    prosody, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    bot = await RunningBot(Bot(bot_settings(prosody, tmp_path / "a.db"), timing=FAST)).start()
    cx = bot.bot.store._db._cx  # fault injection: the store's own connection
    pages = cx.execute("PRAGMA page_count").fetchone()[0]
    cx.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from now on
    alice = await connect_client(prosody, "alice@example.test", "alicepw", resource="phone")
    try:
        await bot.expect("available", "alice@example.test/phone")
    finally:
        await disconnect_client(alice)
    await bot.expect("unavailable", "alice@example.test/phone")
    for n in range(300):  # enough changes that the full disk refuses them
        bot.bot.store.put(f"user{n}@example.test", bot.bot.store.get("alice@example.test"))
    assert await bot.stop() == EXIT_NOT_SAVED
    retries = [r for r in caplog.records if "Writing the store at shutdown failed" in r.message]
    assert len(retries) >= 2  # it kept trying for the budget
    assert "Stopped without writing the changes of 301 users" in caplog.text
    assert "They are lost" in caplog.text
    assert "kept in memory" not in caplog.text.split("Stopping")[-1]
    with Store(tmp_path / "a.db", readonly=True) as store:  # the file is intact
        assert store.get("alice@example.test") is None  # lost, as the log said


async def test_stop_writes_everything_when_the_disk_has_room_again(prosody, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    bot = await RunningBot(Bot(bot_settings(prosody, tmp_path / "a.db"), timing=FAST)).start()
    cx = bot.bot.store._db._cx
    pages = cx.execute("PRAGMA page_count").fetchone()[0]
    cx.execute(f"PRAGMA max_page_count = {pages}")
    alice = await connect_client(prosody, "alice@example.test", "alicepw", resource="phone")
    try:
        await bot.expect("available", "alice@example.test/phone")
        for n in range(300):
            bot.bot.store.put(f"user{n}@example.test", bot.bot.store.get("alice@example.test"))
    finally:
        await disconnect_client(alice)
    original_write = bot.bot.store.write_batch
    attempts = 0

    def flush_then_free_space(batch: Batch) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:  # space comes back while the bot retries at shutdown
            cx.execute("PRAGMA max_page_count = 1073741823")
        return original_write(batch)

    await bot.expect("unavailable", "alice@example.test/phone")
    bot.bot.store.write_batch = flush_then_free_space
    assert await bot.stop() == 0
    assert "Store flushed and closed" in caplog.text
    with Store(tmp_path / "a.db", readonly=True) as store:
        assert store.get("alice@example.test") is not None
        assert len(list(store.users())) == 301
