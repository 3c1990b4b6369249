"""Reading ejabberd's history (mod_last) from its files: a Mnesia dump, an SQL export in each
database client's format, the list of sessions online; bad records reported, never fatal."""

from __future__ import annotations

import itertools
import mmap
import os
import subprocess
import sys

import pytest

from bot.__main__ import main
from bot.core.model import UserRecord
from bot.importing.ejabberd import read_mnesia_dump, read_online_list, read_sql_export
from bot.importing.importer import (
    MAX_RECORD,
    Activity,
    Ignored,
    Rejected,
    SourceError,
    import_activities,
)
from bot.storage.store import Store

from .support import MINIMAL, write

T = 1_795_850_306
NOW = T + 3600  # the import's clock
DAY = 86_400
REGISTERED = b"Registered but didn\\'t login"  # as ~p writes it in a dump


def dump(*records: bytes) -> bytes:
    header = (
        b"{tables,[{last_activity,[{record_name,last_activity},\n"
        b"                         {attributes,[us,timestamp,status]}]}]}.\n"
    )
    return header + b"".join(records)


def record(user: bytes, stamp: int | bytes, status: bytes = b"", host=b'<<"example.test">>'):
    stamp_text = stamp if isinstance(stamp, bytes) else str(stamp).encode()
    return (
        b"{last_activity,{" + user + b"," + host + b"},\n               "
        + stamp_text + b',<<"' + status + b'">>}.\n'
    )  # fmt: skip


def entries_of(path, **options):
    return list(read_mnesia_dump(path, now=NOW, **options))


# --- ejabberd-mnesia ----------------------------------------------------------------------------


def test_dump_records_are_last_logouts_and_registrations_are_no_activity(tmp_path):
    path = tmp_path / "last.dump"
    path.write_bytes(
        dump(
            record(b'<<"alice">>', T, b"Stream reset by peer"),
            record(b"<<197,130,117,107,97,115,122>>", T - 5, b"bye"),  # łukasz, as ~p writes it
            record(b'<<"zo\xc3\xab">>', T - 9),  # zoë: printable Latin-1 bytes, written raw
            record(b'<<"bob">>', T - 7, REGISTERED),
        )
    )
    assert entries_of(path) == [
        Activity("alice@example.test", last_logout=T),
        Activity("łukasz@example.test", last_logout=T - 5),
        Activity("zoë@example.test", last_logout=T - 9),
        Activity("bob@example.test", registered=T - 7),
    ]


