"""Faults: a full disk, a store that cannot be written, a bot killed with SIGKILL, fuzzed stanzas.

Each test is bounded in time and stops what it starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app.daemon import Bot
from bot.core.model import UserRecord
from bot.storage.errors import StoreError
from bot.storage.store import Store
from bot.testbed.botconfig import write_config
from bot.testbed.clients import connect_client, disconnect_client

from .support import FAST, T0, ComponentHarness, RunningBot, ask_adhoc, bot_settings

RECORD = UserRecord(T0, T0, 0)


def sqlite_connection(store: Store):
    return store._shelf.dict._cx  # fault injection only: the store's own SQLite connection


def test_disk_full_keeps_records_pending_and_writes_them_later(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("first@example.test", RECORD)
        store.flush(T0)
        pages = sqlite_connection(store).execute("PRAGMA page_count").fetchone()[0]
        sqlite_connection(store).execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        for n in range(2000):
            store.put(f"user{n}@example.test", RECORD._replace(sessions=("x" * 50,)))
        with pytest.raises(
            StoreError, match=r"writing 2000 records failed \(database or disk is full"
        ):
            store.flush(T0 + 1)
        assert store.pending == 2000
        assert store.get("user1999@example.test") is not None  # still answered from memory
        sqlite_connection(store).execute("PRAGMA max_page_count = 1073741823")  # space again
        assert store.flush(T0 + 2) == 2000
    with Store(path, readonly=True) as store:
        assert len(list(store.users())) == 2001


@pytest.mark.asyncio
async def test_bot_keeps_answering_while_its_store_is_read_only(prosody, tmp_path, caplog):
    bot = await RunningBot(Bot(bot_settings(prosody, tmp_path / "a.db"), timing=FAST)).start()
    admin = await connect_client(prosody, "admin@example.test", "adminpw", resource="desk")
    try:
        await bot.expect("available", "admin@example.test/desk")
        sqlite_connection(bot.bot.store).execute("PRAGMA query_only = 1")
        alice = await connect_client(prosody, "alice@example.test", "alicepw", resource="phone")
        await bot.expect("available", "alice@example.test/phone")
        failed = asyncio.Event()
        handler = _CallbackHandler(lambda record: "retried at the next flush" in record.message)
        handler.callback = failed.set
        logging.getLogger("bot.store").addHandler(handler)
        try:
            await asyncio.wait_for(failed.wait(), 5)  # the next flush failed, loudly
        finally:
            logging.getLogger("bot.store").removeHandler(handler)
        assert (await ask_adhoc(admin))["online_users"] == "2"  # answers from memory

        sqlite_connection(bot.bot.store).execute("PRAGMA query_only = 0")
        await disconnect_client(alice)
        await bot.expect("unavailable", "alice@example.test/phone")
    finally:
        await disconnect_client(admin)
        assert await bot.stop() == 0
    with Store(tmp_path / "a.db", readonly=True) as store:
        alice_record = store.get("alice@example.test")
        assert alice_record is not None
        assert alice_record.last_logout >= alice_record.last_login > 0


class _CallbackHandler(logging.Handler):
    def __init__(self, matches) -> None:
        super().__init__()
        self.matches = matches
        self.callback = lambda: None

    def emit(self, record: logging.LogRecord) -> None:
        record.message = record.getMessage()
        if self.matches(record):
            self.callback()


# --- SIGKILL under a real Prosody -------------------------------------------------------------


def wait_for_store(path: Path, ready, timeout: float = 10) -> list[tuple[str, UserRecord]]:
    """Poll the store read-only (as `count` does) until `ready(users)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            with Store(path, readonly=True) as store:
                users = list(store.users())
            if ready(users):
                return users
        if time.monotonic() > deadline:
            raise AssertionError(f"the store never reached the expected state: {users}")
        time.sleep(0.1)


def start_bot_process(prosody, folder: Path) -> subprocess.Popen:
    config = write_config(
        folder / "config.toml",
        component_jid=prosody.component_jid,
        secret=prosody.component_secret,
        server_port=prosody.component_port,
        domains=[prosody.domain],
        admins=["admin@example.test"],
        metrics_listen="",
        store_path="activity.db",
        flush_interval=0.2,
    )
    log = folder / "bot.log"
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--config", str(config)],
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    deadline = time.monotonic() + 15
    while b"Connected to" not in log.read_bytes()[offset:]:  # its own log says when it is ready
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the bot did not connect: {log.read_text()[offset:]}")
        time.sleep(0.05)
    return process


@pytest.mark.asyncio
async def test_bot_killed_with_sigkill_restarts_with_the_right_figures(prosody, tmp_path):
    store_path = tmp_path / "activity.db"
    bot = await asyncio.to_thread(start_bot_process, prosody, tmp_path)
    clients = []
    try:
        carol = await connect_client(prosody, "carol@example.test", "carolpw", resource="pc")
        clients.append(carol)
        bob = await connect_client(prosody, "bob@example.test", "bobpw", resource="pc")
        await disconnect_client(bob)
        # An independent tally of what was sent: bob came and went, carol stays.
        await asyncio.to_thread(
            wait_for_store,
            store_path,
            lambda users: (
                {jid for jid, r in users if r.sessions} == {"carol@example.test"}
                and {jid for jid, _ in users} == {"bob@example.test", "carol@example.test"}
            ),
        )
        os.killpg(bot.pid, signal.SIGKILL)
        assert bot.wait(10) == -signal.SIGKILL

        bot = await asyncio.to_thread(start_bot_process, prosody, tmp_path)  # lock died with it
        admin = await connect_client(prosody, "admin@example.test", "adminpw", resource="desk")
        clients.append(admin)
        await asyncio.to_thread(
            wait_for_store,
            store_path,
            lambda users: (
                {jid for jid, r in users if r.sessions}
                == {"carol@example.test", "admin@example.test"}
            ),
        )
        figures = await ask_adhoc(admin)
        assert (figures["online_users"], figures["dau"], figures["known_users"]) == ("2", "3", "3")
    finally:
        for client in clients:
            await disconnect_client(client)
        bot.send_signal(signal.SIGTERM)
        try:
            assert bot.wait(10) == 0, (tmp_path / "bot.log").read_text()
        finally:
            if bot.poll() is None:
                os.killpg(bot.pid, signal.SIGKILL)
                bot.wait()


# --- fuzzed stanzas -------------------------------------------------------------------------------

jid_parts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40
)
presence_types = st.sampled_from(
    [None, "unavailable", "error", "probe", "subscribe", "subscribed", "bogus", ""]
)


class FuzzedStanzaTest(ComponentHarness):
    """Random presences and messages: no crash, no state for other domains, sound counts."""

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        st.lists(
            st.tuples(
                st.one_of(jid_parts, st.sampled_from(["alice", "bob", ""])),
                st.sampled_from(["example.test", "other.test", "", "example.test."]),
                st.one_of(jid_parts, st.text(max_size=3000)),
                presence_types,
                st.sampled_from(["", "<show>away</show>", "<x xmlns='urn:unknown'><y/></x>"]),
            ),
            max_size=30,
        )
    )
    def test_random_presences_never_crash_nor_corrupt(self, stanzas):
        for user, domain, resource, kind, payload in stanzas:
            sender = f"{user}@{domain}/{resource}" if user else f"{domain}/{resource}"
            type_attr = f" type={quoteattr(kind)}" if kind is not None else ""
            self.recv(
                f"<presence from={quoteattr(sender)} to='active.example.test'{type_attr}>"
                f"{payload}</presence>"
            )
        counts = self.tracker.counts(T0)
        online = self.tracker.online_sessions()
        assert counts.online_sessions == len(online)
        assert counts.online_users == len({bare for bare, _ in online})
        assert all(bare.endswith("@example.test") for bare, _ in online)
        assert all(jid.endswith("@example.test") for jid, _ in self.store.users())

    def test_a_flood_from_other_domains_stores_nothing(self):
        for n in range(3000):
            self.recv(f"<presence from='u{n}@remote.test/r' to='active.example.test'/>")
        assert self.store.pending == 0
        assert self.tracker.counts(T0).known_users == 0
