"""Importing Prosody's history: every source, the merge rule, and bad files reported, not fatal."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from bot.importer import (
    Activity,
    Rejected,
    data_files,
    import_activities,
    merge,
    read_data_file,
    read_sql,
)
from bot.luadata import LuaDataError, parse_lua_data
from bot.model import UserRecord
from bot.store import Store

from .support import MINIMAL, write

T = 1_795_850_306


def lastlog2(login=None, logout=None, registered=None) -> str:
    parts = [
        f'\t["{event}"] = {{\n\t\t["timestamp"] = {value};\n\t}};\n'
        for event, value in (("login", login), ("logout", logout), ("registered", registered))
        if value is not None
    ]
    return "return {\n" + "".join(parts) + "};\n"


def write_user(data_dir, host, user, store, text):
    folder = data_dir / host.replace(".", "%2e") / store
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{user}.dat").write_text(text, encoding="utf-8")


# --- the Lua data parser -------------------------------------------------------------------------


def test_parses_what_prosody_writes():
    assert parse_lua_data(lastlog2(T, T + 8)) == {
        "login": {"timestamp": T},
        "logout": {"timestamp": T + 8},
    }
    assert parse_lua_data('return { ["x"] = "caf\\195\\169", y = true, 1.5, -2 };') == {
        "x": "café",
        "y": True,
        1: 1.5,
        2: -2,
    }


@pytest.mark.parametrize(
    "text",
    [
        'return os.execute("touch /tmp/pwned")',
        "return { a = b }",
        "return { [1] = 1 + 1 }",
        "x = 1",
        "return { 1, 2",
        "return {} {}",
        "return function() end",
    ],
)
def test_anything_but_literals_is_refused(text):
    with pytest.raises(LuaDataError):
        parse_lua_data(text)


# --- file sources --------------------------------------------------------------------------------


def test_lastlog2_files_are_found_and_percent_decoded(tmp_path):
    write_user(tmp_path, "example.test", "alice", "lastlog2", lastlog2(T, T + 8))
    write_user(tmp_path, "example.test", "j%2edoe", "lastlog2", lastlog2(T))
    found = data_files("prosody-lastlog2", tmp_path)
    assert [jid for _, jid in found] == ["alice@example.test", "j.doe@example.test"]
    file, jid = found[0]
    assert read_data_file("prosody-lastlog2", file, jid) == Activity(jid, T, T + 8)
    store_dir = tmp_path / "example%2etest" / "lastlog2"
    assert [jid for _, jid in data_files("prosody-lastlog2", store_dir)] == [
        "alice@example.test",
        "j.doe@example.test",
    ]


def test_account_activity_timestamp_is_last_activity(tmp_path):
    write_user(
        tmp_path, "example.test", "bob", "account_activity", 'return { ["timestamp"] = 5; };'
    )
    ((file, jid),) = data_files("prosody-account-activity", tmp_path)
    assert read_data_file("prosody-account-activity", file, jid) == Activity(jid, 0, 5)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("garbage {", "not a Prosody data file"),
        ('return "a string"', "expected a table"),
        ('return { ["login"] = { ["timestamp"] = "yesterday" } }', "not a number"),
    ],
)
def test_malformed_files_are_rejected_with_the_reason(tmp_path, text, reason):
    write_user(tmp_path, "example.test", "mallory", "lastlog2", text)
    ((file, jid),) = data_files("prosody-lastlog2", tmp_path)
    rejected = read_data_file("prosody-lastlog2", file, jid)
    assert isinstance(rejected, Rejected)
    assert reason in rejected.reason
    assert "mallory.dat" in rejected.where


# --- SQL source -----------------------------------------------------------------------------------


def prosody_sql(path, rows):
    db = sqlite3.connect(path)
    db.execute(
        'CREATE TABLE "prosody" ("host" TEXT, "user" TEXT, "store" TEXT, "key" TEXT, '
        '"type" TEXT, "value" MEDIUMTEXT)'
    )
    db.executemany('INSERT INTO "prosody" VALUES (?, ?, ?, ?, ?, ?)', rows)
    db.commit()
    db.close()


def test_sql_storage_rows_become_activities(tmp_path):
    path = tmp_path / "prosody.sqlite"
    prosody_sql(
        path,
        [
            ("example.test", "alice", "lastlog2", "login", "json", json.dumps({"timestamp": T})),
            ("example.test", "alice", "lastlog2", "logout", "json", '{"timestamp":7}'),
            ("example.test", "bob", "account_activity", "timestamp", "number", "9"),
            ("example.test", "eve", "lastlog2", "login", "xml", "<x/>"),
            ("example.test", "carol", "roster", "x", "json", "{}"),  # another store: not read
        ],
    )
    entries = list(read_sql(path))
    assert Activity("alice@example.test", T, 7) in entries
    assert Activity("bob@example.test", 0, 9) in entries
    assert [e.where for e in entries if isinstance(e, Rejected)] == [
        f"{path}: eve@example.test store lastlog2 key login",
    ]


def test_a_file_that_is_not_a_prosody_database_is_one_rejection(tmp_path):
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    (rejected,) = read_sql(path)
    assert "not a Prosody SQL storage database" in rejected.reason


# --- merging ---------------------------------------------------------------------------------


def test_newest_timestamp_wins_per_field_and_oldest_first_seen():
    existing = UserRecord(first_seen=100, last_login=500, last_logout=200, sessions=("pc",))
    merged = merge(existing, Activity("a@x", last_login=300, last_logout=400, registered=50))
    assert merged == UserRecord(first_seen=50, last_login=500, last_logout=400, sessions=("pc",))


def test_import_twice_changes_nothing_and_other_domains_are_skipped(tmp_path):
    entries = [
        Activity("alice@example.test", T, T + 8),
        Activity("bob@example.test", 0, T),
        Activity("room@conference.example.test", T, 0),
        Activity("carol@example.test", 0, 0, registered=T),
        Rejected("x.dat", "broken"),
    ]
    with Store(tmp_path / "activity.db") as store:
        first = import_activities(store, entries, ["example.test"], dry_run=False)
        second = import_activities(store, entries, ["example.test"], dry_run=False)
        assert store.heartbeat == 0  # an import says nothing about the bot being alive
    assert (first.imported, first.updated, first.unchanged) == (2, 0, 0)
    assert (second.imported, second.updated, second.unchanged) == (0, 0, 2)
    assert first.skipped == {
        "domain conference.example.test is not counted": 1,
        "no login or logout recorded (never active)": 1,
    }
    assert first.rejected == [Rejected("x.dat", "broken")]


def test_dry_run_writes_nothing(tmp_path):
    with Store(tmp_path / "activity.db") as store:
        report = import_activities(
            store, [Activity("alice@example.test", T, 0)], ["example.test"], dry_run=True
        )
        assert report.imported == 1
        assert list(store.users()) == []


# --- the command ---------------------------------------------------------------------------------


def test_import_command_reports_and_survives_bad_files(tmp_path):
    data = tmp_path / "prosody-data"
    write_user(data, "example.test", "alice", "lastlog2", lastlog2(T, T + 8, registered=T - 99))
    write_user(data, "example.test", "bob", "lastlog2", "return { broken")
    write_user(data, "other.test", "zed", "lastlog2", lastlog2(T))
    config = write(tmp_path, MINIMAL)

    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "bot", "import", "-c", str(config), "--from",
             "prosody-lastlog2", str(data), *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    dry = run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Users imported: 1, updated: 0, unchanged: 0 (dry run: nothing written)" in dry.stdout
    real = run()
    assert "Skipped 1 users: domain other.test is not counted" in real.stdout
    assert "bob.dat: not a Prosody data file" in real.stdout
    with Store(tmp_path / "data" / "activity.db", readonly=True) as store:
        assert store.get("alice@example.test") == UserRecord(T - 99, T, T + 8)
    again = run()
    assert "Users imported: 0, updated: 0, unchanged: 1" in again.stdout


def test_import_into_a_store_the_bot_holds_is_refused(tmp_path):
    data = tmp_path / "prosody-data"
    write_user(data, "example.test", "alice", "lastlog2", lastlog2(T))
    config = write(tmp_path, MINIMAL)
    with Store(tmp_path / "data" / "activity.db"):
        result = subprocess.run(
            [sys.executable, "-m", "bot", "import", "-c", str(config), "--from",
             "prosody-lastlog2", str(data)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert "already open for writing" in result.stderr