def test_a_whole_dump_reads_only_last_activity_and_counts_the_rest(tmp_path):
    path = tmp_path / "all.dump"
    path.write_bytes(
        b"{tables,[{passwd,[{record_name,passwd},{attributes,[us,password]}]},\n"
        b"         {last_activity,[{record_name,last_activity},\n"
        b"                         {attributes,[us,timestamp,status]}]}]}.\n"
        b'{passwd,{<<"alice">>,<<"example.test">>},<<"secret">>}.\n'
        b'{passwd,{<<"bob">>,<<"example.test">>},<<"secret">>}.\n'
        + record(b'<<"alice">>', T)
    )  # fmt: skip
    assert entries_of(path) == [
        Ignored("of table passwd (only last_activity is read)"),
        Ignored("of table passwd (only last_activity is read)"),
        Activity("alice@example.test", last_logout=T),
    ]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{last_activity,{<<"m">>,<<"example.test">>},X,<<>>}.\n', "expected a term"),
        (b'{last_activity,{<<"m">>,<<"example.test">>},1.5e9,<<>>}.\n', "a float"),
        (b'{last_activity,{"m","example.test"},1,<<>>}.\n', "not a record {last_activity,"),
        (b'{last_activity,<<"m">>,1,<<>>}.\n', "not a record {last_activity,{User,Host}"),
        (b"[1,2].\n", "not a record: [1, 2]"),
        (b'{last_activity,{<<255>>,<<"example.test">>},1,<<>>}.\n', "not UTF-8"),
        (record(b'<<"m">>', T * 1000), f"m@example.test: timestamp {T * 1000} looks like milli"),
        (
            record(b'<<"m">>', NOW + 2 * DAY),
            f"m@example.test: timestamp {NOW + 2 * DAY} (2026-11-30 08:18 UTC) is in the fu",
        ),
        (record(b'<<"m">>', -1), "m@example.test: timestamp is negative (-1)"),
        (record(b'<<"">>', T), "not a user name and domain: '', 'example.test'"),
        (record(b'<<"m">>', T, host=b"<<>>"), "not a user name and domain: 'm', ''"),
        (b"{last_activity," + b"{" * 500 + b"\n", "nested too deeply (more than 100"),
    ],
)
def test_bad_dump_records_are_rejected_with_file_line_and_reason(tmp_path, bad, reason):
    path = tmp_path / "last.dump"
    path.write_bytes(dump(record(b'<<"alice">>', T), bad, record(b'<<"zoe">>', T + 1)))
    entries = entries_of(path)
    assert entries[0] == Activity("alice@example.test", last_logout=T)
    (rejected,) = [entry for entry in entries if isinstance(entry, Rejected)]
    assert rejected.where == f"{path}:5"
    assert reason in rejected.reason
    if "nested" not in reason:  # the deep term has no end: it runs to the next record's
        assert entries[-1] == Activity("zoe@example.test", last_logout=T + 1)


def test_a_dump_cut_short_keeps_what_came_before(tmp_path):
    path = tmp_path / "last.dump"
    whole = dump(record(b'<<"alice">>', T), record(b'<<"bob">>', T))
    path.write_bytes(whole[:-20])
    entries = entries_of(path)
    assert entries[0] == Activity("alice@example.test", last_logout=T)
    assert entries[1] == Rejected(
        f"{path}:5",
        "not a term of the kind a dump holds: "
        "the file ends inside the term that starts here (cut short?)",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\x83h\x03d\x00\x06schema", "is not a text dump of ejabberd's tables"),  # `backup`
        (b"username,seconds,state\n", "is not a text dump"),
    ],
)
def test_a_file_that_is_no_dump_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "last.dump"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as error:
        read_mnesia_dump(path)
    assert "ejabberdctl dump_table FILE last_activity" in str(error.value)
    with pytest.raises(SourceError, match="cannot read"):
        read_mnesia_dump(tmp_path / "missing.dump")


def test_progress_is_reported_in_bytes_up_to_the_whole_file(tmp_path):
    path = tmp_path / "last.dump"
    path.write_bytes(dump(*(record(b'<<"u%d">>' % n, T) for n in range(50))) + b"\n\n")
    steps: list[int] = []
    assert len(entries_of(path, progress=steps.append)) == 50
    assert len(steps) == 52  # the header, each record, the blank lines at the end
    assert sum(steps) == path.stat().st_size


# --- ejabberd-sql: the `last` table as each database's client exports it ------------------------

EXPORTS = {
    # psql -c "\copy last to STDOUT csv header": quotes only where needed, \n
    "psql-new-schema": (
        "username,server_host,seconds,state\n"
        'alice,example.test,1795850306,"Quote "" back \\ nl\n tab\t é"\n'
        "zoë\\back,example.test,1795850300,\n"
        "bob,example.test,1795850200,Registered but didn't login\n"
        'eve,other.test,1795850100,""\n'
    ),
    # sqlite3 -csv -header DB 'SELECT * FROM last' (old schema: no server_host); \r\n on Windows
    "sqlite3-old-schema": (
        "username,seconds,state\r\n"
        'alice,1795850306,"Quote "" back \\ nl\r\n tab\t é"\r\n'
        '"zoë\\back",1795850300,""\r\n'
        'bob,1795850200,"Registered but didn\'t login"\r\n'
    ),
    # mysql --batch -e 'SELECT * FROM last' DB: tabs, and \n \t \\ \0 escaped
    "mysql-batch-new-schema": (
        "username\tserver_host\tseconds\tstate\n"
        'alice\texample.test\t1795850306\tQuote " back \\\\ nl\\n tab\\t é\n'
        "zoë\\\\back\texample.test\t1795850300\t\n"
        "bob\texample.test\t1795850200\tRegistered but didn't login\n"
        "eve\tother.test\t1795850100\t\n"
    ),
}


