"""An unavailable presence ends a session; one that is still connected is online again, through a
real Prosody 0.12.

A client may send `<presence type="unavailable" to="active.example.test"/>` to the bot alone and
stay connected. Prosody forwards it exactly as it forwards a broadcast one under XEP-0356
(`managed_entity`): the same attributes, `to` the component's JID, nothing wrapped; and so it does
for a user who subscribed to the bot instead (no privilege). So the bot ends the session at once,
then asks it by ping (twice, FAST's `unavailable_followup` apart): the server answers
service-unavailable for a session that is gone; a session that answers is online again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
import pytest_asyncio
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bot.core.counter import DAY
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.sandbox import ProsodySandbox

from .support import FAST, USERS, Clock, bot_starter

pytestmark = pytest.mark.asyncio

ALICE = "alice@example.test/phone"
COMPONENT = "active.example.test"
NS_CLIENT, NS_PING = "jabber:client", "urn:xmpp:ping"


async def test_an_unavailable_sent_to_the_bot_alone_keeps_the_session_online(start_bot, clients):
    t0 = int(time.time())
    clock = Clock(t0)
    bot = await start_bot(clock=clock)
    alice = await clients.login(ALICE)
    await bot.expect("available", ALICE)

    clock.now = t0 + 60
    alice.send_presence(pto=COMPONENT, ptype="unavailable")  # to the bot alone; she stays
    await bot.expect("unavailable", ALICE)  # taken at its word at first...
    await bot.expect("resumed", ALICE)  # ... but her client answered the bot's pings
    clock.now = t0 + 2 * DAY  # connected for two days since
    figures = bot.figures()
    assert (figures.online_users, figures.dau) == (1, 1)
    record = bot.bot.store.get("alice@example.test")
    assert (record.sessions, record.last_login, record.last_logout) == (("phone",), t0, t0 + 60)

    await clients.logout(alice)  # she leaves: Prosody's unavailable, and she is gone
    await bot.expect("unavailable", ALICE)
    record = bot.bot.store.get("alice@example.test")
    assert (record.sessions, record.last_login, record.last_logout) == ((), t0, t0 + 2 * DAY)


async def test_a_client_that_says_unavailable_and_leaves_ends_when_it_left(start_bot, clients):
    t0 = int(time.time())
    clock = Clock(t0)
    bot = await start_bot(clock=clock)
    alice = await clients.login(ALICE)
    await bot.expect("available", ALICE)

    clock.now = t0 + 60
    confirmed = asyncio.ensure_future(bot.component.wait_until("unavailable_confirmed", 10))
    alice.send_presence(ptype="unavailable")  # a polite client says goodbye to everyone...
    await clients.logout(alice)  # ... and leaves
    await bot.expect("unavailable", ALICE)  # ended at once
    # The pings find her gone (even one that reached her as she was leaving is followed by
    # another): she stays offline.
    assert str(await confirmed) == ALICE
    assert bot.tracked.empty()
    record = bot.bot.store.get("alice@example.test")
    assert (record.sessions, record.last_logout) == ((), t0 + 60)


async def test_a_client_that_answers_a_ping_as_it_leaves_is_not_put_back(start_bot, clients):
    """The race of a real logout: the client says unavailable, the bot's first ping reaches it
    before it closes its stream, and it answers. The second ping (2 s later here) finds it
    gone: it stays offline."""
    t0 = int(time.time())
    clock = Clock(t0)
    bot = await start_bot(clock=clock, timing=replace(FAST, unavailable_followup=2.0))
    alice = await clients.login(ALICE)
    await bot.expect("available", ALICE)
    pinged = asyncio.Event()

    def pong(iq) -> None:
        iq.reply().send()
        pinged.set()

    alice.register_handler(
        Callback("Pong", MatchXPath(f"{{{NS_CLIENT}}}iq/{{{NS_PING}}}ping"), pong)
    )
    clock.now = t0 + 60
    confirmed = asyncio.ensure_future(bot.component.wait_until("unavailable_confirmed", 10))
    alice.send_presence(ptype="unavailable")
    await bot.expect("unavailable", ALICE)
    await asyncio.wait_for(pinged.wait(), 5)  # she answered the first ping...
    await clients.logout(alice)  # ... and left
    assert str(await confirmed) == ALICE
    assert bot.tracked.empty()  # not put back
    record = bot.bot.store.get("alice@example.test")
    assert (record.sessions, record.last_logout) == ((), t0 + 60)


async def test_a_session_that_said_unavailable_and_answered_ends_at_its_last_answer(
    start_bot, clients
):
    """A client says unavailable to everyone but stays connected (it answers the bot's ping),
    then leaves: Prosody says nothing more (the session had no presence left). The bot's next
    ping of that session (1 s later here, FAST) finds it gone: closed at its last answer."""
    t0 = int(time.time())
    clock = Clock(t0)
    bot = await start_bot(clock=clock)
    alice = await clients.login(ALICE)
    await bot.expect("available", ALICE)

    clock.now = t0 + 60
    alice.send_presence(ptype="unavailable")
    await bot.expect("unavailable", ALICE)
    await bot.expect("resumed", ALICE)  # she answered the pings, at t0 + 60
    clock.now = t0 + 120
    await clients.logout(alice)
    await bot.expect("gone", ALICE)
    record = bot.bot.store.get("alice@example.test")
    assert (record.sessions, record.last_logout) == ((), t0 + 60)


# --- without XEP-0356: users who subscribed to the bot ------------------------------------------


@pytest.fixture(scope="module")
def prosody_without_privilege(tmp_path_factory):
    sandbox = ProsodySandbox(tmp_path_factory.mktemp("prosody-fallback"), grant_presence=False)
    sandbox.start()
    try:
        for user, password in USERS.items():
            sandbox.register(user, password)
        yield sandbox
    finally:
        sandbox.stop()


@pytest_asyncio.fixture
async def subscribed(prosody_without_privilege, tmp_path):
    """A bot on a Prosody that grants it nothing, and alice, who subscribed to it (the bot
    subscribed back) in an earlier session: her presence goes to the bot as to any contact."""
    server = prosody_without_privilege
    async with bot_starter(server, tmp_path / "activity.db") as start:
        bot = await start()
        earlier = await connect_client(server, "alice@example.test", USERS["alice"], "setup")
        both_ways = asyncio.Event()

        def on_roster(_event) -> None:
            if earlier.client_roster[COMPONENT]["subscription"] == "both":
                both_ways.set()

        earlier.add_event_handler("roster_update", on_roster)
        await earlier.get_roster()  # Prosody pushes roster changes to sessions that asked
        earlier.send_presence(pto=COMPONENT, ptype="subscribe")
        await asyncio.wait_for(both_ways.wait(), 10)  # the bot accepted and subscribed back
        await bot.expect("available", "alice@example.test/setup")  # only now shared with it
        await disconnect_client(earlier)
        await bot.expect("unavailable", "alice@example.test/setup")
        yield bot


async def test_a_subscribed_user_without_privilege_is_tracked_the_same_way(
    subscribed, prosody_without_privilege
):
    bot = subscribed
    alice = await connect_client(
        prosody_without_privilege, "alice@example.test", USERS["alice"], "phone"
    )
    try:
        await bot.expect("available", ALICE)
        alice.send_presence(pto=COMPONENT, ptype="unavailable")  # to the bot alone; she stays
        await bot.expect("unavailable", ALICE)
        await bot.expect("resumed", ALICE)
        assert bot.bot.tracker.online_sessions() == {("alice@example.test", "phone")}
    finally:
        await disconnect_client(alice)  # she leaves: her contacts, the bot among them, are told
    await bot.expect("unavailable", ALICE)
    assert bot.bot.tracker.online_sessions() == set()
