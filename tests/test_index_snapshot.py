"""The index snapshot: a start from it gives the full scan's figures, and any snapshot that does
not describe the store as it is (stale, truncated, altered, other settings) is refused in one
log line, the start reading every record instead; a kill -9 while it is written changes
nothing of that."""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.activity.tracker import ActivityTracker
from bot.app.daemon import EXIT_NOT_SAVED, Bot
from bot.core.counter import DAY
from bot.core.model import UserRecord, with_client_activity
from bot.importing.importer import Activity, import_activities
from bot.storage import index_snapshot
from bot.storage.store import Store
from bot.testbed.clients import connect_client, disconnect_client

from .support import FAST, T0, RunningBot, bot_settings

DOMAINS = ("one.test", "two.test")
FAMILIES = ("conversations", "gajim", "dino", "chat.example.net")
SECRET = b"k" * 32
NODEINFO = (180 * DAY,)


def random_record(rng: random.Random, now: int) -> UserRecord:
    """Offline or online, with none, one or two client families; some long dormant."""
    last = now - rng.choice((rng.randrange(40 * DAY), rng.randrange(400 * DAY)))
    record = UserRecord(last - rng.randrange(300 * DAY), last - rng.randrange(3600), last)
    if rng.random() < 0.7:
        clients: tuple = ()
        for n, family in enumerate(rng.sample(FAMILIES, rng.choice((1, 1, 2)))):
            clients = with_client_activity(clients, family, last - n * 60)
        record = record._replace(clients=clients)
    if rng.random() < 0.15:
        sessions = ("phone", "laptop")[: rng.choice((1, 2))]
        families = tuple(str(f) for f in record.clients[::2])[: len(sessions)]
        record = record._replace(last_login=now - 100, sessions=sessions, session_clients=families)
    return record


def fill(
    path: Path, users: int = 600, *, seed: int = 1, pseudonym_key: bytes | None = None
) -> None:
    rng = random.Random(seed)
    with Store(path, pseudonym_key=pseudonym_key) as store:
        for i in range(users):
            domain = DOMAINS[i % 3 == 0]
            name = f"bot{i}" if i % 17 == 0 else f"u{i}"
            store.put(store.key_of(f"{name}@{domain}"), random_record(rng, T0))
        store.put(store.key_of("x@elsewhere.test"), random_record(rng, T0))
        store.flush(T0 - 50)


def start(path: Path, now: int, **options) -> tuple[Store, ActivityTracker, object]:
    """What the bot does at start: open for writing, load (stored sessions closed)."""
    pseudonym_key = options.pop("pseudonym_key", None)
    close = options.pop("close_stale_sessions", True)
    store = Store(path, pseudonym_key=pseudonym_key)
    tracker = ActivityTracker(store, options.pop("domains", DOMAINS), **options)
    report = tracker.load(now, close_stale_sessions=close)
    return store, tracker, report


def stop(store: Store, tracker: ActivityTracker, now: int) -> None:
    """A clean stop: the last flush, then the snapshot (as `Bot._close_store`)."""
    store.flush(now, heartbeat_interval=0)
    store.close(then=tracker.snapshot_writer(now))


def figures(tracker: ActivityTracker, now: int) -> tuple:
    """The figures, and what the index keeps (the same timestamps, not only the same counts)."""
    windows = tracker.windows + tracker.extra_windows
    kept = {}
    for domain, index in tracker._activity.indexes.items():
        offline, first_seen, clients = index.kept_lists()
        kept[domain] = (
            list(offline),
            list(first_seen),
            {
                family: (list(times), users, sessions)
                for family, (times, users, sessions) in clients.items()
            },
        )
    return (
        tracker.counts(now, windows),
        tracker.counts_by_domain(now, windows),
        tracker.client_counts_by_domain(now),
        sorted(tracker.online_sessions()),
        kept,
        tracker._activity.families.hosts,
    )


def full_scan_figures(path: Path, now: int, **options) -> tuple:
    """The figures of a start that reads every record (the snapshot moved away meanwhile)."""
    snapshot = index_snapshot.path_for(path)
    aside = snapshot.with_name("aside")
    if snapshot.exists():
        snapshot.rename(aside)
    store, tracker, report = start(path, now, **options)
    try:
        assert not report.snapshot
        return figures(tracker, now), report.users, report.hidden, report.recovered_sessions
    finally:
        store._unlock()  # as a crash: nothing written, the snapshot still matches
        store._shelf.close()
        if aside.exists():
            aside.rename(snapshot)


