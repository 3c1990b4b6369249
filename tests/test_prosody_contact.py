"""The bot in a contact list, through a real Prosody (0.12 and 13) with real clients: an admin who
adds it sees it online with the figures in its status line, refreshed after each count and when
an admin asks; anyone else who adds it sees a plain status, never the figures, and gets nothing at
a count; its disco#info identity and features, XEP-0092 software version and XEP-0199 ping.

The rules themselves, and the exact stanzas, are in test_contact.py. Every test removes the bot
from the clients' rosters before it ends: the session's Prosody keeps rosters between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bot.admin.figures import PLAIN_STATUS, figures_status
from bot.xmpp.contact import software_version

from .support import Chat, LogWatch, ask_adhoc

pytestmark = pytest.mark.asyncio

COMPONENT = "active.example.test"
COUNT_LINE = re.compile(
    r": (\d+) \(24 hours\), (\d+) \(7 days\), (\d+) \(30 days\); online: (\d+) users"
)


class BotPresences:
    """The available and unavailable presences one client receives from the bot, in order, as
    (type, status): ("available", "DAU 1 · ..."), ("unavailable", "")."""

    def __init__(self, client) -> None:
        self.client = client
        self.received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.seen: list[tuple[str, str]] = []
        client.register_handler(
            Callback("presence from the bot", MatchXPath("{jabber:client}presence"), self._on)
        )

    def _on(self, presence) -> None:
        kind = presence.xml.get("type") or "available"
        if presence["from"].bare == COMPONENT and kind in ("available", "unavailable"):
            self.seen.append((kind, presence["status"]))
            self.received.put_nowait((kind, presence["status"]))

    async def next(self, timeout: float = 5) -> tuple[str, str]:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def drain(self) -> list[tuple[str, str]]:
        """What the bot sent this client so far and was not read yet. The answer to a disco#info
        query comes back on the same component stream after anything the bot sent before it
        (Prosody keeps the order): a barrier, not a guess of time."""
        await self.client.plugin["xep_0030"].get_info(jid=COMPONENT, timeout=5)
        drained = []
        while not self.received.empty():
            drained.append(self.received.get_nowait())
        return drained

    async def nothing_more(self) -> None:
        assert await self.drain() == []

    async def added(self) -> str:
        """The status of the bot's first presence after adding it. The subscription takes a
        few more stanzas (the client approves the bot's request; its server then probes the
        bot): each is answered with the same presence, drained here."""
        kind, status = await self.next()
        assert kind == "available"
        assert set(await self.drain()) <= {(kind, status)}
        return status


@contextlib.asynccontextmanager
async def bot_in_roster(client):
    """`client` adds the bot to its contacts, as a user does (subscribe), and approves the bot's
    request to subscribe back. Whatever happens, the item is removed on the way out (Prosody
    then sends the bot unsubscribe and unsubscribed)."""
    # slixmpp would also answer the bot's request with a request of its own, already granted:
    # more stanzas, not more meaning (a person approves, as Gajim and Conversations ask them to).
    client.auto_subscribe = False
    client.send_presence_subscription(pto=COMPONENT)
    try:
        yield
    finally:
        if COMPONENT in client.client_roster:
            with contextlib.suppress(Exception):
                await client.del_roster_item(COMPONENT)


async def until_tracked(bot, kind: str, full_jid: str, timeout: float = 5) -> None:
    """Wait until the bot tracked this change, past any other. Adding the bot brings one more:
    Prosody acknowledges the bot's subscription request to a user with an unavailable presence
    from the user's bare JID, which the tracker counts as activity of that user."""
    while await asyncio.wait_for(bot.tracked.get(), timeout) != (kind, full_jid):
        pass


async def login_watched(clients, full_jid: str):
    """Log in with the watch in place before the initial presence (whose probe the bot answers)."""
    client = await clients.login(full_jid, presence=False)
    presences = BotPresences(client)
    client.send_presence()
    return client, presences


