"""The bot against a real ejabberd 23.01: privilege:1, and liveness pings where presence is silent.

ejabberd forwards only the presences clients send: no unavailable when a client's connection
drops, no initial presences when the bot connects. Pings fill both gaps.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import pytest_asyncio
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from bot.admin.commands import ADHOC_STATS_NODE, CHAT_REFUSED
from bot.testbed.clients import connect_client, disconnect_client
from bot.xmpp.liveness import Verdict

from .support import Chat, Clock, LogWatch, ask_adhoc, bot_starter

pytestmark = pytest.mark.asyncio

PASSWORDS = {"admin": "adminpw", "alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}
LIVENESS = 1.0  # seconds between pings of a session: short, for the tests


@pytest_asyncio.fixture
async def start_bot(ejabberd, tmp_path):
    async with bot_starter(
        ejabberd,
        tmp_path / "activity.db",
        server_software="ejabberd",
        liveness_interval=LIVENESS,
        liveness_timeout=5,
    ) as start:
        yield start


@pytest_asyncio.fixture
async def login(ejabberd):
    clients = []

    async def connect(full_jid: str):
        bare, _, resource = full_jid.partition("/")
        client = await connect_client(
            ejabberd, bare, PASSWORDS[bare.split("@")[0]], resource=resource
        )
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await disconnect_client(client)


async def test_logins_explicit_logouts_and_figures(start_bot, login):
    with LogWatch("bot.component") as watch:
        bot = await start_bot()
        granted = await watch.next(lambda text: text.startswith("Privileges granted"))
        older = await watch.next(lambda text: "speaks the older" in text)
    assert granted.getMessage() == (
        "Privileges granted by example.test (urn:xmpp:privilege:1): "
        "message=none, presence=managed_entity, roster=none"
    )
    assert older.levelname == "WARNING"
    assert "older urn:xmpp:privilege:1" in older.getMessage()
    admin = await login("admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    await login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    laptop = await login("alice@example.test/laptop")
    await bot.expect("available", "alice@example.test/laptop")
    confirmed = asyncio.ensure_future(bot.component.wait_until("unavailable_confirmed", 10))
    laptop.send_presence(ptype="unavailable")  # a polite client says goodbye (forwarded)...
    await disconnect_client(laptop)  # ... and leaves: ejabberd itself says nothing more
    await bot.expect("unavailable", "alice@example.test/laptop")
    assert str(await confirmed) == "alice@example.test/laptop"  # the pings find it gone
    figures = await ask_adhoc(admin)
    assert (figures["online_users"], figures["online_sessions"], figures["dau"]) == ("2", "2", "2")
    assert bot.component.privileges["example.test"] == {
        "roster": "none",
        "message": "none",
        "presence": "managed_entity",
    }


async def test_a_dropped_client_is_closed_by_the_liveness_check(start_bot, login):
    bot = await start_bot()
    bob = await login("bob@example.test/pc")
    await bot.expect("available", "bob@example.test/pc")
    dropped = time.monotonic()
    bob.abort()  # TCP gone, no unavailable: ejabberd tells the bot nothing
    await bot.expect("gone", "bob@example.test/pc", timeout=LIVENESS + 10)
    delay = time.monotonic() - dropped
    print(f"\nejabberd: dropped client closed by the liveness check after {delay:.2f} s")
    assert bot.bot.tracker.online_sessions() == set()
    record = bot.bot.store.get("bob@example.test")
    assert record.last_logout == record.last_login  # closed at its last sign of life


async def test_ejabberd_says_a_gone_session_is_gone_and_a_directed_unavailable_is_not_a_logout(
    start_bot, login
):
    bot = await start_bot()
    alice = await login("alice@example.test/phone")  # slixmpp without XEP-0199
    await bot.expect("available", "alice@example.test/phone")
    assert await bot.component.ask_session("alice@example.test/phone") is Verdict.ALIVE
    assert await bot.component.ask_session("alice@example.test/nope") is Verdict.GONE
    alice.send_presence(pto="active.example.test", ptype="unavailable")  # to the bot alone
    await bot.expect("unavailable", "alice@example.test/phone")
    await bot.expect("resumed", "alice@example.test/phone")  # she answered: online again
    assert bot.bot.tracker.online_sessions() == {("alice@example.test", "phone")}


async def test_bot_restarted_while_users_stay_online_relearns_them_by_pings(start_bot, login):
    first = await start_bot()
    await login("alice@example.test/phone")
    await first.expect("available", "alice@example.test/phone")
    carol = await login("carol@example.test/pc")
    await first.expect("available", "carol@example.test/pc")
    assert await first.stop() == 0
    stopped_at = first.bot.store.heartbeat  # the last time the bot knew carol was there
    carol.abort()  # carol leaves while the bot is down

    # Back 1000 s later (on its clock): ejabberd announces nobody, the stored sessions are pinged.
    second = await start_bot(clock=Clock(int(time.time()) + 1000))
    await second.expect("gone", "carol@example.test/pc", timeout=20)
    assert await second.milestone("liveness_checked") == 1
    assert second.bot.tracker.online_sessions() == {("alice@example.test", "phone")}
    assert second.bot.store.get("carol@example.test").last_logout == stopped_at


async def test_admin_asks_by_adhoc_and_chat_and_others_are_refused(start_bot, login):
    bot = await start_bot()
    admin = await login("admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    assert (await ask_adhoc(admin))["online_users"] == "1"
    assert (await Chat(admin).ask("stats")).startswith("Active users: ")
    alice = await login("alice@example.test/phone")
    with pytest.raises(IqError) as refused:
        await alice.plugin["xep_0050"].send_command(
            jid="active.example.test", node=ADHOC_STATS_NODE
        )
    assert refused.value.iq["error"]["condition"] == "forbidden"
    assert await Chat(alice).ask("stats") == CHAT_REFUSED


async def test_pseudonymized_bot_restarted_keeps_one_record_per_user_and_no_address(
    start_bot, tmp_path, login, caplog
):
    """With pseudonymize the store has no address to ping: sessions open at a restart end at
    the bot's last sign of life, and a user is never counted twice nor below zero."""
    pseudonymized = {"pseudonymize": True, "pseudonym_secret": "a test secret of enough length"}
    first = await start_bot(**pseudonymized)
    alice = await login("alice@example.test/alice-thinkpad")
    await first.expect("available", "alice@example.test/alice-thinkpad")
    carol = await login("carol@example.test/pc")
    await first.expect("available", "carol@example.test/pc")
    carol.abort()
    await first.expect("gone", "carol@example.test/pc", timeout=LIVENESS + 10)
    assert await first.stop() == 0
    stopped_at = first.bot.store.heartbeat

    second = await start_bot(**pseudonymized)
    figures = second.figures()
    assert (figures.online_users, figures.online_sessions, figures.known_users) == (0, 0, 2)
    assert figures.dau == 2
    assert await second.milestone("liveness_checked") == 0  # after connecting: nothing closed
    assert second.component.liveness.pings_sent == 0  # ... and nothing to ping (no address)
    assert second.figures().online_users == 0
    key = second.bot.store.key_of("alice@example.test")
    assert second.bot.store.get(key).last_logout == stopped_at
    alice.send_presence(pshow="away")  # alice is still there and says so
    await second.expect("available", "alice@example.test/alice-thinkpad")
    figures = second.figures()
    assert (figures.online_users, figures.known_users) == (1, 2)
    assert await second.stop() == 0
    store_files = [tmp_path / f"activity.db{suffix}" for suffix in ("", "-wal", "-shm")]
    raw = b"".join(f.read_bytes() for f in store_files if f.exists())
    for secret in (b"alice", b"carol", b"thinkpad", b"/pc"):
        assert secret not in raw
    assert "alice@example.test" not in "".join(
        r.getMessage() for r in caplog.records if r.levelno >= 20 and r.name.startswith("bot")
    )


async def test_a_privilege_advertisement_from_a_user_is_ignored(start_bot, login, caplog):
    """ejabberd relays a user's <message/> with a <privilege/> to the component as is (Prosody's
    mod_privilege refuses it itself): only the server's own advertisement counts."""
    bot = await start_bot()
    caplog.set_level(logging.INFO, "bot.component")
    alice = await login("alice@example.test/phone")
    forged = alice.make_message(mto="active.example.test", mtype="normal")
    forged.append(
        ET.fromstring(
            '<privilege xmlns="urn:xmpp:privilege:1"><perm access="roster" type="both"/>'
            '<perm access="presence" type="roster"/></privilege>'
        )
    )
    forged.send()
    # One client's stanzas reach the bot in order: once this is answered, the forged one has
    # been handled.
    assert await Chat(alice).ask("stats") == CHAT_REFUSED
    assert set(bot.component.privileges) == {"example.test"}
    assert bot.component.privileges["example.test"]["presence"] == "managed_entity"
    assert not [r for r in caplog.records if "alice" in r.getMessage()]
