"""What one user, or one stranger, can make the bot do, through a real Prosody with real clients:
every input bounded per sender and in total (docs/architecture.md, "What each input can cost"),
and our own faults never reaching the sender.

The counts are the smallest that still prove each bound in CI (2 cores); the environment
variables below give the full-size runs of issue 20 (EDGE_TOGGLES=10000,
EDGE_MALLORY_SESSIONS=150 EDGE_TOTAL=100, EDGE_SUBSCRIBES=10000).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from dataclasses import fields, replace

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bot.admin.commands import CommandSet
from bot.xmpp.component import ActiveUsersComponent
from bot.xmpp.contact_stanzas import SENDER_BURST
from bot.xmpp.privileges import Privileges

from .support import ADMIN, FAST

pytestmark = pytest.mark.asyncio

COMPONENT = "active.example.test"
ALICE = "alice@example.test/phone"
NS_CLIENT, NS_PING = "jabber:client", "urn:xmpp:ping"
SLOW_FOLLOWUP = replace(FAST, unavailable_followup=2.0)  # confirmations stay pending 2 s

TOGGLES = int(os.environ.get("EDGE_TOGGLES", "1000"))
MALLORY_SESSIONS = int(os.environ.get("EDGE_MALLORY_SESSIONS", "6"))
# The total cap of confirmations in that test: above one user's share (2 at once), below what
# that user could take without a share of their own (4, the burst of their budget).
TOTAL = int(os.environ.get("EDGE_TOTAL", "3"))
SUBSCRIBES = int(os.environ.get("EDGE_SUBSCRIBES", "2000"))


def pings_to(client, *, answer: bool) -> list[object]:
    """Count the bot's pings that reach `client`; answer them (a pong) or never."""
    pings: list[object] = []

    def on_ping(iq) -> None:
        pings.append(iq)
        if answer:
            iq.reply().send()

    client.register_handler(
        Callback("Pings", MatchXPath(f"{{{NS_CLIENT}}}iq/{{{NS_PING}}}ping"), on_ping)
    )
    return pings


def errors_to(client) -> list[str]:
    """Every error stanza `client` receives (what the bot must never send for its own faults)."""
    errors: list[str] = []

    def note(stanza):
        if stanza.xml.get("type") == "error":
            errors.append(str(stanza))
        return stanza

    client.add_filter("in", note)
    return errors


def errors_sent_by(component) -> list[str]:
    """Every error stanza the bot sends."""
    errors: list[str] = []

    def note(stanza):
        if stanza.xml.get("type") == "error":
            errors.append(str(stanza))
        return stanza

    component.add_filter("out", note)
    return errors


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def drain(bot, count: int, timeout: float = 60) -> list[tuple[str, str]]:
    return [await asyncio.wait_for(bot.tracked.get(), timeout) for _ in range(count)]


