"""Presence through a real Prosody becomes the figures: sessions, restarts of the bot or of
Prosody, a dropped component connection, liveness pings, and presences that must not count.

One Prosody serves the whole session (conftest.py); each test runs its own bot with its own store,
and stops it and every client it started before the next test begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from bot.activity.tracker import ActivityTracker
from bot.storage.store import Store
from bot.testbed.sandbox import refused_port

from .support import Clock, LogWatch, ask_adhoc

pytestmark = pytest.mark.asyncio


async def test_two_resources_of_one_user_give_exact_figures(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")

    phone = await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    laptop = await clients.login("alice@example.test/laptop")
    await bot.expect("available", "alice@example.test/laptop")
    figures = await ask_adhoc(admin)
    assert figures["online_users"] == "2"  # admin and alice
    assert figures["online_sessions"] == "3"
    assert (figures["dau"], figures["wau"], figures["mau"]) == ("2", "2", "2")

    await clients.logout(laptop)
    await bot.expect("unavailable", "alice@example.test/laptop")
    assert (await ask_adhoc(admin))["online_users"] == "2"  # her phone is still online
    await clients.logout(phone)
    await bot.expect("unavailable", "alice@example.test/phone")
    figures = await ask_adhoc(admin)
    assert (figures["online_users"], figures["online_sessions"]) == ("1", "1")
    assert (figures["dau"], figures["known_users"]) == ("2", "2")  # alice was active today

    record = bot.bot.store.get("alice@example.test")
    assert record.sessions == ()
    assert record.last_logout >= record.last_login > 0


async def test_bot_restarted_while_users_stay_online_relearns_them(start_bot, clients, tmp_path):
    first = await start_bot()
    await clients.login("alice@example.test/phone")
    await first.expect("available", "alice@example.test/phone")
    assert await first.stop() == 0

    second = await start_bot()  # same store; Prosody re-sends the online users' presence
    await second.expect("available", "alice@example.test/phone")
    assert second.bot.tracker.online_sessions() == {("alice@example.test", "phone")}
    figures = second.figures()
    assert (figures.online_users, figures.known_users, figures.dau) == (1, 1, 1)


async def test_prosody_restart_reconnects_and_resyncs(start_bot, clients, prosody):
    bot = await start_bot()
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")

    resynced = asyncio.ensure_future(bot.component.wait_until("resynced", 30))
    reconnected = asyncio.ensure_future(bot.component.wait_until("session_start", 30))
    await asyncio.to_thread(prosody.restart)  # Prosody says alice went offline, then goes away
    await bot.expect("unavailable", "alice@example.test/phone")
    await reconnected
    clients.connected.clear()  # the restart disconnected them
    await clients.login("bob@example.test/pc")
    await bot.expect("available", "bob@example.test/pc")
    await resynced
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}
    figures = bot.figures()
    assert (figures.online_users, figures.dau, figures.known_users) == (1, 2, 2)


@contextlib.asynccontextmanager
async def outage(bot, prosody):
    """The bot's connection drops and the server stays unreachable for the bot until the block
    ends (its reconnection attempts are refused), whatever the block waits for: what happens
    inside is certain to happen while the bot is disconnected. Yields once the bot has noted
    the drop (its log says so)."""
    with refused_port() as port, LogWatch("bot.component") as watch:
        bot.component.server_port = port
        bot.component.abort()  # the connection drops (as a network failure would)
        await watch.next(lambda text: text.startswith("Disconnected from"))
        try:
            yield
        finally:
            bot.component.server_port = prosody.component_port


async def test_session_that_ended_while_disconnected_is_closed_at_the_drop(
    start_bot, clients, prosody
):
    clock = Clock(int(time.time()))
    bot = await start_bot(clock=clock)
    alice = await clients.login("alice@example.test/phone")
    await clients.login("bob@example.test/pc")
    await bot.expect_set(
        {("available", "alice@example.test/phone"), ("available", "bob@example.test/pc")}
    )
    bob_before = bot.bot.store.get("bob@example.test")
    reconnected = asyncio.ensure_future(bot.component.wait_until("session_start", 30))
    resynced = asyncio.ensure_future(bot.component.wait_until("resynced", 30))
    dropped_at = clock.now
    async with outage(bot, prosody):
        clock.now += 1000  # the outage lasts, on the bot's clock
        await clients.logout(alice)  # ... and alice leaves while nobody tells the bot
    await reconnected  # Prosody re-announces bob (no change: he never left), not alice
    clock.now += 1000  # the resync ends later still
    assert await resynced == 1
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}
    alice_record = bot.bot.store.get("alice@example.test")
    assert alice_record.sessions == ()
    assert alice_record.last_logout == dropped_at  # at the drop: not when she left, nor later
    assert bot.bot.store.get("bob@example.test") == bob_before  # re-announced: unchanged


async def test_liveness_pings_close_sessions_that_ended_unseen(start_bot, clients, prosody):
    """As on a server that announces nothing on reconnect (ejabberd): pings decide."""
    clock = Clock(int(time.time()))
    bot = await start_bot(
        clock=clock, server_software="generic", liveness_interval=3600, liveness_timeout=5
    )
    alice = await clients.login("alice@example.test/phone")
    await clients.login("bob@example.test/pc")
    await bot.expect_set(
        {("available", "alice@example.test/phone"), ("available", "bob@example.test/pc")}
    )
    logged_in_at = clock.now
    checked = asyncio.ensure_future(bot.component.wait_until("liveness_checked", 30))
    async with outage(bot, prosody):
        clock.now += 1000
        await clients.logout(alice)  # ... alice leaves unseen
    assert await checked == 1
    await bot.expect("gone", "alice@example.test/phone")  # her ping bounced
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}  # bob answered
    assert bot.component.liveness.pings_sent == 2
    record = bot.bot.store.get("alice@example.test")
    assert record.last_logout == record.last_login == logged_in_at  # her last sign of life


async def test_presence_of_other_domains_and_the_component_itself_is_ignored(start_bot, clients):
    bot = await start_bot()
    carol = await clients.login("carol@example.test/pc")
    await bot.expect("available", "carol@example.test/pc")
    # A directed presence from carol's client with a show value is a presence update, not a login.
    carol.send_presence(pshow="away")
    carol.send_presence(pto="active.example.test", ptype="probe")
    await clients.login("bob@example.test/pc")
    await bot.expect("available", "bob@example.test/pc")  # nothing was tracked in between
    assert bot.figures().online_sessions == 2


async def test_stopped_during_an_outage_sessions_end_when_the_connection_dropped(
    start_bot, clients, prosody, tmp_path
):
    """The heartbeat is the last time the bot knew who was online: during an outage it stays at
    the drop, so the sessions a stop leaves open end there, not at the stop."""
    clock = Clock(int(time.time()))
    bot = await start_bot(clock=clock)
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    dropped_at = clock.now
    async with outage(bot, prosody):
        clock.now += 1000  # the outage lasts
        assert await bot.stop() == 0  # its last flush writes the heartbeat
    stopped_at = clock.now
    with Store(tmp_path / "activity.db", readonly=True) as store:
        assert store.heartbeat == dropped_at
        assert store.get("alice@example.test").sessions == ("phone",)  # left open by the stop
    with Store(tmp_path / "activity.db") as store:  # the next start closes it
        ActivityTracker(store, ["example.test"]).load(stopped_at)
    with Store(tmp_path / "activity.db", readonly=True) as store:
        assert store.get("alice@example.test").last_logout == dropped_at
