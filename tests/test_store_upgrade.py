"""A store written before client families (schema 1) loads, counts the same, and takes clients.

tests/data/store-schema-1.sqlite3 was written by the release before (see tests/data/README.md):
alice offline (last active 2 days before its heartbeat), bob with two sessions online, carol
dormant (60 days), one daily snapshot.
"""

from __future__ import annotations

import pickle
import shelve
import shutil
import sqlite3
from pathlib import Path

from bot.activity.tracker import ActivityTracker
from bot.core.counter import DAY
from bot.core.model import UserRecord
from bot.storage.keys import SCHEMA_VERSION
from bot.storage.sqlite_dict import SqliteDict
from bot.storage.store import Store
from bot.testbed.seed import seed_counts

OLD_STORE = Path(__file__).parent / "data" / "store-schema-1.sqlite3"
HEARTBEAT = 1_800_000_000
NOW = HEARTBEAT + 600
DOMAIN = "example.test"
ALICE, BOB, CAROL = (f"{user}@{DOMAIN}" for user in ("alice", "bob", "carol"))
RECORDS = {  # as the old release stored them
    ALICE: (HEARTBEAT - 40 * DAY, HEARTBEAT - 2 * DAY, HEARTBEAT - 2 * DAY + 600, ()),
    BOB: (HEARTBEAT - 10 * DAY, HEARTBEAT - 3600, HEARTBEAT - 7200, ("phone", "laptop")),
    CAROL: (HEARTBEAT - 90 * DAY, HEARTBEAT - 60 * DAY, 0, ()),
}


def schema_of(path: Path) -> int:
    with shelve.Shelf(SqliteDict(path, readonly=True)) as shelf:
        return shelf["meta:schema"]


def raw_record(path: Path, bare_jid: str) -> tuple:
    row = sqlite3.connect(path).execute(
        "SELECT value FROM Dict WHERE key = ?", (f"user:{bare_jid}".encode(),)
    )
    return pickle.loads(row.fetchone()[0])


def old_store(tmp_path: Path) -> Path:
    path = tmp_path / "activity.db"
    shutil.copyfile(OLD_STORE, path)
    return path


def test_the_fixture_is_what_the_old_release_wrote():
    assert schema_of(OLD_STORE) == 1
    for bare_jid, record in RECORDS.items():
        assert raw_record(OLD_STORE, bare_jid) == record  # 4-tuples: no client families


def test_a_reader_counts_an_old_store_as_it_is_and_changes_nothing(tmp_path):
    path = old_store(tmp_path)
    before = path.read_bytes()
    with Store(path, readonly=True) as store:
        assert dict(store.users()) == {jid: UserRecord(*r) for jid, r in RECORDS.items()}
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(NOW, close_stale_sessions=False)  # as `count` reads a running bot's store
        counts = tracker.counts(NOW)
        assert tuple(counts.active.values()) == seed_counts(RECORDS.values(), NOW) == (1, 2, 2)
        assert (counts.online_users, counts.online_sessions, counts.known_users) == (1, 2, 3)
        assert tracker.client_counts(NOW) == {}  # nobody's client is known yet
        assert store.days()["2027-01-14"][DOMAIN]["peak_online"] == 1
    assert path.read_bytes() == before


def test_the_bot_loads_an_old_store_marks_it_schema_2_and_adds_clients(tmp_path):
    path = old_store(tmp_path)
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        report = tracker.load(NOW)  # bob's sessions end at the heartbeat, for no client
        assert (report.users, report.recovered_sessions) == (3, 2)
        assert tracker.counts(NOW).active == {DAY: 1, 7 * DAY: 2, 30 * DAY: 2}
        assert tracker.client_counts(NOW) == {}
        assert tracker.session_started(BOB, "phone", NOW, "http://conversations.im")
        assert tracker.session_started(CAROL, "pc", NOW, None)
        store.flush(NOW)
    assert schema_of(path) == SCHEMA_VERSION == 2
    assert raw_record(path, ALICE) == RECORDS[ALICE]  # untouched, as it was written
    assert raw_record(path, BOB) == (
        HEARTBEAT - 10 * DAY,
        NOW,
        HEARTBEAT,
        ("phone",),
        ("conversations", NOW),
        ("conversations",),
    )
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(NOW + 60)
        clients = tracker.client_counts(NOW + 60)
        assert {family: counts.active[DAY] for family, counts in clients.items()} == {
            "conversations": 1,
            "unknown": 1,
        }
        assert tracker.counts(NOW + 60).active == {DAY: 2, 7 * DAY: 3, 30 * DAY: 3}  # not alice