@pytest.mark.parametrize("export", sorted(EXPORTS))
def test_sql_exports_of_each_client_read_the_same(tmp_path, export):
    path = tmp_path / "last.csv"
    path.write_bytes(EXPORTS[export].encode())
    host = "example.test" if "old-schema" in export else None
    entries = list(read_sql_export(path, host=host, now=NOW))
    expected = [
        Activity("alice@example.test", last_logout=T),
        Activity("zoë\\back@example.test", last_logout=T - 6),  # ejabberd allows a backslash
        Activity("bob@example.test", registered=T - 106),
    ]
    if "new-schema" in export:
        expected.append(Activity("eve@other.test", last_logout=T - 206))
    assert entries == expected


def test_an_old_schema_export_needs_the_domain(tmp_path):
    path = tmp_path / "last.csv"
    path.write_text("username,seconds,state\nalice,1795850306,\n")
    with pytest.raises(SourceError, match=r"no server_host column .* give the users' domain"):
        read_sql_export(path)


@pytest.mark.parametrize(
    "header",
    ["", "alice,1795850306,\n", "user,seconds\n", "\x00\x01garbage\n"],
)
def test_an_export_without_the_header_is_one_clear_error(tmp_path, header):
    path = tmp_path / "last.csv"
    path.write_text(header + "alice,1795850306,\n")
    with pytest.raises(SourceError, match="the first line should name the columns"):
        read_sql_export(path, host="example.test")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("mallory,soon,\n", "seconds is not a timestamp: 'soon'"),
        ("mallory,1.5,\n", "seconds is not a timestamp: '1.5'"),
        ("mallory," + "9" * 5000 + ",\n", "seconds is not a timestamp: '99999"),
        ("mallory,٣٣,\n", "seconds is not a timestamp"),  # digits, but not ASCII ones
        ("mallory,1795850306\n", "2 fields where the header names 3"),
        ("mallory,1795850306,a,b\n", "4 fields where the header names 3"),
        ('mallory,1795850306,"unclosed\n', "not a CSV row"),
        (f"mallory,{T * 1000},\n", f"mallory@example.test: timestamp {T * 1000} looks like"),
        (f"mallory,{NOW + 2 * DAY},\n", "is in the future"),
        (",1795850306,\n", "not a user name and domain: ''"),
    ],
)
def test_bad_sql_rows_are_rejected_with_line_and_reason(tmp_path, row, reason):
    path = tmp_path / "last.csv"
    path.write_text(f"username,seconds,state\nalice,{T},\n{row}zoe,{T},\n", encoding="utf-8")
    entries = list(read_sql_export(path, host="example.test", now=NOW))
    assert entries[0] == Activity("alice@example.test", last_logout=T)
    rejected = [entry for entry in entries if isinstance(entry, Rejected)]
    assert rejected[0].where == f"{path}:3"
    assert reason in rejected[0].reason
    if "unclosed" not in row:  # an unclosed quote runs to the end of the file
        assert entries[-1] == Activity("zoe@example.test", last_logout=T)


def test_bytes_that_are_not_utf8_reject_their_row_only(tmp_path):
    path = tmp_path / "last.csv"
    path.write_bytes(b"username,seconds,state\nm\xff,1795850306,\nzoe,1795850306,\n")
    entries = list(read_sql_export(path, host="example.test", now=NOW))
    assert entries == [
        Rejected(f"{path}:2", "not UTF-8"),
        Activity("zoe@example.test", last_logout=T),
    ]