def snapshot_figures(path: Path, now: int, **options) -> tuple:
    store, tracker, report = start(path, now, **options)
    try:
        assert report.snapshot == str(index_snapshot.path_for(path)), "the snapshot was refused"
        return figures(tracker, now), report.users, report.hidden, report.recovered_sessions
    finally:
        store._unlock()
        store._shelf.close()


@pytest.fixture
def stopped(tmp_path) -> Path:
    """A store whose bot ran (events of its own) and stopped cleanly, writing its snapshot."""
    path = tmp_path / "activity.db"
    fill(path)
    store, tracker, _ = start(path, T0)
    tracker.session_started("u1@two.test", "phone", T0 + 10, "http://conversations.im")
    tracker.session_started("new@one.test", "pc", T0 + 20, "https://gajim.org")
    tracker.session_ended("u2@two.test", "phone", T0 + 30)
    stop(store, tracker, T0 + 40)
    return path


@pytest.mark.parametrize("later", [0, 1, DAY, 20 * DAY])
def test_a_start_from_the_snapshot_has_the_full_scans_figures(stopped, later):
    now = T0 + 40 + later
    expected = full_scan_figures(stopped, now)
    assert snapshot_figures(stopped, now) == expected
    assert expected[3] > 0  # sessions left online by the stop, closed at its heartbeat


def test_a_start_keeping_the_stored_sessions_has_the_full_scans_figures(stopped):
    # ejabberd with pings: the stored sessions stay online until the pings say otherwise.
    now = T0 + 100
    expected = full_scan_figures(stopped, now, close_stale_sessions=False)
    assert snapshot_figures(stopped, now, close_stale_sessions=False) == expected
    assert expected[0][0].online_users > 0


def test_the_snapshot_writes_the_closed_sessions_of_its_start_as_the_scan_does(stopped):
    store, _tracker, report = start(stopped, T0 + 100)
    assert report.snapshot
    assert report.recovered_sessions
    store.flush(T0 + 100)
    online = [key for key, record in store.users() if record.sessions]
    store.close()
    assert online == []


def test_exclusions(tmp_path):
    path = tmp_path / "activity.db"
    fill(path)
    options = {"exclude": ["bot*@*"]}
    store, tracker, report = start(path, T0, **options)
    assert report.hidden > 0
    assert tracker.forget("bot0@two.test")  # hidden, forgotten: one fewer hidden
    assert not tracker.session_started("bot17@two.test", "phone", T0 + 1)
    stop(store, tracker, T0 + 2)
    expected = full_scan_figures(path, T0 + 5, **options)
    assert expected[2] == report.hidden - 1
    assert snapshot_figures(path, T0 + 5, **options) == expected


def test_pseudonymize_and_nodeinfo(tmp_path):
    path = tmp_path / "activity.db"
    fill(path, pseudonym_key=SECRET)
    options = {"pseudonym_key": SECRET, "extra_windows": NODEINFO}
    store, tracker, _ = start(path, T0, **options)
    tracker.session_started("u5@one.test", "phone", T0 + 1)
    stop(store, tracker, T0 + 2)
    data = index_snapshot.path_for(path).read_bytes()
    assert b"u5@" not in data
    assert b"phone" not in data
    assert store.key_of("u5@one.test").encode() in data
    expected = full_scan_figures(path, T0 + 5, **options)
    assert snapshot_figures(path, T0 + 5, **options) == expected


def test_a_family_whose_users_all_leave_the_windows_is_not_kept(tmp_path):
    """A host family's only user was last active 25 days before the stop; 10 days later, a
    scan finds nobody of it within the windows, nor must the snapshot bring it back."""
    path = tmp_path / "activity.db"
    fill(path)
    with Store(path) as store:
        old = T0 - 25 * DAY
        store.put("old@one.test", UserRecord(old, old, old, clients=("chat.rare.example", old)))
        store.flush(T0 - 50)
    store, tracker, _ = start(path, T0)
    assert "chat.rare.example" in tracker.client_counts(T0)
    stop(store, tracker, T0 + 1)
    expected = full_scan_figures(path, T0 + 10 * DAY)
    assert "chat.rare.example" not in expected[0][2]["one.test"]
    assert snapshot_figures(path, T0 + 10 * DAY) == expected


def test_retention_and_forget_while_running_are_in_the_snapshot(stopped):
    store, tracker, _ = start(stopped, T0 + 50)
    candidates = [key for key, r in store.users() if not r.sessions and r.last_active < T0 - DAY]
    assert tracker.forget_inactive(candidates, T0 - DAY) == len(candidates) > 0
    assert tracker.forget("u3@two.test") or True
    stop(store, tracker, T0 + 60)
    expected = full_scan_figures(stopped, T0 + 70)
    assert snapshot_figures(stopped, T0 + 70) == expected


