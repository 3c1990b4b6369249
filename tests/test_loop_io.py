"""The running bot never waits on the disk on its event loop (issue item 9).

Every SQLite call goes through the store's one connection; here that connection is wrapped so
that each call notes the thread it came from. A login and logout of an offline user, a flush, a
history by chat and by ad-hoc command, a count and the hourly snapshot across midnight must make
none from the event loop's thread. Then the orderings this needs: the changes of a user whose
record is being read wait for it, in order, and so do the changes given after them (resync,
forget, retention); a flush that fails merges its batch back, a newer change winning.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from slixmpp.plugins.xep_0004 import Form

from bot.activity.tracker import ActivityTracker
from bot.admin.commands import ADHOC_HISTORY_NODE, ADMIN_COMMANDS
from bot.app.daemon import Bot
from bot.core.client_families import UNKNOWN
from bot.core.model import UserRecord
from bot.storage.flushing import flush_periodically
from bot.storage.pending import Batch
from bot.storage.store import Store, StoreError

from .support import ADMIN, bot_settings

pytestmark = pytest.mark.asyncio

DAY = 86_400
MIDNIGHT = 1_800_057_600  # 2027-01-16T00:00:00Z
T0 = MIDNIGHT - 600  # 23:50 the day before
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"


class FakeServer:
    """Settings for a Bot that is never connected."""

    component_jid = "active.example.test"
    component_secret = "s"
    component_port = 5347
    domain = "example.test"


class ThreadNotingConnection:
    """An sqlite3 connection whose every call notes the thread it came from."""

    def __init__(self, cx: Any, loop_thread: int) -> None:
        self._cx = cx
        self._loop_thread = loop_thread
        self.on_loop: list[str] = []
        self.off_loop: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        calls = self.on_loop if threading.get_ident() == self._loop_thread else self.off_loop
        calls.append(sql.split("(")[0].strip())
        return self._cx.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cx, name)


def note_threads(store: Store) -> ThreadNotingConnection:
    noting = ThreadNotingConnection(store._db._cx, threading.get_ident())
    store._db._cx = noting
    return noting


def stored(path: Path, records: dict[str, UserRecord], days: dict[str, Any] | None = None) -> None:
    with Store(path) as store:
        for key, record in records.items():
            store.put(key, record)
        for day, snapshot in (days or {}).items():
            store.put_day(day, snapshot)
        store.flush(T0 - 3600)


async def test_the_event_loop_makes_no_sqlite_call(tmp_path):
    """Fails before the change: the login of an offline user, the flush, the history scan and
    the final peak of the day that ended all ran SQLite on the loop."""
    path = tmp_path / "a.db"
    stored(
        path,
        {ALICE: UserRecord(T0 - 10 * DAY, T0 - 5 * DAY, T0 - 5 * DAY)},
        {"2027-01-14": {"example.test": {"active": {"1d": 3}, "new": {}, "peak_online": 2}}},
    )
    clock = [T0]
    bot = Bot(bot_settings(FakeServer, path), clock=lambda: clock[0])
    component = bot.component
    sent: asyncio.Queue[Any] = asyncio.Queue()
    component.send = lambda stanza, *args, **kwargs: sent.put_nowait(stanza)
    tracked: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    component.add_event_handler(
        "presence_tracked", lambda event: tracked.put_nowait((event[0], str(event[1])))
    )
    noting = note_threads(bot.store)
    flushing = asyncio.create_task(flush_periodically(bot.store, 0.05, lambda: clock[0]))
    try:
        bot.record_today()  # the count of 23:50
        component.presence.on_presence(component.make_presence(pfrom=f"{ALICE}/phone"))
        assert await asyncio.wait_for(tracked.get(), 5) == ("available", f"{ALICE}/phone")
        assert bot.tracker.counts(clock[0]).online_users == 1
        while bot.store.pending:  # flushed: alice's record and the snapshot are on disk
            await asyncio.sleep(0.01)
        clock[0] = MIDNIGHT + 600
        bot.record_today()  # the first count of the new day: the final peak of the ended one
        component.presence.on_presence(
            component.make_presence(pfrom=f"{ALICE}/phone", ptype="unavailable")
        )
        assert await asyncio.wait_for(tracked.get(), 5) == ("unavailable", f"{ALICE}/phone")
        while bot.store.pending:
            await asyncio.sleep(0.01)

        chat = component.make_message(mto=component.boundjid, mbody="history 3", mtype="chat")
        chat["from"] = f"{ADMIN}/desk"
        await component.admin.on_message(chat)
        reply = await asyncio.wait_for(sent.get(), 10)  # a coroutine may answer a moment later
        chart = str(reply["body"])
        assert chart.startswith("Active users over the last 3 days")
        assert "24 hours  █▁▃  (now 1, max 3)" in chart  # 3: the 14th, as stored

        answer = Form()
        answer["type"] = "submit"
        answer.add_field(var="days", value="3")
        history = next(c for c in ADMIN_COMMANDS if c.node == ADHOC_HISTORY_NODE)
        session = {"from": f"{ADMIN}/desk", "id": "history-1"}
        session = await component.admin.first_step(history)(None, session)
        session = await session["next"](answer, session)
        assert session["payload"] is not None
    finally:
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        bot.store._db._cx = noting._cx
        bot.store.close(clock[0])  # the test's own, after the guard is off
    assert noting.on_loop == [], f"SQLite calls on the event loop: {noting.on_loop}"
    assert noting.off_loop, "the test did not read or write the store at all"
    with Store(path, readonly=True) as store:
        record = store.get(ALICE)
        assert record == UserRecord(
            T0 - 10 * DAY, T0, MIDNIGHT + 600, (), (UNKNOWN, MIDNIGHT + 600)
        )
        days = store.days()
    assert days["2027-01-15"]["example.test"]["peak_online"] == 1  # alice, before midnight
    assert days["2027-01-14"]["example.test"]["active"] == {"1d": 3}


# --- a user's changes wait for the record being read, in order ------------------------------


class SlowReads:
    """The store's reads held until `release()`: a slow disk, on purpose."""

    def __init__(self, store: Store) -> None:
        self._read = store.read_stored
        self.gate = threading.Event()
        self.begun = threading.Event()  # a read is held at the gate now
        self.reads: list[list[str]] = []
        store.read_stored = self.read  # type: ignore[method-assign]

    def read(self, keys: Any) -> dict[str, bytes | None]:
        keys = list(keys)
        self.reads.append(keys)
        self.begun.set()
        if not self.gate.wait(10):
            raise AssertionError("never released")
        return self._read(keys)

    def release(self) -> None:
        self.gate.set()

    async def held(self) -> None:
        """Once the store's worker thread is held in a read (an event, not a pause)."""
        await until_set(self.begun)