async def until(condition, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


# --- 1. one client toggling ----------------------------------------------------------------------


async def test_toggles_from_one_client_cost_a_bounded_number_of_pings_and_little_memory(
    start_bot, clients
):
    """Before: each unavailable started a confirmation whose task (and ping) a new available
    did not cancel: 1,000 toggles, 2,000 pings; 10,000 from a client that never answers,
    20,000 pings and +141 MB of RSS."""
    bot = await start_bot(timing=SLOW_FOLLOWUP)
    alice = await clients.login(ALICE)
    pings = pings_to(alice, answer=False)
    await bot.expect("available", ALICE)
    limits = bot.component.watch.limits
    gc.collect()
    rss_before, tasks_before = rss_bytes(), len(asyncio.all_tasks())

    # Paced: each toggle waits until the bot has taken the unavailable, so that the
    # confirmation it starts gets to send its ping before the next available cancels it.
    for _ in range(TOGGLES):
        alice.send_presence(ptype="unavailable")
        assert await asyncio.wait_for(bot.tracked.get(), 10) == ("unavailable", ALICE)
        await asyncio.sleep(0)
        alice.send_presence()
        assert await asyncio.wait_for(bot.tracked.get(), 10) == ("available", ALICE)
    await asyncio.sleep(0.5)  # pings sent at the last moment reach her

    gc.collect()
    grown = rss_bytes() - rss_before
    print(f"figures: {TOGGLES} toggles, {len(pings)} pings, RSS +{grown / 2**20:.1f} MB")
    bound = 2 * (limits.user_burst + 1)  # two pings per confirmation, her share of them
    assert len(pings) <= bound, f"{len(pings)} pings for {TOGGLES} toggles"
    assert bot.component.pinger.waiting <= limits.per_user
    assert len(asyncio.all_tasks()) <= tasks_before + limits.per_user
    assert grown < 10 * 2**20, f"RSS grew {grown / 2**20:.1f} MB for {TOGGLES} toggles"
    assert bot.figures().online_users == 1  # she ended available: counted


# --- 2. one user's directed unavailables --------------------------------------------------------


async def test_one_users_directed_unavailables_do_not_stop_another_users_check(start_bot, clients):
    """Before: the pending confirmations had one shared cap; one user's sessions filled it
    and a victim's directed unavailable was then taken as final, with no ping."""
    bot = await start_bot(timing=SLOW_FOLLOWUP)
    watch = bot.component.watch
    watch.limits = replace(watch.limits, total=TOTAL)
    mallory = []
    for n in range(MALLORY_SESSIONS):
        session = await clients.login(f"bob@example.test/r{n}")
        pings_to(session, answer=False)  # never answers: its confirmations stay pending
        mallory.append(session)
    await drain(bot, MALLORY_SESSIONS)
    alice = await clients.login(ALICE)
    alice_pings = pings_to(alice, answer=True)
    await bot.expect("available", ALICE)

    for session in mallory:
        session.send_presence(pto=COMPONENT, ptype="unavailable")  # to the bot alone
    await drain(bot, MALLORY_SESSIONS)
    alice.send_presence(pto=COMPONENT, ptype="unavailable")  # the victim's, right after
    await bot.expect("unavailable", ALICE)
    await bot.expect("resumed", ALICE, timeout=10)
    print(f"figures: {MALLORY_SESSIONS} unavailables, victim pinged {len(alice_pings)} times")
    assert alice_pings, "the victim was never pinged"
    assert ("alice@example.test", "phone") in bot.bot.tracker.online_sessions()
    assert watch.confirming <= watch.limits.per_user  # mallory's share, nothing more


# --- 3. subscription floods --------------------------------------------------------------------


async def test_a_subscription_flood_gives_a_few_log_lines_and_bounded_answers(
    start_bot, clients, caplog
):
    """Before: 10,000 subscribes gave 10,001 INFO lines and 10,037 presences back."""
    caplog.set_level(logging.INFO, "bot.component")
    bot = await start_bot()
    carol = await clients.login("carol@example.test/pc")
    await bot.expect("available", "carol@example.test/pc")
    sent: list[str] = []
    send_presence = bot.component.send_presence

    def counting(**kwargs):
        sent.append(kwargs.get("ptype") or "available")
        return send_presence(**kwargs)

    bot.component.send_presence = counting
    before = len(caplog.records)
    for _ in range(SUBSCRIBES):
        carol.send_presence(pto=COMPONENT, ptype="subscribe")
    await until(lambda: bot.component.presence_events["subscribe"] >= SUBSCRIBES)
    await asyncio.sleep(0.2)

    lines = [r for r in caplog.records[before:] if r.levelno >= logging.INFO]
    print(f"figures: {SUBSCRIBES} subscribes, {len(lines)} log lines, {len(sent)} presences")
    assert len(lines) <= 3, [r.getMessage() for r in lines]
    # subscribed, subscribe (back) and the bot's own presence, for each answered request
    assert len(sent) <= 3 * SENDER_BURST, f"{len(sent)} presences for {SUBSCRIBES} subscribes"
    assert len(sent) >= 3  # the first is answered as before
    # The session's Prosody keeps rosters between tests: the bot out of carol's, or her next
    # sessions' presences would reach later tests' bots twice (as her subscriber too).
    await carol.del_roster_item(COMPONENT)
    await clients.logout(carol)


# --- 4. our faults stay ours --------------------------------------------------------------------


def failing(*_args, **_kwargs):
    raise RuntimeError("a bug planted by the test")


async def test_a_fault_in_each_handler_reaches_the_log_and_the_counter_never_the_sender(
    start_bot, clients, caplog
):
    caplog.set_level(logging.ERROR, "bot.component")
    bot = await start_bot(timing=FAST)
    component = bot.component
    alice = await clients.login(ALICE)
    errors = errors_to(alice)
    await bot.expect("available", ALICE)
    admin = await clients.login(f"{ADMIN}/desk", presence=False)
    admin_errors = errors_to(admin)
    sent_errors = errors_sent_by(component)

    async def faulted(where: str, act) -> None:
        before = component.errors.by_place().get(where, 0)
        await act()
        await until(lambda: component.errors.by_place().get(where, 0) > before, 10)
        assert bot.bot.metrics_snapshot().internal_errors[where] > before

    # presence: the tracker fails
    real_started = bot.bot.tracker.session_started
    bot.bot.tracker.session_started = failing

    async def log_in_again() -> None:
        alice.send_presence(pstatus="back")

    await faulted("presence", log_in_again)
    bot.bot.tracker.session_started = real_started

    # chat: the answer fails (alice is no admin: nothing; the admin: a plain apology)
    commands = component.commands

    class Broken(CommandSet):
        async def chat_answer(self, bare_jid: str, text: str) -> str:
            raise RuntimeError("a bug planted by the test")

    component.commands = Broken(**{f.name: getattr(commands, f.name) for f in fields(commands)})
    apologies: asyncio.Queue[str] = asyncio.Queue()
    admin.add_event_handler("message", lambda m: apologies.put_nowait(str(m["body"])))

    async def chat() -> None:
        alice.send_message(mto=COMPONENT, mbody="stats", mtype="chat")
        admin.send_message(mto=COMPONENT, mbody="stats", mtype="chat")

    await faulted("chat message", chat)
    assert "internal error" in await asyncio.wait_for(apologies.get(), 5)
    component.commands = commands

    # a probe: the bot's answer fails
    contact = component.contacts.contact
    real_answer = contact.answer
    contact.answer = failing

    async def probe() -> None:
        alice.send_presence(pto=COMPONENT, ptype="probe")

    await faulted("presence", probe)
    contact.answer = real_answer

    # a ping's answer: taking it fails
    class Exploding(dict):
        def get(self, *_args):
            raise RuntimeError("a bug planted by the test")

    waiting = component.pinger._waiting
    component.pinger._waiting = Exploding(waiting)

    async def directed_unavailable() -> None:
        alice.send_presence(pto=COMPONENT, ptype="unavailable")

    await faulted("ping answer", directed_unavailable)
    component.pinger._waiting = waiting

    await asyncio.sleep(0.5)  # anything slixmpp would have answered has arrived by now
    assert errors == [], errors
    assert admin_errors == [], admin_errors
    assert sent_errors == [], sent_errors
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for where in ("presence", "chat message", "ping answer"):
        assert any(f"Internal error while handling a {where}" in line for line in logged), where


async def test_a_fault_in_the_privilege_handler_reaches_the_log_and_the_counter_only(
    start_bot, monkeypatch, caplog
):
    """Prosody lets no client send a privilege advertisement to the component: the fault is
    planted in the handler, and the server's own advertisement at the handshake meets it.
    Before: unguarded, slixmpp answered the server with "Slixmpp got into trouble"."""
    caplog.set_level(logging.ERROR, "bot.component")
    monkeypatch.setattr(Privileges, "on_advertisement", failing)
    sent_errors: list[str] = []
    real_init = ActiveUsersComponent.__init__

    def watched_init(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        self.add_filter("out", lambda s: (_note_error(s, sent_errors), s)[1])

    monkeypatch.setattr(ActiveUsersComponent, "__init__", watched_init)
    bot = await start_bot(timing=FAST)
    component = bot.component
    await until(lambda: component.errors.by_place().get("privilege advertisement", 0) > 0, 10)
    assert bot.bot.metrics_snapshot().internal_errors["privilege advertisement"] > 0
    await asyncio.sleep(0.3)
    assert sent_errors == [], sent_errors
    assert any(
        "Internal error while handling a privilege advertisement" in r.getMessage()
        for r in caplog.records
    )


def _note_error(stanza, errors: list[str]) -> None:
    if stanza.xml.get("type") == "error":
        errors.append(str(stanza))
