"""The store keeps what it promised, refuses what is not its own, and says why."""

from __future__ import annotations

import os
import pickle
import shelve
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from bot.core.model import UserRecord
from bot.storage.errors import StoreCorruptError, StoreError, StoreLockedError
from bot.storage.keys import SCHEMA_VERSION
from bot.storage.sqlite_dict import SqliteDict
from bot.storage.store import Store

from .support import T0, cpu_wait

ALICE = UserRecord(first_seen=T0, last_login=T0 + 5, last_logout=T0 + 9, sessions=("phone",))


def test_records_survive_close_and_reopen(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("alice@example.test", ALICE)
    with Store(path, readonly=True) as store:
        assert dict(store.users()) == {"alice@example.test": ALICE}
        assert store.heartbeat == 0  # nobody said the bot was alive
    Store(path).close(now=T0)
    with Store(path, readonly=True) as store:
        assert store.heartbeat == T0


def test_file_is_a_plain_shelf_of_primitives_in_dbm_sqlite3_layout(tmp_path):
    """What Python 3.13's `shelve.open(path)` (dbm.sqlite3) expects to find."""
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("alice@example.test", ALICE)
        store.flush(T0 + 10)
    table = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE name = 'Dict'")
    assert "key BLOB UNIQUE NOT NULL, value BLOB NOT NULL" in table.fetchone()[0]
    assert path.read_bytes().startswith(b"SQLite format 3\x00")
    with shelve.Shelf(SqliteDict(path, readonly=True)) as shelf:
        stored = dict(shelf)
        assert len(stored.pop("meta:generation")) == 16  # random, new with each write
        assert stored == {
            "meta:schema": SCHEMA_VERSION,
            "meta:pseudonymized": False,
            "meta:heartbeat": T0 + 10,
            "user:alice@example.test": (T0, T0 + 5, T0 + 9, ("phone",)),
        }
    raw = sqlite3.connect(path).execute(
        "SELECT value FROM Dict WHERE key = ?", (b"user:alice@example.test",)
    )
    assert b"bot" not in raw.fetchone()[0]  # no class of ours is pickled


def test_puts_wait_for_flush_and_a_flush_is_one_transaction(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as writer, Store(path, readonly=True) as reader:
        for i in range(100):
            writer.put(f"u{i}@example.test", ALICE)
        assert reader.get("u0@example.test") is None  # grouped: nothing on disk yet
        assert writer.get("u0@example.test") == ALICE  # but the writer reads its own writes
        assert writer.flush(T0) == 100
        assert reader.get("u99@example.test") == ALICE
        assert reader.heartbeat == 0  # readers see the data, the heartbeat they read at open


def test_idle_flush_refreshes_only_a_stale_heartbeat(tmp_path):
    with Store(tmp_path / "activity.db") as store:
        assert store.flush(T0) == 0
        assert store.heartbeat == T0
        store.flush(T0 + 5, heartbeat_interval=30)
        assert store.heartbeat == T0
        store.flush(T0 + 31, heartbeat_interval=30)
        assert store.heartbeat == T0 + 31


def test_deleted_user_is_gone_after_flush(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("alice@example.test", ALICE)
        store.flush(T0)
        store.delete("alice@example.test")
        assert store.get("alice@example.test") is None
        assert list(store.users()) == []
    with Store(path, readonly=True) as store:
        assert list(store.users()) == []


def test_second_writer_is_refused_with_path_and_holder(tmp_path):
    path = tmp_path / "activity.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_STORE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError) as refused:
            Store(path)
        message = str(refused.value)
        assert str(path) in message
        assert f"pid {holder.pid}" in message
        with Store(path, readonly=True) as reader:  # reading is fine meanwhile
            assert reader.writer_running
            assert reader.get("alice@example.test") == UserRecord(1, 2, 3, ("phone",))
    finally:
        holder.kill()
        holder.wait()
    with Store(path) as store:  # the kernel dropped the dead holder's lock
        assert store.get("alice@example.test") == UserRecord(1, 2, 3, ("phone",))


_HOLD_STORE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bot.core.model import UserRecord
    from bot.storage.store import Store
    store = Store(Path(sys.argv[1]))
    store.put("alice@example.test", UserRecord(1, 2, 3, ("phone",)))
    store.flush(4)
    print("open", flush=True)
    time.sleep(60)
    """
)


def test_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "activity.db"
    content = b"these are somebody's notes, not a store\n" * 100
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(StoreCorruptError, match=r"not an SQLite file\); it was left untouched"):
            Store(path, readonly=readonly)
    assert path.read_bytes() == content
    Store(tmp_path / "other.db").close()  # and the lock was released on the way out


def test_someone_elses_sqlite_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "activity.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
    other.execute("INSERT INTO Dict VALUES (?, ?)", (b"k", pickle.dumps("v")))
    other.commit()
    other.close()
    before = path.read_bytes()
    with pytest.raises(StoreCorruptError, match="no schema version"):
        Store(path)
    assert path.read_bytes() == before


def test_store_of_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "activity.db"
    Store(path).close()
    with shelve.Shelf(SqliteDict(path, readonly=False)) as shelf:
        shelf["meta:schema"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreCorruptError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(path)


def test_truncated_database_is_refused_not_reset(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        for i in range(2000):
            store.put(f"user{i}@example.test", ALICE)
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\xff" * 4000)  # a valid header, garbage after it
    damaged = path.read_bytes()
    with pytest.raises(StoreError):
        Store(path)
    assert path.read_bytes() == damaged


def test_malformed_record_is_skipped_and_kept(tmp_path, caplog):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("alice@example.test", ALICE)
    with shelve.Shelf(SqliteDict(path, readonly=False)) as shelf:
        shelf["user:mallory@example.test"] = "not a record"
    with Store(path) as store:
        assert dict(store.users()) == {"alice@example.test": ALICE}
        assert "mallory@example.test is malformed" in caplog.text
    with shelve.Shelf(SqliteDict(path, readonly=True)) as shelf:
        assert shelf["user:mallory@example.test"] == "not a record"


def test_reader_of_a_missing_store_is_told_where_it_looked(tmp_path):
    with pytest.raises(StoreError, match="no store there yet"):
        Store(tmp_path / "nothing.db", readonly=True)


# --- the crash promise ---------------------------------------------------------------------

FLUSH_INTERVAL = 0.2
RUN_FOR = 1.5  # seconds of writing before the kill
COMMIT_TIME = 0.02  # the flush that starts on time still commits (about 1 ms here)
# On a loaded machine the writer's flush tick runs once it gets a CPU: the time it waited for
# one over the last interval before the kill is measured (cpu_wait), not guessed.

_WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from bot.activity.tracker import ActivityTracker
    from bot.storage.flushing import flush_periodically
    from bot.storage.store import Store

    async def main():
        store = Store(Path(sys.argv[1]))
        tracker = ActivityTracker(store, ["example.test"])
        tracker.load(int(time.time()))
        flusher = asyncio.create_task(flush_periodically(store, float(sys.argv[2])))
        for i in range(10**9):
            tracker.session_started(f"u{i}@example.test", "r", int(time.time()))
            print(i, time.monotonic(), flush=True)  # recorded: the promise starts now
            await asyncio.sleep(0.002)

    asyncio.run(main())
    """
)


def test_kill_9_loses_nothing_older_than_one_flush_interval(tmp_path):
    path = tmp_path / "activity.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(FLUSH_INTERVAL)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: list[tuple[int, float]] = []
    waited_before: float | None = None
    try:
        started = time.monotonic()
        for line in writer.stdout:
            number, at = line.split()
            acked.append((int(number), float(at)))
            elapsed = time.monotonic() - started
            if waited_before is None and elapsed > RUN_FOR - 2 * FLUSH_INTERVAL:
                waited_before = cpu_wait(writer.pid)  # the window of the promise starts
            if elapsed > RUN_FOR:
                break
        killed_at = time.monotonic()
        cpu_waited = cpu_wait(writer.pid) - (waited_before or 0.0)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    allowance = COMMIT_TIME + cpu_waited
    promised = [n for n, at in acked if at < killed_at - FLUSH_INTERVAL - allowance]
    print(f"\nkill -9: the writer waited {cpu_waited * 1000:.0f} ms for a CPU before the kill")
    assert len(promised) > 100  # the test really exercised several flushes
    with Store(path, readonly=True) as store:
        stored = {int(jid[1:].split("@")[0]) for jid, _ in store.users()}
    missing = sorted(set(promised) - stored)
    assert not missing, f"{len(missing)} events lost, first {missing[:5]}"
    assert stored <= {n for n, _ in acked} | {len(acked)}  # nothing invented


def test_pseudonymized_store_holds_no_address(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path, pseudonym_key=b"k" * 32) as store:
        key = store.key_of("alice@example.test")
        assert key.startswith("~")
        assert key.endswith("@example.test")  # the domain stays: counts are per domain
        assert store.key_of("alice@example.test") == key  # the same user, the same key
        store.put(key, ALICE._replace(sessions=(store.session_key("phone"),)))
        assert [k for k, _ in store.users()] == [key]
    assert b"alice" not in path.read_bytes()
    assert b"phone" not in path.read_bytes()
    with Store(path, pseudonym_key=b"other key!" * 4) as store:
        assert store.get(store.key_of("alice@example.test")) is None  # other pseudonyms
    with pytest.raises(StoreError, match="this store is pseudonymized"):
        Store(path)
    Store(tmp_path / "plain.db").close()
    with pytest.raises(StoreError, match="keyed by plain JIDs"):
        Store(tmp_path / "plain.db", pseudonym_key=b"k" * 32)


def test_the_days_are_read_through_the_key_index_not_by_reading_every_user(tmp_path):
    # The status page reads the days at every load: beside a million users, a scan of the table
    # took 170 ms (benchmarks/bench_status_page.py); a range of the key index takes none of that.
    with Store(tmp_path / "a.db") as store:
        store.put("alice@example.test", UserRecord(1, 2, 3))
        store.put_day("2027-01-14", {"example.test": {"active": {}, "new": {}, "peak_online": 1}})
        store.put_day("2027-01-15", {"example.test": {"active": {}, "new": {}, "peak_online": 2}})
        store.flush(10)
        db = store._db
        with db.transaction():  # keys just outside the range, on either side
            for key in (b"day", b"day9", b"day;", b"day;x", b"dax:"):
                db[key] = b"\x00"
        statements: list[str] = []
        db._cx.set_trace_callback(statements.append)  # the SQL run, with its values
        rows = db.items_with_rare_prefix(b"day:")
        db._cx.set_trace_callback(None)
        assert [key for key, _ in rows] == [b"day:2027-01-14", b"day:2027-01-15"]
        (statement,) = statements
        plan = db._cx.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
        assert "SEARCH" in plan[0][-1], plan  # not "SCAN": the key index finds the range
        assert set(store.days()) == {"2027-01-14", "2027-01-15"}