async def until_set(event: threading.Event, timeout: float = 10) -> None:
    """Wait, off the loop, until another thread sets `event`."""
    assert await asyncio.to_thread(event.wait, timeout), "the worker thread never got there"


@pytest.fixture
def tracker(tmp_path):
    path = tmp_path / "a.db"
    stored(
        path,
        {
            ALICE: UserRecord(T0 - 10 * DAY, T0 - 5 * DAY, T0 - 5 * DAY),
            CAROL: UserRecord(T0 - 90 * DAY, T0 - 60 * DAY, T0 - 60 * DAY),
        },
    )
    store = Store(path)
    tracker = ActivityTracker(store, ["example.test"], read_in_threads=True)
    tracker.load(T0)
    yield tracker
    store.close(T0)


def change(log: list[str], name: str, apply: Any) -> Any:
    def run() -> None:
        log.append(name)
        apply()

    return run


async def test_login_and_logout_of_an_offline_user_wait_for_the_read_in_order(tracker):
    slow = SlowReads(tracker._store)
    applied: list[str] = []
    tracker.when_loaded(
        ALICE, change(applied, "alice in", lambda: tracker.session_started(ALICE, "phone", T0))
    )
    tracker.when_loaded(
        ALICE, change(applied, "alice out", lambda: tracker.session_ended(ALICE, "phone", T0 + 5))
    )
    # bob is new (his record is read too), then alice again: all wait, in order
    tracker.when_loaded(
        BOB, change(applied, "bob in", lambda: tracker.session_started(BOB, "pc", T0 + 6))
    )
    tracker.when_loaded(
        ALICE, change(applied, "alice in 2", lambda: tracker.session_started(ALICE, "pc", T0 + 7))
    )
    await slow.held()
    assert applied == []
    assert tracker.waiting == 4
    assert not tracker.is_online(ALICE, "phone")
    assert tracker.counts(T0 + 8).online_users == 0  # the waiting changes are not counted yet
    assert slow.reads == [[ALICE]]  # bob's read waits for the next trip to the thread
    slow.release()
    assert await tracker.until_applied(5) == 0
    assert slow.reads == [[ALICE], [BOB]]
    assert applied == ["alice in", "alice out", "bob in", "alice in 2"]
    assert tracker._store.get(ALICE) == UserRecord(
        T0 - 10 * DAY, T0 + 7, T0 + 5, ("pc",), (UNKNOWN, T0 + 7), (UNKNOWN,)
    )
    assert tracker.online_sessions() == {(ALICE, "pc"), (BOB, "pc")}
    assert tracker.counts(T0 + 8).known_users == 3


