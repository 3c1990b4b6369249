"""How the end of a session reaches the bot, on Prosody 0.12 and 13 (each test runs on both):
a connection that drops, and stream management (XEP-0198, what mobile clients use), whose session
outlives its connection for mod_smacks' hibernation time.

The session's Prosodys load mod_smacks with a short `smacks_hibernation_time` (conftest.py; 2 s,
where Prosody's default is 600 s). A dropped connection here is a TCP close without `</stream>`
(a killed app, a reset by a NAT): what the server sees when a phone's connection goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
import pytest_asyncio

from bot.testbed.clients import connect_client, disconnect_client

from .support import USERS

pytestmark = pytest.mark.asyncio

PROMPT = 1.0  # seconds: "at once", on a loaded 2-CPU machine


@pytest_asyncio.fixture
async def mobile(prosody):
    """`await mobile("alice", "phone")`: a client with stream management (XEP-0198) enabled,
    resumable; each is closed at the end of the test."""
    started = []

    async def login(user: str, resource: str):
        client = await connect_client(
            prosody, f"{user}@example.test", USERS[user], resource=resource, plugins=("xep_0198",)
        )
        started.append(client)
        if not client.plugin["xep_0198"].enabled_in:
            await client.wait_until("sm_enabled", 5)
        assert client.plugin["xep_0198"].sm_id, "Prosody did not offer to resume the stream"
        return client

    yield login
    for client in started:
        with contextlib.suppress(Exception):
            await disconnect_client(client)


async def drop(client) -> float:
    """Close the client's TCP connection without closing its stream; when it was closed."""
    gone = asyncio.ensure_future(client.wait_until("disconnected", 5))
    client.abort()
    await gone
    return time.monotonic()


async def test_the_component_is_granted_presence_by_privilege_2(start_bot, clients, caplog):
    caplog.set_level(logging.INFO, logger="bot.component")
    bot = await start_bot()
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")  # sent after the advertisement
    granted = [r.getMessage() for r in caplog.records if "Privileges granted" in r.getMessage()]
    assert granted == [
        "Privileges granted by example.test (urn:xmpp:privilege:2): presence=managed_entity"
    ]


async def test_a_dropped_connection_is_a_logout_at_once(start_bot, clients):
    bot = await start_bot()
    alice = await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    clients.connected.remove(alice)

    dropped = await drop(alice)
    await bot.expect("unavailable", "alice@example.test/phone")
    waited = time.monotonic() - dropped
    print(f"\nunavailable {waited:.3f} s after the connection dropped")
    assert waited < PROMPT
    assert bot.bot.tracker.online_sessions() == set()


async def test_stream_management_logout_is_at_once(start_bot, mobile):
    bot = await start_bot()
    phone = await mobile("alice", "phone")
    await bot.expect("available", "alice@example.test/phone")

    closing = time.monotonic()
    await disconnect_client(phone)  # the app logs out: it closes its stream
    await bot.expect("unavailable", "alice@example.test/phone")
    assert time.monotonic() - closing < PROMPT


async def test_stream_management_session_leaves_when_its_hibernation_ends(
    start_bot, mobile, prosody
):
    """The phone's connection drops: Prosody keeps the session for `smacks_hibernation_time`,
    in case the phone comes back; the bot sees it leave when that time is over, and records
    the logout then: 1 s after it (with Prosody's default, 601 s after the drop)."""
    hibernation = prosody.smacks_hibernation
    bot = await start_bot()
    phone = await mobile("alice", "phone")
    await bot.expect("available", "alice@example.test/phone")

    dropped = await drop(phone)
    await bot.expect("unavailable", "alice@example.test/phone", timeout=hibernation + 6)
    waited = time.monotonic() - dropped
    print(f"\nunavailable {waited:.3f} s after the drop (smacks_hibernation_time = {hibernation})")
    # Prosody's util.watchdog arms its timer for the timeout plus 1 s (both versions).
    assert hibernation + 1 - 0.2 <= waited < hibernation + 1 + PROMPT
    record = bot.bot.store.get("alice@example.test")
    assert record.last_logout >= int(time.time() - PROMPT)  # the end of the hibernation


async def test_stream_management_session_resumed_in_time_never_left(start_bot, mobile, prosody):
    bot = await start_bot()
    phone = await mobile("alice", "phone")
    await bot.expect("available", "alice@example.test/phone")

    dropped = await drop(phone)
    resumed = asyncio.ensure_future(phone.wait_until("session_resumed", 5))
    phone.connect("127.0.0.1", prosody.c2s_port)  # back in coverage: the same stream goes on
    await resumed
    assert time.monotonic() - dropped < prosody.smacks_hibernation + 1  # before it would end

    # Nothing reaches the bot for the resumed session, not even once its hibernation would have
    # ended: the next change it tracks is bob's, well after that time.
    await asyncio.sleep(max(0.0, dropped + prosody.smacks_hibernation + 1.3 - time.monotonic()))
    bob = await mobile("bob", "pc")
    await bot.expect("available", "bob@example.test/pc")
    assert ("alice@example.test", "phone") in bot.bot.tracker.online_sessions()
    await disconnect_client(bob)
    await bot.expect("unavailable", "bob@example.test/pc")
