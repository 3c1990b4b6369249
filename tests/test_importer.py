"""Importing Prosody's history: every source, the merge rule, and bad files reported, not fatal."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
import tracemalloc

import pytest

from bot.__main__ import main
from bot.core.model import UserRecord
from bot.importing.importer import (
    MAX_DATA_FILE,
    Activity,
    Ignored,
    ImportReport,
    Rejected,
    SourceError,
    checked_timestamp,
    import_activities,
    merge,
)
from bot.importing.luadata import LuaDataError, parse_lua_data
from bot.importing.prosody import data_files, read_data_file
from bot.importing.prosody_sql import read_sql
from bot.importing.sources import open_source
from bot.storage.store import Store

from .support import MINIMAL, write

T = 1_795_850_306
NOW = T + 3600  # the import's clock in the tests that set it
DAY = 86_400
DEEP = "return " + "{" * 100_000 + "}" * 100_000  # a RecursionError for a naive parser


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


def test_non_finite_numbers_as_prosody_serializer_writes_them():
    # util/serialization.lua: types.number() writes "(1/0)", "(-1/0)" and "(0/0)"
    value = parse_lua_data("return { (1/0); (-1/0); (0/0) };")
    assert value[1] == math.inf
    assert value[2] == -math.inf
    assert math.isnan(value[3])


@pytest.mark.parametrize("text", ["return (2/0)", "return ( 1/0 )", "return (1/0.0)", "return 1/0"])
def test_other_divisions_are_still_refused(text):
    with pytest.raises(LuaDataError):
        parse_lua_data(text)


def test_deep_nesting_is_an_error_not_a_recursion_error():
    with pytest.raises(LuaDataError, match="nested too deeply"):
        parse_lua_data(DEEP)
    with pytest.raises(LuaDataError, match="nested too deeply"):
        parse_lua_data("return " + "{[" * 50_000 + "1" + "]=1}" * 50_000)  # tables as keys
    assert parse_lua_data("return " + "{" * 100 + "}" * 100) is not None  # the limit: 100


def test_an_integer_too_long_for_python_is_a_float_as_in_lua():
    assert parse_lua_data("return " + "9" * 5000) == math.inf  # not Python's ValueError


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
        tmp_path, "example.test", "bob", "account_activity", f'return {{ ["timestamp"] = {T}; }};'
    )
    ((file, jid),) = data_files("prosody-account-activity", tmp_path)
    assert read_data_file("prosody-account-activity", file, jid) == Activity(jid, 0, T)


def test_lastlog_keeps_the_last_event_only(tmp_path):
    # What mod_lastlog writes (prosody-modules 2023): { event = ...; timestamp = ...; ip = ... }
    files = {
        "alice": f'return {{\n\t["timestamp"] = {T + 5};\n\t["event"] = "logout";\n}};\n',
        "bob": f'return {{ ["event"] = "login"; ["timestamp"] = {T + 7}; ["ip"] = "192.0.2.1"; }};',
        "carol": f'return {{ ["event"] = "registered"; ["timestamp"] = {T + 9}; }};',
        "dave": f'return {{ ["timestamp"] = {T + 11}; }};',  # its first versions: logins only
    }
    for user, text in files.items():
        write_user(tmp_path, "example.test", user, "lastlog", text)
    found = data_files("prosody-lastlog", tmp_path)
    assert [read_data_file("prosody-lastlog", file, jid) for file, jid in found] == [
        Activity("alice@example.test", last_logout=T + 5),
        Activity("bob@example.test", last_login=T + 7),
        Activity("carol@example.test", registered=T + 9),
        Activity("dave@example.test", last_login=T + 11),
    ]


def test_a_rooms_last_message_is_ignored_not_rejected(tmp_path):
    # mod_lastlog enabled on a MUC component records each room's last message
    text = 'return { ["event"] = "message"; ["timestamp"] = 5; };'
    write_user(tmp_path, "conference.example.test", "room", "lastlog", text)
    ((file, jid),) = data_files("prosody-lastlog", tmp_path)
    assert isinstance(read_data_file("prosody-lastlog", file, jid), Ignored)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('return { ["event"] = "kicked"; ["timestamp"] = 5; };', "unknown event 'kicked'"),
        ('return { ["event"] = "logout"; };', "no timestamp"),
        ('return { ["event"] = "login"; ["timestamp"] = (1/0); };', "not a finite number (inf)"),
        (f'return {{ ["event"] = "login"; ["timestamp"] = {T * 1000}; }};', "looks like milli"),
        ('return { ["event"] = "login"; ["timestamp"] = "5"; };', "timestamp is not a number"),
        ("return 5", "expected a table, found int"),
    ],
)
def test_bad_lastlog_records_are_rejected_with_the_reason(tmp_path, text, reason):
    write_user(tmp_path, "example.test", "mallory", "lastlog", text)
    ((file, jid),) = data_files("prosody-lastlog", tmp_path)
    rejected = read_data_file("prosody-lastlog", file, jid, now=NOW)
    assert isinstance(rejected, Rejected)
    assert reason in rejected.reason
    assert rejected.where.endswith("lastlog/mallory.dat")


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


def import_files(tmp_path, source, data_dir, now) -> tuple[ImportReport, dict[str, UserRecord]]:
    """Import every file of `data_dir` with the clock at `now`: the report and what was stored."""
    files = data_files(source, data_dir)
    with Store(tmp_path / "activity.db") as store:
        entries = (read_data_file(source, file, jid, now=now) for file, jid in files)
        report = import_activities(store, entries, ["example.test"], dry_run=False)
        return report, dict(store.users())


# What Prosody's util/serialization.lua writes for inf, -inf and NaN: "(1/0)", "(-1/0)", "(0/0)".
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(
            lastlog2(T, "(1/0)"), "logout timestamp is not a finite number (inf)", id="inf"
        ),
        pytest.param(
            lastlog2("(0/0)", T), "login timestamp is not a finite number (nan)", id="nan"
        ),
        pytest.param(
            lastlog2(T, registered="(-1/0)"),
            "registered timestamp is not a finite number (-inf)",
            id="-inf",
        ),
        pytest.param(
            lastlog2("9" * 400), "login timestamp is not a finite number (inf)", id="1e400"
        ),
        pytest.param(
            lastlog2("0x" + "f" * 5000),
            "login timestamp is far too large for a timestamp (of 20000 bits)",
            id="huge-hex",
        ),
        pytest.param(
            lastlog2(T * 10**6),
            f"login timestamp is far too large for a timestamp ({T * 10**6})",
            id="microseconds",
        ),
        pytest.param(lastlog2(T, -5), "logout timestamp is negative (-5)", id="negative"),
        pytest.param(
            lastlog2(T * 1000),
            f"login timestamp {T * 1000} looks like milliseconds",
            id="milliseconds",
        ),
        pytest.param(
            lastlog2(NOW + 2 * DAY),
            f"login timestamp {NOW + 2 * DAY} (2026-11-30 08:18 UTC) is in the future",
            id="2-days-ahead",
        ),
        pytest.param(
            lastlog2(T, 64_060_588_800),
            "logout timestamp 64060588800 (4000-01-01 00:00 UTC) is in the future",
            id="year-4000",
        ),
        pytest.param(DEEP, "nested too deeply", id="deep"),
    ],
)
def test_bad_lastlog2_records_are_reported_and_the_rest_imported(tmp_path, text, reason):
    data = tmp_path / "prosody-data"
    write_user(data, "example.test", "alice", "lastlog2", lastlog2(T, T + 8))
    write_user(data, "example.test", "mallory", "lastlog2", text)
    write_user(data, "example.test", "zoe", "lastlog2", lastlog2(T + 1))
    report, stored = import_files(tmp_path, "prosody-lastlog2", data, NOW)
    assert stored == {
        "alice@example.test": UserRecord(T, T, T + 8),
        "zoe@example.test": UserRecord(T + 1, T + 1, 0),
    }
    assert report.imported == 2
    (rejected,) = report.rejected
    assert rejected.where.endswith("mallory.dat")
    assert reason in rejected.reason
    assert f"mallory.dat: {rejected.reason}" in report.summary(dry_run=False)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("(1/0)", "timestamp is not a finite number (inf)"),
        (str(T * 1000), "looks like milliseconds"),
        (str(NOW + DAY + 1), "is in the future"),
    ],
)
def test_bad_account_activity_records_are_reported(tmp_path, value, reason):
    data = tmp_path / "prosody-data"
    for user, stamp in (("alice", str(T)), ("mallory", value)):
        text = f'return {{ ["timestamp"] = {stamp}; }};'
        write_user(data, "example.test", user, "account_activity", text)
    report, stored = import_files(tmp_path, "prosody-account-activity", data, NOW)
    assert list(stored) == ["alice@example.test"]
    (rejected,) = report.rejected
    assert rejected.where.endswith("mallory.dat")
    assert rejected.reason.startswith("timestamp ")
    assert reason in rejected.reason


def test_clock_skew_up_to_a_day_is_tolerated(tmp_path):
    data = tmp_path / "prosody-data"
    write_user(data, "example.test", "alice", "lastlog2", lastlog2(NOW + DAY))
    ((file, jid),) = data_files("prosody-lastlog2", data)
    assert read_data_file("prosody-lastlog2", file, jid, now=NOW) == Activity(jid, NOW + DAY)


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
            ("example.test", "alice", "lastlog2", "logout", "json", f'{{"timestamp":{T + 7}}}'),
            ("example.test", "bob", "account_activity", "timestamp", "number", str(T + 9)),
            ("example.test", "eve", "lastlog2", "login", "xml", "<x/>"),
            ("example.test", "carol", "roster", "x", "json", "{}"),  # another store: not read
        ],
    )
    entries = list(read_sql(path))
    assert Activity("alice@example.test", T, T + 7) in entries
    assert Activity("bob@example.test", 0, T + 9) in entries
    assert [e.where for e in entries if isinstance(e, Rejected)] == [
        f"{path}: eve@example.test store lastlog2 key login",
    ]


@pytest.mark.parametrize(
    ("store", "key", "kind", "value", "reason"),
    [
        # mod_storage_sql stores a number as Lua's tostring(): "inf", "-inf", "-nan" or "nan"
        ("account_activity", "timestamp", "number", "inf", "not a finite number (inf)"),
        ("account_activity", "timestamp", "number", "-inf", "not a finite number (-inf)"),
        ("account_activity", "timestamp", "number", "-nan", "not a finite number (nan)"),
        ("account_activity", "timestamp", "number", "nan", "not a finite number (nan)"),
        ("account_activity", "timestamp", "number", "1e999", "not a finite number (inf)"),
        ("account_activity", "timestamp", "number", "soon", "not a number"),
        ("account_activity", "timestamp", "number", None, "value is NULL"),
        ("account_activity", "timestamp", "number", b"inf", "not a finite number (inf)"),
        ("account_activity", "timestamp", "number", str(T * 1000), "looks like milliseconds"),
        ("account_activity", "timestamp", "number", str(NOW + 3 * DAY), "is in the future"),
        # and a table as JSON (util.json writes inf as `inf`: not JSON; Python's json reads
        # NaN, Infinity and 1e999 as non-finite floats)
        ("lastlog2", "login", "json", '{"timestamp":inf}', "not valid JSON"),
        ("lastlog2", "login", "json", '{"timestamp":NaN}', "not a finite number (nan)"),
        ("lastlog2", "login", "json", '{"timestamp":1e999}', "not a finite number (inf)"),
        ("lastlog2", "login", "json", '{"timestamp":-Infinity}', "not a finite number (-inf)"),
        ("lastlog2", "login", "json", "[" * 100_000, "nested too deeply"),
        ("lastlog2", "logout", "json", json.dumps({"timestamp": T * 1000}), "milliseconds"),
        ("lastlog2", "logout", "json", '{"timestamp":' + "9" * 5000 + "}", "not valid JSON"),
        ("lastlog2", "logout", "json", '{"timestamp":' + "9" * 400 + "}", "bits)"),
        ("lastlog2", "logout", "json", '{"timestamp":-' + "9" * 400 + "}", "negative (of 1329"),
        ("lastlog2", "login", "json", json.dumps({"timestamp": NOW + 2 * DAY}), "in the future"),
    ],
)
def test_bad_sql_rows_are_reported_and_the_rest_imported(tmp_path, store, key, kind, value, reason):
    path = tmp_path / "prosody.sqlite"
    prosody_sql(
        path,
        [
            ("example.test", "alice", "lastlog2", "login", "json", json.dumps({"timestamp": T})),
            ("example.test", "mallory", store, key, kind, value),
            ("example.test", "zoe", "account_activity", "timestamp", "number", str(T + 1)),
        ],
    )
    with Store(tmp_path / "activity.db") as db:
        report = import_activities(db, read_sql(path, now=NOW), ["example.test"], dry_run=False)
        assert db.get("alice@example.test") == UserRecord(T, T, 0)
        assert db.get("zoe@example.test") == UserRecord(T + 1, 0, T + 1)
    assert report.imported == 2
    ((where, why),) = [(entry.where, entry.reason) for entry in report.rejected]
    assert "mallory@example.test" in where
    assert reason in why


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


def test_excluded_users_are_neither_imported_nor_stored(tmp_path):
    entries = [
        Activity("alice@example.test", T, 0),
        Activity("monitor@example.test", T, 0),
        Activity("robot-1@example.test", T, 0),
    ]
    with Store(tmp_path / "activity.db") as store:
        report = import_activities(
            store,
            entries,
            ["example.test"],
            dry_run=False,
            exclude=["monitor@example.test", "robot-*@example.test"],
        )
        assert [jid for jid, _ in store.users()] == ["alice@example.test"]
    assert report.imported == 1
    assert report.skipped == {"excluded by [counting] exclude": 2}


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


def test_import_command_rejects_bad_timestamps_and_imports_the_rest(tmp_path, capsys):
    data = tmp_path / "prosody-data"
    year_4000 = 64_060_588_800
    for user, text in {
        "alice": lastlog2(T, T + 8),
        "bob": lastlog2("(1/0)"),
        "carol": lastlog2(T * 1000),
        "dave": lastlog2(T, year_4000),
        "eve": DEEP,
        "frank": lastlog2(T, "(0/0)"),
    }.items():
        write_user(data, "example.test", user, "lastlog2", text)
    config = write(tmp_path, MINIMAL)
    args = ["import", "-c", str(config), "--from", "prosody-lastlog2", str(data)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Users imported: 1, updated: 0, unchanged: 0 (saved)" in out
    assert "5 entries were rejected:" in out
    assert "bob.dat: login timestamp is not a finite number (inf)" in out
    assert f"carol.dat: login timestamp {T * 1000} looks like milliseconds" in out
    assert f"dave.dat: logout timestamp {year_4000} (4000-01-01 00:00 UTC) is in the future" in out
    assert "eve.dat: not a Prosody data file (line 1: nested too deeply" in out
    assert "frank.dat: logout timestamp is not a finite number (nan)" in out
    with Store(tmp_path / "data" / "activity.db", readonly=True) as store:
        assert [jid for jid, _ in store.users()] == ["alice@example.test"]


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


# --- bounds: resources, names, sizes, time ---------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (MemoryError(), "out of memory"),
        (OSError(28, "No space left on device"), "No space left on device"),
        (OSError(24, "Too many open files"), "Too many open files"),
    ],
    ids=["MemoryError", "ENOSPC", "EMFILE"],
)
def test_a_resource_error_during_an_import_is_one_line(tmp_path, capsys, monkeypatch, fault, said):
    write_user(tmp_path / "data", "example.test", "alice", "lastlog2", lastlog2(T))
    config = write(tmp_path, MINIMAL)

    def fail(*args, **kwargs):
        raise fault

    monkeypatch.setattr("bot.importing.importer.import_activities", fail)
    code = main(["import", "-c", str(config), "--from", "prosody-lastlog2", str(tmp_path / "data")])
    assert code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert said in err
    assert "the import stopped" in err


@pytest.mark.parametrize(
    ("jid", "reason"),
    [
        ("a@b/c@example.test", "not a valid JID"),
        ("  spaces  @example.test", "not a valid JID"),
        ("@example.test", "not a valid JID"),
        ("alice@exa mple.test", "not a valid JID"),
        ("x" * 1024 + "@example.test", "a user name of 1024 bytes (at most 1023)"),
        ("é" * 512 + "@example.test", "a user name of 1024 bytes"),  # bytes, not characters
        ("alice@" + "d" * 1024, "a domain of 1024 bytes"),
    ],
)
def test_names_that_are_no_jid_are_rejected_with_their_place(tmp_path, jid, reason):
    entries = [Activity(jid, T, 0, where="f.dat:3"), Activity("bob@example.test", T, 0)]
    with Store(tmp_path / "activity.db") as store:
        report = import_activities(store, entries, ["example.test"], dry_run=False)
        assert [key for key, _ in store.users()] == ["bob@example.test"]
    (rejected,) = report.rejected
    assert rejected.where == "f.dat:3"
    assert reason in rejected.reason


def test_names_are_stored_as_slixmpp_normalizes_them(tmp_path):
    """The bot keys users by the JIDs slixmpp gives it: an import must use the same key."""
    long_name = "x" * 1023  # the longest a user name may be
    entries = [Activity("Alice@Example.TEST", T, 0), Activity(f"{long_name}@example.test", T, 0)]
    with Store(tmp_path / "activity.db") as store:
        report = import_activities(store, entries, ["example.test"], dry_run=False)
        assert sorted(key for key, _ in store.users()) == [
            "alice@example.test",
            f"{long_name}@example.test",
        ]
    assert report.imported == 2


def test_the_report_lists_100_rejections_and_counts_them_all(tmp_path):
    entries = [Rejected(f"f{n}.dat", "broken") for n in range(10_000)]
    with Store(tmp_path / "activity.db") as store:
        report = import_activities(store, entries, ["example.test"], dry_run=True)
    summary = report.summary(dry_run=True)
    assert "10000 entries would be rejected:" in summary
    assert "  ... and 9900 more" in summary
    assert len(summary.splitlines()) < 110


def test_skipped_domains_are_listed_up_to_a_bound(tmp_path):
    entries = [Activity(f"u@d{n}.test", T, 0) for n in range(1000)]
    with Store(tmp_path / "activity.db") as store:
        report = import_activities(store, entries, ["example.test"], dry_run=True)
    assert len(report.skipped) <= 101
    assert sum(report.skipped.values()) == 1000


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        (-1, "is negative"),
        (0.5, "before 2000"),
        (946_684_799, "before 2000"),
        (10**400, "far too large"),
    ],
)
def test_times_before_2000_or_absurd_are_rejected(stamp, reason):
    with pytest.raises(ValueError, match=reason):
        checked_timestamp(stamp, NOW)
    assert checked_timestamp(946_684_800, NOW) == 946_684_800


def test_lua_string_escapes_cost_linear_time():
    """20k, then 320k escapes: 16 times the text costs about 16 times (it was O(n**2): over
    100 times; the bound leaves room for a busy machine)."""

    def seconds(n: int) -> float:
        text = 'return "' + "\\110" * n + '"'
        started = time.perf_counter()
        assert parse_lua_data(text) == "n" * n
        return time.perf_counter() - started

    small = min(seconds(20_000) for _ in range(3))
    large = seconds(320_000)
    if large > 50 * small:  # once more, in case the machine was busy
        large = min(large, seconds(320_000))
    assert large < 50 * small + 0.05, (small, large)


def test_the_lua_parser_reads_tokens_as_it_goes():
    """A file's tokens are never all held at once: an error early in a huge text is found
    without tokenizing the rest."""
    text = "return { [1] = nosuchname; " + "[2] = 2; " * 2_000_000 + "}"
    started = time.perf_counter()
    with pytest.raises(LuaDataError, match="expected a literal value"):
        parse_lua_data(text)
    assert time.perf_counter() - started < 0.1


def test_a_prosody_file_over_the_size_limit_is_rejected_unparsed(tmp_path):
    write_user(tmp_path, "example.test", "alice", "lastlog2", lastlog2(T) + " " * MAX_DATA_FILE)
    ((file, jid),) = data_files("prosody-lastlog2", tmp_path)
    rejected = read_data_file("prosody-lastlog2", file, jid)
    assert isinstance(rejected, Rejected)
    assert "larger than 1 MiB" in rejected.reason


def test_a_fifo_among_prosodys_files_is_refused_before_anything_is_read(tmp_path):
    write_user(tmp_path, "example.test", "alice", "lastlog2", lastlog2(T))
    os.mkfifo(tmp_path / "example%2etest" / "lastlog2" / "bob.dat")
    with pytest.raises(SourceError, match=r"bob\.dat is not a regular file \(a FIFO\)"):
        data_files("prosody-lastlog2", tmp_path)


def test_prosodys_files_are_streamed_not_listed(tmp_path):
    """An import of a data dir holds no list of its files (a million paths: hundreds of MB)."""
    folder = tmp_path / "example%2etest" / "lastlog2"
    folder.mkdir(parents=True)
    text = lastlog2(T)
    for n in range(20_000):
        (folder / f"user{n}.dat").write_text(text)
    tracemalloc.start()
    try:
        opened = open_source("prosody-lastlog2", tmp_path, now=NOW)
        read = sum(1 for _ in opened.read(lambda _: None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (opened.total, read) == (20_000, 20_000)
    assert peak < 2_000_000, peak  # a list of the paths alone: about 9 MB
