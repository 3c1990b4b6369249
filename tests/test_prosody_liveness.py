"""Liveness verdicts through a real Prosody: what the server answers for a gone session, and that
only that answer closes one. A ping that cannot tell (our own link silent or dropped) keeps it.

The bot reaches Prosody through a relay (`LinkProxy`) that can go silent or drop the link while
the sessions themselves stay connected to Prosody.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from bot.testbed.linkproxy import LinkProxy
from bot.xmpp.liveness import Verdict

from .support import bot_starter

pytestmark = pytest.mark.asyncio

ALICE, BOB = "alice@example.test/phone", "bob@example.test/pc"
PINGED = (b"alice@example.test/phone", b"bob@example.test/pc", b"urn:xmpp:ping")


@pytest_asyncio.fixture
async def proxied(prosody, tmp_path):
    """(proxy, start): `start(**settings)` runs a bot that pings every session (as on a server
    that does not re-announce them) and reaches Prosody through `proxy`."""
    async with (
        LinkProxy(prosody.component_port) as proxy,
        bot_starter(
            prosody,
            tmp_path / "activity.db",
            server_port=proxy.port,
            server_software="generic",
            liveness_interval=3600,
        ) as start,
    ):
        yield proxy, start  # the check after the first connection has nothing to ping


async def test_prosody_says_a_gone_session_is_gone_and_a_client_without_ping_is_there(
    start_bot, clients
):
    bot = await start_bot()
    alice = await clients.login(ALICE)  # slixmpp without XEP-0199: feature-not-implemented
    await bot.expect("available", ALICE)
    assert await bot.component.ask_session(ALICE) is Verdict.ALIVE
    assert await bot.component.ask_session("alice@example.test/elsewhere") is Verdict.GONE
    await clients.logout(alice)
    await bot.expect("unavailable", ALICE)
    assert await bot.component.ask_session(ALICE) is Verdict.GONE  # service-unavailable


async def test_pings_that_get_no_answer_over_a_silent_link_keep_the_sessions(proxied, clients):
    proxy, start = proxied
    bot = await start(liveness_timeout=0.5)
    await clients.login(ALICE)
    await clients.login(BOB)
    await bot.expect_set({("available", ALICE), ("available", BOB)})
    liveness = bot.component.liveness

    proxy.stall()  # the bot's link goes silent: its pings time out
    assert await liveness.check_now() == 0
    assert (liveness.pings_sent, liveness.undecided) == (2, 2)
    assert bot.bot.tracker.online_sessions() == {
        ("alice@example.test", "phone"),
        ("bob@example.test", "pc"),
    }

    proxy.resume()  # pinged again: both answer
    assert await liveness.check_now() == 0
    assert (liveness.pings_sent, liveness.undecided) == (4, 2)
    assert len(bot.bot.tracker.online_sessions()) == 2
    snapshot = bot.bot.metrics_snapshot()  # what /metrics exports
    assert snapshot.session_pings == {"alive": 2, "gone": 0, "cannot tell": 2}
    assert snapshot.pings_in_flight == 0


async def test_pings_waiting_when_the_bot_link_drops_keep_the_sessions(proxied, clients):
    proxy, start = proxied
    bot = await start(liveness_timeout=20)
    await clients.login(ALICE)
    await clients.login(BOB)
    await bot.expect_set({("available", ALICE), ("available", BOB)})
    liveness = bot.component.liveness

    proxy.stall()
    checking = asyncio.ensure_future(liveness.check_now())
    await proxy.sent_by_bot(*PINGED)  # both pings are on their way, held back
    reconnected = asyncio.ensure_future(bot.component.wait_until("liveness_checked", 15))
    proxy.cut()  # ... and the bot's link drops: no answer can come
    proxy.resume()
    # Decided when the link dropped, long before the pings' own timeout.
    assert await asyncio.wait_for(checking, 10) == 0
    assert liveness.undecided == 2
    assert len(bot.bot.tracker.online_sessions()) == 2
    assert await reconnected == 0  # checked again after reconnecting: both answer
    assert len(bot.bot.tracker.online_sessions()) == 2