async def test_an_online_users_change_waits_behind_an_earlier_read(tracker):
    tracker.session_started(BOB, "pc", T0)  # online: in memory
    slow = SlowReads(tracker._store)
    applied: list[str] = []
    tracker.when_loaded(BOB, change(applied, "bob phone", lambda: None))  # nothing waits: now
    assert applied == ["bob phone"]
    tracker.when_loaded(ALICE, change(applied, "alice", lambda: None))
    tracker.when_loaded(BOB, change(applied, "bob out", lambda: None))
    assert applied == ["bob phone"]  # behind alice's read
    slow.release()
    await tracker.until_applied(5)
    assert applied == ["bob phone", "alice", "bob out"]


async def test_a_change_read_while_the_record_is_being_written_is_not_stale(tracker):
    """alice logs out and her record is being written when she logs in again: the login is
    applied at once, from the batch being written, never from the older disk."""
    store = tracker._store
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    await tracker.until_applied(5)
    tracker.when_loaded(ALICE, lambda: tracker.session_ended(ALICE, "phone", T0 + 1))
    gate, writing = threading.Event(), threading.Event()
    real_write = store.write_batch

    def slow_flush(batch: Batch) -> None:
        writing.set()
        gate.wait(10)
        return real_write(batch)

    store.write_batch = slow_flush  # type: ignore[method-assign]
    flushing = asyncio.create_task(store.flush_off_loop(T0 + 1))
    await until_set(writing)
    assert store.pending == 1  # in the batch being written
    assert store.in_memory(ALICE)
    applied: list[str] = []
    tracker.when_loaded(
        ALICE, change(applied, "in", lambda: tracker.session_started(ALICE, "pc", T0 + 2))
    )
    assert applied == ["in"]  # no read needed
    gate.set()
    assert await flushing == 1
    assert store.get(ALICE) == UserRecord(
        T0 - 10 * DAY, T0 + 2, T0 + 1, ("pc",), (UNKNOWN, T0 + 2), (UNKNOWN,)
    )


# --- resync, forget, retention in turn with a waiting read ----------------------------------


async def test_a_login_of_the_old_connection_waiting_for_its_read_is_resynced(tracker):
    """alice's login arrived before the connection dropped; her record is still being read
    when the new connection's resync begins: her session must be one the server has to
    announce again, and is closed at end_resync when it does not."""
    slow = SlowReads(tracker._store)
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    tracker.when_loaded(None, partial(tracker.begin_resync, T0 + 1))
    tracker.when_loaded(CAROL, lambda: tracker.session_started(CAROL, "pc", T0 + 2))  # re-announced
    slow.release()
    await tracker.until_applied(5)
    closed: list[int] = []
    tracker.when_loaded(None, lambda: closed.append(tracker.end_resync()))
    await tracker.until_applied(5)
    assert closed == [1]
    assert tracker.online_sessions() == {(CAROL, "pc")}
    assert tracker._store.get(ALICE).last_logout == T0 + 1


async def test_forget_waits_for_the_login_given_before_it(tracker):
    slow = SlowReads(tracker._store)
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    forgetting = asyncio.ensure_future(tracker.forget_soon(ALICE))
    await slow.held()
    assert not forgetting.done()
    slow.release()
    assert await forgetting is True
    assert tracker.online_sessions() == set()
    assert tracker._store.get(ALICE) is None
    counts = tracker.counts(T0)
    assert (counts.known_users, counts.online_users) == (1, 0)  # carol only


