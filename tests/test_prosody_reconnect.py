"""Reconnections through a real Prosody: sessions the server does not re-announce end exactly when
the bot last knew them, and a resync belongs to its own connection, even when the link drops again
within its grace.

The link is broken on purpose by a relay between the bot and Prosody (`LinkProxy`), and the bot's
clock is the test's: the drop, the outage and the end of the resync each happen at a time the test
chose, so the times asserted are exact.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
import pytest_asyncio

from bot.testbed.linkproxy import LinkProxy
from bot.xmpp import connection as component_module

from .support import FAST, Clock, RunningBot, bot_starter

pytestmark = pytest.mark.asyncio

ALICE, BOB = "alice@example.test/phone", "bob@example.test/pc"


@pytest_asyncio.fixture
async def proxied(prosody, tmp_path):
    """(proxy, start): `start(clock=..., timing=...)` runs a bot that reaches Prosody through
    `proxy`."""
    async with (
        LinkProxy(prosody.component_port) as proxy,
        bot_starter(prosody, tmp_path / "activity.db", server_port=proxy.port) as start,
    ):
        yield proxy, start


async def drop_and_hold(proxy: LinkProxy, connection: int) -> None:
    """Break the bot's link and keep it away: its next connection waits for `release()`. Once
    that connection arrives, the bot has noted the drop."""
    proxy.hold()
    proxy.cut()
    await proxy.connection(connection)


async def release(proxy: LinkProxy, bot: RunningBot) -> None:
    started = asyncio.ensure_future(bot.component.wait_until("session_start", 15))
    proxy.release()
    await started


async def test_a_session_that_ended_unseen_is_closed_at_the_drop_not_at_the_resync(
    proxied, clients
):
    proxy, start = proxied
    t0 = int(time.time())
    clock = Clock(t0)
    bot = await start(clock=clock)
    alice = await clients.login(ALICE)
    await clients.login(BOB)
    await bot.expect_set({("available", ALICE), ("available", BOB)})
    bob_before = bot.bot.store.get("bob@example.test")

    clock.now = t0 + 60
    await drop_and_hold(proxy, 2)  # the link drops at t0 + 60
    clock.now = t0 + 120  # the outage lasts
    assert bot.bot.heartbeat_clock() == t0 + 60  # the bot knows who was online until the drop
    await clients.logout(alice)  # alice leaves while nobody tells the bot

    resynced = asyncio.ensure_future(bot.component.wait_until("resynced", 15))
    await release(proxy, bot)  # Prosody re-announces bob, not alice
    assert bot.bot.heartbeat_clock() == t0 + 60  # still re-learning who is online
    clock.now = t0 + 180  # the resync's grace ends later still
    assert await resynced == 1

    alice_record = bot.bot.store.get("alice@example.test")
    assert (alice_record.sessions, alice_record.last_logout) == ((), t0 + 60)
    assert bot.bot.store.get("bob@example.test") == bob_before  # re-announced: unchanged
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}
    assert bot.bot.heartbeat_clock() == t0 + 180  # caught up


async def test_a_second_drop_within_the_resync_grace_leaves_the_resync_to_the_next_connection(
    proxied, clients, monkeypatch
):
    """Drop, reconnect (both re-announced), drop again before the grace ends, alice leaves,
    reconnect: the first reconnection's timer must not end the second one's resync (nor mark
    the bot caught up); alice ends at the second drop, when she was last known online."""
    monkeypatch.setattr(component_module, "RECONNECT_FIRST_DELAY", 0.05)  # reconnect at once
    proxy, start = proxied
    t0 = int(time.time())
    clock = Clock(t0)
    bot = await start(clock=clock, timing=replace(FAST, resync_grace=2.0))
    events: asyncio.Queue[tuple[str, int, int, bool]] = asyncio.Queue()

    def note(kind: str) -> None:  # what the bot knew at that moment
        alice_online = bot.bot.tracker.is_online("alice@example.test", "phone")
        events.put_nowait((kind, bot.bot.heartbeat_clock(), alice_online))

    bot.component.add_event_handler("resynced", lambda _: note("resynced"))
    bot.component.add_event_handler("resync_abandoned", lambda _: note("abandoned"))
    alice = await clients.login(ALICE)
    await clients.login(BOB)
    await bot.expect_set({("available", ALICE), ("available", BOB)})
    bob_before = bot.bot.store.get("bob@example.test")

    clock.now = t0 + 60
    await drop_and_hold(proxy, 2)
    await release(proxy, bot)  # the second connection: its resync begins, its grace 2 s
    await proxy.relayed(ALICE.encode(), BOB.encode())  # both re-announced (seen before the cut)
    clock.now = t0 + 70
    await drop_and_hold(proxy, 3)  # dropped again within that grace
    clock.now = t0 + 80
    await clients.logout(alice)
    await release(proxy, bot)  # the third connection: bob re-announced, alice gone

    # The second connection's timer fires first, during the third one's grace: it does nothing.
    assert await asyncio.wait_for(events.get(), 10) == ("abandoned", t0 + 70, True)
    clock.now = t0 + 90
    assert await asyncio.wait_for(events.get(), 10) == ("resynced", t0 + 90, False)
    alice_record = bot.bot.store.get("alice@example.test")
    assert (alice_record.sessions, alice_record.last_logout) == ((), t0 + 70)
    assert bot.bot.store.get("bob@example.test") == bob_before
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}