# --- refused: each one log line, and the full scan's figures -----------------------------------


def refused_start(path: Path, now: int, caplog, **options) -> str:
    """Start; the snapshot must be refused, in one log line, and the figures be the scan's."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bot.activity"):
        store, tracker, report = start(path, now, **options)
    try:
        lines = [r.getMessage() for r in caplog.records if "Index snapshot" in r.getMessage()]
        assert not report.snapshot
        assert len(lines) == 1, lines
        got = (figures(tracker, now), report.users, report.hidden, report.recovered_sessions)
    finally:
        store._unlock()
        store._shelf.close()
    assert got == full_scan_figures(path, now, **options)
    return lines[0]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_no_snapshot_is_said_once(tmp_path, caplog):
    path = tmp_path / "activity.db"
    fill(path)
    assert "none" in refused_start(path, T0, caplog)


def test_stale_after_a_write_of_the_store(stopped, caplog):
    with Store(stopped) as store:  # the CLI's forget, while the bot is stopped
        store.delete("u4@one.test")
    assert "stale (the store was written after it)" in refused_start(stopped, T0 + 50, caplog)


def test_stale_after_an_import(stopped, caplog):
    with Store(stopped) as store:
        activity = Activity("imported@one.test", last_login=T0 - 5, last_logout=0, registered=0)
        import_activities(store, [activity], DOMAINS, dry_run=False, exclude=())
    assert "stale" in refused_start(stopped, T0 + 50, caplog)


def test_stale_after_a_crash_of_the_next_run(stopped, caplog):
    """A run started from the snapshot flushes, then is killed: the snapshot is its start's."""
    store, tracker, report = start(stopped, T0 + 50)
    assert report.snapshot
    tracker.session_started("u7@one.test", "phone", T0 + 51)
    store.flush(T0 + 52)
    store._unlock()  # kill -9
    store._shelf.close()
    assert "stale" in refused_start(stopped, T0 + 60, caplog)


def test_stale_after_a_write_by_another_program(stopped, caplog):
    """An older release, or sqlite3 by hand: the store's generation stays, its file changes."""
    with sqlite3.connect(stopped) as db:
        db.execute("DELETE FROM Dict WHERE key = CAST(? AS BLOB)", (b"user:u4@one.test",))
    assert "the store's file changed" in refused_start(stopped, T0 + 50, caplog)


def test_stale_after_a_schema_upgrade(stopped, caplog):
    """A store marked with an older schema (as an older release left it) is upgraded at open:
    a write, so the snapshot is stale (here both the file and the generation say so)."""
    import pickle

    with sqlite3.connect(stopped) as db:
        db.execute(
            "UPDATE Dict SET value = ? WHERE key = CAST(? AS BLOB)",
            (pickle.dumps(1), b"meta:schema"),
        )
    assert "stale" in refused_start(stopped, T0 + 50, caplog)


def test_truncated(stopped, caplog):
    snapshot = index_snapshot.path_for(stopped)
    os.truncate(snapshot, snapshot.stat().st_size - 9)
    assert "truncated" in refused_start(stopped, T0 + 50, caplog)


def test_tampered_arrays(stopped, caplog):
    snapshot = index_snapshot.path_for(stopped)
    flip(snapshot, snapshot.stat().st_size - 100)  # a timestamp
    assert "damaged (its checksum does not match)" in refused_start(stopped, T0 + 50, caplog)


def test_tampered_header(stopped, caplog):
    snapshot = index_snapshot.path_for(stopped)
    data = snapshot.read_bytes()
    at = data.index(b'"known_users":') + len(b'"known_users":')
    flip(snapshot, at)  # a digit: still valid JSON
    assert "damaged" in refused_start(stopped, T0 + 50, caplog)


def test_garbage(stopped, caplog):
    index_snapshot.path_for(stopped).write_bytes(b"\x00" * 4096)
    assert "damaged (not an index snapshot)" in refused_start(stopped, T0 + 50, caplog)


def test_other_exclusions(stopped, caplog):
    line = refused_start(stopped, T0 + 50, caplog, exclude=["u1@two.test"])
    assert "other exclusions" in line


def test_a_domain_added(stopped, caplog):
    line = refused_start(stopped, T0 + 50, caplog, domains=(*DOMAINS, "three.test"))
    assert "without the domain(s) three.test" in line


def test_a_domain_removed_is_fine(stopped):
    now = T0 + 50
    assert snapshot_figures(stopped, now, domains=DOMAINS[:1]) == full_scan_figures(
        stopped, now, domains=DOMAINS[:1]
    )