async def test_an_admin_who_adds_the_bot_sees_the_figures_refreshed_at_each_count(
    start_bot, clients
):
    bot = await start_bot()
    admin, presences = await login_watched(clients, "admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    async with bot_in_roster(admin):
        status = await presences.added()
        assert status == figures_status(bot.figures()) == "DAU 1 · WAU 1 · MAU 1 · 1 online"

        await clients.login("alice@example.test/phone")  # the figures change ...
        await until_tracked(bot, "available", "alice@example.test/phone")
        await presences.nothing_more()  # ... which alone sends nothing
        await bot.bot.after_count()  # the count's housekeeping (test_schedule: it runs hourly)
        assert await presences.next() == ("available", "DAU 2 · WAU 2 · MAU 2 · 2 online")

        await ask_adhoc(admin)  # an admin asks: the status shows what they were told
        assert await presences.next() == ("available", "DAU 2 · WAU 2 · MAU 2 · 2 online")
        await Chat(admin).ask("stats")
        assert await presences.next() == ("available", "DAU 2 · WAU 2 · MAU 2 · 2 online")
        await Chat(admin).ask("help")  # not a question about the figures
        await presences.nothing_more()

        await admin.del_roster_item(COMPONENT)  # the admin removes the bot: it goes offline
        assert await presences.next() == ("unavailable", "")
        await bot.bot.after_count()  # and sends them nothing more
        await presences.nothing_more()


async def test_a_restarted_bot_sends_its_admin_contacts_the_figures_at_its_first_count(
    start_bot, clients
):
    """The hourly duty itself (count_periodically), here its first count, shortly after start:
    the admin's client shows the new run's figures without reconnecting."""
    first = await start_bot()
    admin, presences = await login_watched(clients, "admin@example.test/desk")
    await first.expect("available", "admin@example.test/desk")
    async with bot_in_roster(admin):
        assert await presences.added() == "DAU 1 · WAU 1 · MAU 1 · 1 online"
        assert await first.stop() == 0
        assert await presences.next() == ("unavailable", "")
        await clients.login("alice@example.test/phone")  # while the bot is away

        with LogWatch("bot.daemon") as log:
            await start_bot(first_count_after=0.5)  # the same store
            counted = await log.next(lambda text: text.startswith("Active users (took"))
        # The figures of that count, as its log line says them (however many of the sessions
        # Prosody re-announced had been applied by then).
        dau, wau, mau, online = COUNT_LINE.search(counted.getMessage()).groups()
        assert await presences.next(timeout=10) == (
            "available",
            f"DAU {dau} · WAU {wau} · MAU {mau} · {online} online",
        )


async def test_a_reconnected_bot_sends_its_admin_contacts_the_figures(start_bot, clients):
    """After a drop (a server restart, say: the admin's client saw the bot go), at once, not at
    the next hourly count. Here only the bot's own connection drops."""
    bot = await start_bot()
    admin, presences = await login_watched(clients, "admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    async with bot_in_roster(admin):
        assert (await presences.added()).startswith("DAU ")
        with LogWatch("bot.component") as log:
            bot.component.abort()  # as a network failure would
            await log.next(lambda text: text.startswith("Connected to"), timeout=15)
        kind, status = await presences.next()
        assert kind == "available"
        assert re.fullmatch(r"DAU \d+ · WAU \d+ · MAU \d+ · \d+ online", status)


async def test_an_admin_whose_client_comes_online_gets_the_figures_by_the_servers_probe(
    start_bot, clients
):
    bot = await start_bot()
    desk, desk_presences = await login_watched(clients, "admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    async with bot_in_roster(desk):
        assert (await desk_presences.added()).startswith("DAU ")
        # A second client of the admin comes online: Prosody probes the bot on its behalf.
        _phone, presences = await login_watched(clients, "admin@example.test/phone")
        await until_tracked(bot, "available", "admin@example.test/phone")
        kind, status = await presences.next()
        assert kind == "available"
        assert re.fullmatch(r"DAU \d+ · WAU \d+ · MAU \d+ · \d+ online", status)


async def test_a_user_who_adds_the_bot_sees_a_plain_status_and_never_the_figures(
    start_bot, clients
):
    bot = await start_bot()
    admin, admin_presences = await login_watched(clients, "admin@example.test/desk")
    alice, presences = await login_watched(clients, "alice@example.test/phone")
    await bot.expect_set(
        {("available", "admin@example.test/desk"), ("available", "alice@example.test/phone")}
    )
    async with bot_in_roster(alice):  # the presence fallback: users add the bot
        assert await presences.added() == PLAIN_STATUS
        _pc, pc_presences = await login_watched(clients, "alice@example.test/pc")  # probed
        assert await pc_presences.next() == ("available", PLAIN_STATUS)

        await bot.bot.after_count()  # a count ...
        await ask_adhoc(admin)  # ... and an admin's question refresh the admin's status only
        # (every configured admin's, whether they added the bot or not: see bot/xmpp/contact.py)
        assert (await admin_presences.next())[1].startswith("DAU ")
        assert (await admin_presences.next())[1].startswith("DAU ")
        await presences.nothing_more()
        await pc_presences.nothing_more()
    figures = {status for _, status in presences.seen + pc_presences.seen}
    assert figures == {PLAIN_STATUS}
    assert not re.search(r"[0-9]", PLAIN_STATUS)


async def test_admins_see_the_bot_go_offline_when_it_stops(start_bot, clients):
    bot = await start_bot()
    admin, presences = await login_watched(clients, "admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    async with bot_in_roster(admin):
        assert (await presences.added()).startswith("DAU ")
        assert await bot.stop() == 0
        assert await presences.next() == ("unavailable", "")


async def test_disco_info_software_version_and_ping_are_answered(start_bot, clients):
    await start_bot()
    alice = await clients.login("alice@example.test/phone")
    for plugin in ("xep_0092", "xep_0199"):
        alice.register_plugin(plugin)

    info = (await alice.plugin["xep_0030"].get_info(jid=COMPONENT))["disco_info"]
    identities = {(category, kind, name) for category, kind, _lang, name in info["identities"]}
    assert identities == {
        ("component", "stats", "Active users"),
        ("client", "bot", "Active users"),
    }
    assert {
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/commands",
        "jabber:iq:version",
        "urn:xmpp:ping",
    } <= set(info["features"])

    version = (await alice.plugin["xep_0092"].get_version(COMPONENT))["software_version"]
    assert (version["name"], version["version"]) == ("xmpp-active-users", software_version())
    assert version["os"] == ""  # never the OS
    assert "<os" not in str(version)

    assert await alice.plugin["xep_0199"].ping(COMPONENT, timeout=5) >= 0