async def test_a_login_after_forget_starts_afresh(tracker):
    SlowReads(tracker._store).release()
    assert await tracker.forget_soon(ALICE) is True
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    await tracker.until_applied(5)
    assert tracker._store.get(ALICE) == UserRecord(T0, T0, 0, ("phone",), (UNKNOWN, T0), (UNKNOWN,))


async def test_forget_during_a_resync_does_not_bring_the_user_back(tracker):
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    await tracker.until_applied(5)
    tracker.when_loaded(None, partial(tracker.begin_resync, T0 + 1))
    assert await tracker.forget_soon(ALICE) is True
    assert tracker.end_resync() == 0
    assert tracker._store.get(ALICE) is None


async def test_retention_rechecks_a_user_whose_login_waits_for_a_read(tracker):
    slow = SlowReads(tracker._store)
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    tracker.when_loaded(ALICE, lambda: tracker.session_ended(ALICE, "phone", T0 + 1))
    retention = asyncio.ensure_future(tracker.forget_inactive_soon([ALICE, CAROL], T0 - DAY))
    await slow.held()
    assert not retention.done()
    slow.release()
    assert await retention == 1  # carol only: alice came back
    assert tracker._store.get(ALICE) is not None
    assert tracker._store.get(CAROL) is None


async def test_a_failing_read_is_retried_and_logged_once(tracker, caplog, monkeypatch):
    monkeypatch.setattr("bot.activity.read_queue.READ_RETRY_DELAY", 0.05)
    store = tracker._store
    real_read = store.read_stored
    failures = 0

    def flaky_read(keys: Any) -> dict[str, bytes | None]:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise StoreError("disk I/O error")
        return real_read(keys)

    store.read_stored = flaky_read  # type: ignore[method-assign]
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    tracker.when_loaded(ALICE, lambda: tracker.session_ended(ALICE, "phone", T0 + 1))
    assert await tracker.until_applied(5) == 0
    # the stored first_seen; no caps announced: the client is unknown
    assert store.get(ALICE) == UserRecord(T0 - 10 * DAY, T0, T0 + 1, (), (UNKNOWN, T0 + 1))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "disk I/O error" in errors[0].getMessage()
    assert "works again" in caplog.text


# --- flushing off the loop ------------------------------------------------------------------


async def test_a_failed_flush_merges_its_batch_back_and_a_newer_change_wins(tmp_path):
    store = Store(tmp_path / "a.db")
    old = UserRecord(T0, T0, 0, ("phone",))
    newer = UserRecord(T0, T0, T0 + 5)
    store.put(ALICE, old)
    store.put(BOB, old)
    gate = threading.Event()
    real_write = store.write_batch

    writing = threading.Event()

    def failing_once(batch: Batch) -> None:
        writing.set()
        gate.wait(10)
        raise StoreError("disk full")

    store.write_batch = failing_once  # type: ignore[method-assign]
    flushing = asyncio.create_task(store.flush_off_loop(T0 + 1))
    await until_set(writing)
    assert store.get(BOB) == old  # from the batch being written, not the (empty) disk
    store.put(ALICE, newer)  # changed while the batch is written
    gate.set()
    with pytest.raises(StoreError, match="disk full"):
        await flushing
    assert store.get(ALICE) == newer
    assert store.get(BOB) == old
    assert store.pending == 2
    store.write_batch = real_write  # type: ignore[method-assign]
    assert await store.flush_off_loop(T0 + 2) == 2
    store.close()
    with Store(tmp_path / "a.db", readonly=True) as reader:
        assert reader.get(ALICE) == newer
        assert reader.get(BOB) == old
        assert reader.heartbeat == T0 + 2


async def test_a_cancelled_flush_still_settles_and_the_next_one_waits_for_it(tmp_path):
    store = Store(tmp_path / "a.db")
    store.put(ALICE, UserRecord(T0, T0, 0))
    gate, writing = threading.Event(), threading.Event()
    real_write = store.write_batch

    def held_flush(batch: Batch) -> None:
        writing.set()
        gate.wait(10)
        return real_write(batch)

    store.write_batch = held_flush  # type: ignore[method-assign]
    first = asyncio.create_task(store.flush_off_loop(T0 + 1))
    await until_set(writing)
    first.cancel()
    store.put(BOB, UserRecord(T0, T0, 0))
    second = asyncio.create_task(store.flush_off_loop(T0 + 2))
    # Nothing to wait for: a second batch started too early would block at the gate as well,
    # so `second` cannot finish before the gate opens whatever the machine's load.
    await asyncio.sleep(0.05)
    assert not second.done()  # one batch at a time
    gate.set()
    assert await second == 1  # bob; alice was written by the cancelled one
    assert first.cancelled()
    assert store.pending == 0
    store.close()
    with Store(tmp_path / "a.db", readonly=True) as reader:
        assert {key for key, _ in reader.users()} == {ALICE, BOB}