def test_nodeinfo_turned_on(stopped, caplog):
    line = refused_start(stopped, T0 + 50, caplog, extra_windows=NODEINFO)
    assert "too short a past" in line


def test_the_clock_set_back(stopped, caplog):
    assert "too short a past" in refused_start(stopped, T0 - 2 * DAY, caplog)


def test_no_snapshot_once_changes_were_discarded(tmp_path):
    """The store itself refuses, whatever its caller passes: its index has changes the file
    has not."""
    path = tmp_path / "activity.db"
    fill(path)
    store, tracker, _ = start(path, T0)
    tracker.session_started("u1@two.test", "phone", T0 + 10)
    store.discard_pending()
    store.close(T0 + 20, then=tracker.snapshot_writer(T0 + 20))
    assert not index_snapshot.path_for(path).exists()


# --- kill -9 while the snapshot is written, in a real process ---------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from bot.storage import index_snapshot
    from bot.activity.tracker import ActivityTracker
    from bot.storage.store import Store

    path, when = sys.argv[1], sys.argv[2]
    real_replace, real_fsync = os.replace, os.fsync

    def pause(what):
        print(what, flush=True)
        time.sleep(60)  # killed here

    def fsync(fd):
        real_fsync(fd)
        if when == "before-rename" and os.path.isfile(f"/proc/self/fd/{fd}"):
            pause("written, not renamed")

    def replace(src, dst):
        real_replace(src, dst)
        if when == "after-rename":
            pause("renamed")

    index_snapshot.os.fsync = fsync
    index_snapshot.os.replace = replace
    store = Store(__import__("pathlib").Path(path))
    tracker = ActivityTracker(store, ["one.test", "two.test"])
    tracker.load(int(sys.argv[3]))
    tracker.session_started("late@one.test", "pc", int(sys.argv[3]) + 1)
    if when == "after-flush":
        store.flush(int(sys.argv[3]) + 2)
        pause("flushed")
    store.flush(int(sys.argv[3]) + 2, heartbeat_interval=0)
    store.close(then=tracker.snapshot_writer(int(sys.argv[3]) + 2))
    print("done", flush=True)
    """
)


def kill_writer(path: Path, when: str, now: int) -> str:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), when, str(now)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        said = process.stdout.readline().strip()
        if said != "done":
            os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stdout.close()
    return said


@pytest.mark.parametrize(
    ("when", "used"),
    [
        ("after-flush", False),  # the old snapshot, stale
        ("before-rename", False),  # the new one is a temporary file; the old one is stale
        ("after-rename", True),  # the new one is complete and the store's
    ],
)
def test_kill_9_while_the_snapshot_is_written(stopped, caplog, when, used):
    said = kill_writer(stopped, when, T0 + 100)
    assert said != "done", said
    now = T0 + 200
    if used:
        assert snapshot_figures(stopped, now) == full_scan_figures(stopped, now)
    else:
        assert "stale" in refused_start(stopped, now, caplog)


# --- the real bot: `Bot.serve` writes it at a clean stop, never after losing changes ------------


@pytest.mark.asyncio
async def test_the_bots_clean_stop_writes_it_and_the_next_start_reads_it(prosody, tmp_path):
    path = tmp_path / "a.db"
    first = await RunningBot(Bot(bot_settings(prosody, path), timing=FAST)).start()
    assert not first.bot.tracker.load_report.snapshot  # a new store: nothing to read
    alice = await connect_client(prosody, "alice@example.test", "alicepw", resource="phone")
    try:
        await first.expect("available", "alice@example.test/phone")
        assert await first.stop() == 0
        assert index_snapshot.path_for(path).exists()
        second = Bot(bot_settings(prosody, path), timing=FAST)
        try:
            report = second.tracker.load_report
            assert report.snapshot == str(index_snapshot.path_for(path))
            assert report.recovered_sessions == 1  # alice's session, closed at the heartbeat
            assert second.tracker.counts(int(time.time())).dau == 1
        finally:
            second.store.close()
    finally:
        await disconnect_client(alice)


@pytest.mark.asyncio
async def test_the_bots_stop_that_loses_changes_writes_none(prosody, tmp_path):
    path = tmp_path / "a.db"
    bot = await RunningBot(Bot(bot_settings(prosody, path), timing=FAST)).start()
    cx = bot.bot.store._db._cx  # fault injection: the disk is full from now on
    cx.execute(f"PRAGMA max_page_count = {cx.execute('PRAGMA page_count').fetchone()[0]}")
    for n in range(300):
        bot.bot.store.put(f"user{n}@example.test", UserRecord(T0, T0, T0))
    assert await bot.stop() == EXIT_NOT_SAVED
    assert not index_snapshot.path_for(path).exists()