# --- ejabberd-online ----------------------------------------------------------------------------


def test_users_online_are_logged_in_at_the_time_the_list_was_written(tmp_path):
    path = tmp_path / "online.txt"
    path.write_text(
        "alice@example.test/phone\nalice@example.test/laptop\n\nzoë@example.test/x/y\nnot a jid\n"
    )
    os.utime(path, (T, T))
    assert list(read_online_list(path, now=NOW)) == [
        Activity("alice@example.test", last_login=T),
        Activity("zoë@example.test", last_login=T),
        Rejected(f"{path}:5", "not a full JID (user@host/resource): 'not a jid'"),
    ]


def test_a_list_from_the_future_is_refused(tmp_path):
    path = tmp_path / "online.txt"
    path.write_text("alice@example.test/phone\nbob@example.test/pc\n")
    os.utime(path, (NOW + 3 * DAY, NOW + 3 * DAY))
    (rejected,) = read_online_list(path, now=NOW)
    assert rejected.where == str(path)
    assert "file time" in rejected.reason
    assert "is in the future" in rejected.reason


# --- the guarantees of every import, through the command --------------------------------------


def run_import(tmp_path, *args):
    config = write(tmp_path, MINIMAL)
    return subprocess.run(
        [sys.executable, "-m", "bot", "import", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_command_dry_run_twice_other_domains_and_bad_records(tmp_path):
    path = tmp_path / "last.dump"
    path.write_bytes(
        dump(
            record(b'<<"alice">>', T, b"Stream reset by peer"),
            record(b'<<"bob">>', T, REGISTERED),
            record(b'<<"eve">>', T, host=b'<<"other.test">>'),
            b"{last_activity, broken}.\n",
            b'{roster,{<<"alice">>,<<"example.test">>}}.\n',
        )
    )
    dry = run_import(tmp_path, "--from", "ejabberd-mnesia", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Users imported: 1, updated: 0, unchanged: 0 (dry run: nothing written)" in dry.stdout
    assert not (tmp_path / "data" / "activity.db").exists() or not list(
        Store(tmp_path / "data" / "activity.db", readonly=True).users()
    )
    real = run_import(tmp_path, "--from", "ejabberd-mnesia", str(path))
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines() == [
        "Users imported: 1, updated: 0, unchanged: 0 (saved)",
        "Skipped 1 users: domain other.test is not counted",
        "Skipped 1 users: no login or logout recorded (never active)",
        "Ignored 1 records: of table roster (only last_activity is read)",
        "1 entries were rejected:",
        f"  {path}:9: not a record {{last_activity,{{User,Host}},Timestamp,Status}}: "
        "(Atom('last_activity'), Atom('broken'))",
    ]
    with Store(tmp_path / "data" / "activity.db", readonly=True) as store:
        assert dict(store.users()) == {"alice@example.test": UserRecord(T, 0, T)}
    again = run_import(tmp_path, "--from", "ejabberd-mnesia", str(path))
    assert "Users imported: 0, updated: 0, unchanged: 1 (saved)" in again.stdout


def test_newest_timestamp_wins_across_sources(tmp_path):
    dump_path = tmp_path / "last.dump"
    dump_path.write_bytes(dump(record(b'<<"alice">>', T - 100), record(b'<<"bob">>', T)))
    online = tmp_path / "online.txt"
    online.write_text("alice@example.test/phone\n")
    os.utime(online, (T, T))
    with Store(tmp_path / "activity.db") as store:
        store.put("bob@example.test", UserRecord(T - 500, T + 10, T - 50))
        for entries in (
            read_mnesia_dump(dump_path, now=NOW),
            read_online_list(online, now=NOW),
            read_mnesia_dump(dump_path, now=NOW),  # again: nothing changes
        ):
            import_activities(store, entries, ["example.test"], dry_run=False)
        assert dict(store.users()) == {
            "alice@example.test": UserRecord(T - 100, T, T - 100),
            "bob@example.test": UserRecord(T - 500, T + 10, T),
        }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "ejabberd-mnesia", "missing.dump"], "cannot read missing.dump"),
        (["--from", "ejabberd-sql", "last.csv"], "no server_host column"),
        (["--from", "ejabberd-mnesia", "last.csv"], "is not a text dump"),
        (["--from", "ejabberd-mnesia", "last.csv", "--host", "x"], "--host is only for"),
        (["--from", "prosody-lastlog", "."], "no prosody-lastlog data files under ."),
    ],
)
def test_a_source_that_cannot_be_read_stops_with_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys, args, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "last.csv").write_text("username,seconds,state\nalice,1795850306,\n")
    config = write(tmp_path, MINIMAL)
    assert main(["import", "-c", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xmpp-active-users: ")
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "data" / "activity.db").exists()


# --- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tabs", [False, True], ids=["csv", "mysql --batch"])
def test_a_line_over_the_record_bound_is_rejected_and_the_next_read(tmp_path, tabs):
    separator = "\t" if tabs else ","
    path = tmp_path / "last.csv"
    rows = [
        ["username", "server_host", "seconds", "state"],
        ["alice", "example.test", str(T), ""],
        ["x" * (MAX_RECORD + 10), "example.test", str(T), ""],
        ["bob", "example.test", str(T), ""],
    ]
    path.write_text("".join(separator.join(row) + "\n" for row in rows))
    entries = list(read_sql_export(path, now=NOW))
    assert entries == [
        Activity("alice@example.test", last_logout=T),
        Rejected(f"{path}:3", entries[1].reason),
        Activity("bob@example.test", last_logout=T),
    ]
    assert f"a line of more than {MAX_RECORD} bytes" in entries[1].reason


def test_a_csv_row_spread_over_lines_is_bounded_too(tmp_path):
    path = tmp_path / "last.csv"
    endless = ",".join(['"x\n"'] * (MAX_RECORD // 4))  # many quoted fields, short lines
    path.write_text(f"username,server_host,seconds,state\n{endless},example.test,{T},\n")
    (rejected, *_) = read_sql_export(path, now=NOW)
    assert rejected.where == f"{path}:2"
    assert f"a row of more than {MAX_RECORD} bytes over several lines" in rejected.reason


def test_the_online_list_is_read_in_lines_of_bounded_length(tmp_path):
    path = tmp_path / "online.txt"
    path.write_text("x" * (MAX_RECORD + 1) + "@example.test/pc\nbob@example.test/pc\n")
    os.utime(path, (T, T))
    rejected, bob = read_online_list(path, now=NOW)
    assert rejected.where == f"{path}:1"
    assert bob == Activity("bob@example.test", last_login=T)


def test_a_dump_gives_back_the_memory_of_what_it_has_parsed(tmp_path, monkeypatch):
    """The mapped pages already parsed are released as it goes (madvise), so a dump of any
    size costs a bounded RSS."""
    monkeypatch.setattr("bot.importing.ejabberd._RELEASE_EVERY", 4096)
    released = []
    real_mmap = mmap.mmap

    class Watched(real_mmap):
        def madvise(self, option, start=0, length=0):
            released.append((start, length))
            return super().madvise(option, start, length)

    monkeypatch.setattr("bot.importing.ejabberd.mmap.mmap", Watched)
    path = tmp_path / "last.dump"
    path.write_bytes(dump(*(record(b'<<"u%d">>' % n, T) for n in range(1000))))
    entries = list(read_mnesia_dump(path, now=NOW))
    assert len(entries) == 1000
    assert released[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(released))
    assert sum(n for _, n in released) > path.stat().st_size - 8192