async def test_a_synchronous_flush_during_a_write_folds_the_batch_in(tmp_path):
    """The command line's flush (and `close`) while a batch is in flight: both end on disk,
    and the in-flight batch's settling changes nothing afterwards."""
    store = Store(tmp_path / "a.db")
    store.put(ALICE, UserRecord(T0, T0, 0))
    gate = threading.Event()
    real_write = store.write_batch

    writing = threading.Event()

    def failing(batch: Batch) -> None:
        writing.set()
        gate.wait(10)
        raise StoreError("disk full")

    store.write_batch = failing  # type: ignore[method-assign]
    flushing = asyncio.create_task(store.flush_off_loop(T0 + 1))
    await until_set(writing)
    store.put(BOB, UserRecord(T0, T0, 0))
    gate.set()
    store.write_batch = real_write  # type: ignore[method-assign]
    assert store.flush(T0 + 2) == 2  # alice (in flight) and bob
    with pytest.raises(StoreError):
        await flushing
    assert store.pending == 0  # the failed batch was taken over: nothing merged back
    store.close()
    with Store(tmp_path / "a.db", readonly=True) as reader:
        assert {key for key, _ in reader.users()} == {ALICE, BOB}


async def test_history_off_the_loop_sees_a_snapshot_written_during_the_scan(tmp_path):
    store = Store(tmp_path / "a.db")
    store.put_day("2027-01-14", {"n": 1})
    store.flush(T0)
    store.put_day("2027-01-15", {"n": 2})
    writing = asyncio.create_task(store.flush_off_loop(T0 + 1))
    days = await store.days_off_loop()
    await writing
    assert days == {"2027-01-14": {"n": 1}, "2027-01-15": {"n": 2}}
    assert await store.days_off_loop() == days
    store.close()


async def test_the_flush_duty_does_not_hold_the_loop_while_it_writes(tmp_path):
    """A write that lasts until the event loop itself lets it finish: it can only finish if
    the loop keeps turning while the store writes (before the change it stood still)."""
    store = Store(tmp_path / "a.db")
    store.put(ALICE, UserRecord(T0, T0, 0))
    real_write = store.write_batch
    writing, loop_turned, written = threading.Event(), threading.Event(), threading.Event()

    def slow_flush(batch: Batch) -> None:
        writing.set()
        if not loop_turned.wait(5):  # a flush on the loop's thread waits here in vain
            raise AssertionError("the event loop stood still while the store wrote")
        try:
            return real_write(batch)
        finally:
            written.set()

    store.write_batch = slow_flush  # type: ignore[method-assign]
    flushing = asyncio.create_task(flush_periodically(store, 0.01, lambda: T0))
    try:
        await until_set(writing)
        loop_turned.set()  # the loop runs this while the write is under way
        await until_set(written)
    finally:
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
    assert store.pending == 0
    store.close()


async def test_figures_asked_after_a_presence_wait_for_it(tracker):
    """An admin's question answered after the presences received before it (the ad-hoc
    command and chat call `caught_up` first), even when one waits for a slow read."""
    slow = SlowReads(tracker._store)
    tracker.when_loaded(ALICE, lambda: tracker.session_started(ALICE, "phone", T0))
    asked = asyncio.ensure_future(tracker.caught_up())
    await slow.held()
    assert not asked.done()
    slow.release()
    await asyncio.wait_for(asked, 5)
    assert tracker.counts(T0).online_users == 1


async def test_a_forget_whose_asker_went_away_is_still_applied(tracker):
    """An account deletion asked, then cancelled by the asker's disconnect while the record
    is read: the user is forgotten all the same, never silently kept."""
    slow = SlowReads(tracker._store)
    forgetting = asyncio.ensure_future(tracker.forget_soon(ALICE))
    await slow.held()
    forgetting.cancel()
    slow.release()
    assert await tracker.until_applied(5) == 0
    assert tracker._store.get(ALICE) is None
    assert tracker.counts(T0).known_users == 1  # carol only
