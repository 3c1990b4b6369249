"""`import` on hostile or careless input, through the real command: a FIFO with no writer, a
device, a directory, huge files and records, bad user names, absurd times. Each ends within
seconds, under the memory bound the README states (200 MB RSS), with one line or a report.

The child's peak RSS is its own high-water mark (VmHWM in /proc/PID/status, read as it runs: the
rusage of a forked child also counts the pytest process it was forked from), and its address
space is capped at 1 GiB so that a regression fails here instead of eating the machine.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.storage.store import Store

from .support import MINIMAL, write

T = 1_795_850_306  # a plausible time, before the tests' clock
MEMORY_BOUND_MB = 200  # README, "Start with the history your server already has"
ADDRESS_SPACE = 1 << 30  # the child's cap: far above the bound, far below the machine


@dataclass
class Ran:
    code: int
    out: str
    err: str
    seconds: float
    peak_mb: float


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _high_water_kb(pid: int) -> int:
    """The process's peak RSS so far (0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0  # a zombie: its memory is gone


def run_import(config: Path, source: str, path: Path, *extra: str, timeout: float = 20) -> Ran:
    """The command as an admin runs it; its time and its own peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", "bot", "import", "-c", str(config), "--from", source,
             str(path), *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=_cap_memory,
        )  # fmt: skip
        peak_kb = 0
        while True:
            peak_kb = max(peak_kb, _high_water_kb(child.pid))
            pid, status, _ = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - began > timeout:
                child.kill()
                child.wait()
                pytest.fail(f"import --from {source} {path} still running after {timeout} s")
            time.sleep(0.01)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - began
        out.seek(0)
        err.seek(0)
        ran = Ran(
            child.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            peak_kb / 1024,
        )
    print(f"\n{source} {path.name}: exit {ran.code}, {ran.seconds:.2f} s, {ran.peak_mb:.0f} MB")
    assert ran.peak_mb < MEMORY_BOUND_MB, ran
    return ran


@pytest.fixture
def config(tmp_path):
    return write(tmp_path, MINIMAL)


def store_path(config: Path) -> Path:
    return config.parent / "data" / "activity.db"


def assert_refused_in_one_line(ran: Ran, config: Path, *words: str) -> None:
    """Exit 2, one line naming the problem, no traceback, nothing written."""
    assert ran.code == 2, ran
    assert ran.out == "", ran
    assert len(ran.err.strip().splitlines()) == 1, ran
    assert ran.err.startswith("xmpp-active-users: "), ran
    for word in words:
        assert word in ran.err, ran
    assert not store_path(config).exists()


def user_dir(tmp_path: Path, store: str = "lastlog2") -> Path:
    folder = tmp_path / "prosody" / "example%2etest" / store
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lastlog2_text(login: int | str) -> str:
    return f'return {{ ["login"] = {{ ["timestamp"] = {login}; }}; }};\n'


def imported(config: Path) -> dict[str, object]:
    with Store(store_path(config), readonly=True) as store:
        return {key: record for key, record in store.users()}


# --- not a regular file --------------------------------------------------------------------------

FILE_SOURCES = ("ejabberd-mnesia", "ejabberd-sql", "ejabberd-online", "prosody-sql")


@pytest.mark.parametrize("source", FILE_SOURCES)
def test_a_fifo_without_a_writer_is_refused_at_once(config, tmp_path, source):
    fifo = tmp_path / "last.fifo"
    os.mkfifo(fifo)
    ran = run_import(config, source, fifo, timeout=10)
    assert_refused_in_one_line(ran, config, str(fifo), "not a regular file")
    assert ran.seconds < 5


def test_a_fifo_among_prosodys_files_is_refused_at_once(config, tmp_path):
    folder = user_dir(tmp_path)
    (folder / "bob.dat").write_text(lastlog2_text(T))
    os.mkfifo(folder / "alice.dat")
    ran = run_import(config, "prosody-lastlog2", tmp_path / "prosody", timeout=10)
    assert_refused_in_one_line(ran, config, "alice.dat", "not a regular file")
    assert ran.seconds < 5


@pytest.mark.parametrize("source", ["ejabberd-sql", "ejabberd-mnesia", "prosody-sql"])
def test_dev_zero_as_a_file_is_refused_at_once(config, source):
    ran = run_import(config, source, Path("/dev/zero"), timeout=10)
    assert_refused_in_one_line(ran, config, "/dev/zero", "not a regular file")
    assert ran.seconds < 5


def test_dev_zero_as_a_prosody_data_file_is_refused_at_once(config, tmp_path):
    folder = user_dir(tmp_path)
    (folder / "alice.dat").symlink_to("/dev/zero")
    ran = run_import(config, "prosody-lastlog2", tmp_path / "prosody", timeout=10)
    assert_refused_in_one_line(ran, config, "alice.dat", "not a regular file")
    assert ran.seconds < 5


def test_a_directory_as_a_file_is_refused(config, tmp_path):
    ran = run_import(config, "ejabberd-sql", tmp_path, timeout=10)
    assert_refused_in_one_line(ran, config, str(tmp_path), "not a regular file")


# --- too large -----------------------------------------------------------------------------------


def test_a_prosody_file_with_a_100_mb_string_is_rejected_and_the_rest_imported(config, tmp_path):
    folder = user_dir(tmp_path)
    (folder / "bob.dat").write_text(lastlog2_text(T))
    with (folder / "alice.dat").open("w") as file:
        file.write('return { ["login"] = { ["timestamp"] = 1795850306; ["ip"] = "')
        file.write("x" * 100_000_000)
        file.write('"; }; };\n')
    ran = run_import(config, "prosody-lastlog2", tmp_path / "prosody")
    (folder / "alice.dat").unlink()  # pytest keeps the last runs' folders: not 100 MB of them
    assert ran.code == 0, ran
    assert "alice.dat: larger than" in ran.out, ran.out
    assert list(imported(config)) == ["bob@example.test"]
    assert ran.seconds < 5


def test_a_prosody_file_with_2_million_keys_is_rejected_and_the_rest_imported(config, tmp_path):
    folder = user_dir(tmp_path)
    (folder / "bob.dat").write_text(lastlog2_text(T))
    (folder / "alice.dat").write_text(
        'return { ["login"] = { ["timestamp"] = 1795850306; }; '
        + "".join(f"[{n}]=1;" for n in range(2_000_000))
        + " };\n"
    )
    assert (folder / "alice.dat").stat().st_size > 20_000_000
    ran = run_import(config, "prosody-lastlog2", tmp_path / "prosody")
    assert ran.code == 0, ran
    assert "alice.dat: larger than" in ran.out, ran.out
    assert list(imported(config)) == ["bob@example.test"]
    assert ran.seconds < 5


SQL_HEADER = "username,server_host,seconds,state\n"


def test_a_prosody_database_with_a_120_mb_value_rejects_that_row_unread(config, tmp_path):
    path = tmp_path / "prosody.sqlite"
    db = sqlite3.connect(path)
    db.execute('CREATE TABLE "prosody" (host, user, store, key, type, value)')
    for user, value in (("alice", "x" * 120_000_000), ("bob", f'{{"timestamp": {T}}}')):
        db.execute(
            'INSERT INTO "prosody" VALUES (?, ?, ?, ?, ?, ?)',
            ("example.test", user, "lastlog2", "login", "json", value),
        )
    db.commit()
    db.close()
    ran = run_import(config, "prosody-sql", path)
    path.unlink()
    assert ran.code == 0, ran
    assert "alice@example.test store lastlog2 row 1: a value of 120000000 bytes" in ran.out
    assert list(imported(config)) == ["bob@example.test"]
    assert ran.seconds < 5


def test_an_sql_export_with_a_10_mb_user_name_rejects_that_row(config, tmp_path):
    path = tmp_path / "last.csv"
    path.write_text(
        SQL_HEADER + f"alice,example.test,{T},\n" + "x" * 10_000_000 + f",example.test,{T},\n"
        f"bob,example.test,{T},\n"
    )
    ran = run_import(config, "ejabberd-sql", path)
    assert ran.code == 0, ran
    assert f"{path}:3: a line of more than" in ran.out, ran.out
    assert sorted(imported(config)) == ["alice@example.test", "bob@example.test"]
    assert ran.seconds < 5


def test_an_sql_export_of_one_endless_line_is_rejected_in_bounded_memory(config, tmp_path):
    path = tmp_path / "last.csv"
    with path.open("w") as file:
        file.write(SQL_HEADER)
        file.write("0" * 300_000_000)  # /dev/zero's first line, but a file
    ran = run_import(config, "ejabberd-sql", path)
    path.unlink()
    assert ran.code == 0, ran
    assert f"{path}:2: a line of more than" in ran.out, ran.out
    assert ran.seconds < 10


def test_a_mnesia_dump_with_a_10_mb_user_name_rejects_that_record(config, tmp_path):
    path = tmp_path / "last.dump"
    path.write_bytes(
        b"{tables,[{last_activity,[{record_name,last_activity}]}]}.\n"
        b'{last_activity,{<<"' + b"x" * 10_000_000 + b'">>,<<"example.test">>},'
        + str(T).encode() + b',<<"">>}.\n'
        b'{last_activity,{<<"bob">>,<<"example.test">>},' + str(T).encode() + b',<<"">>}.\n'
    )  # fmt: skip
    ran = run_import(config, "ejabberd-mnesia", path)
    assert ran.code == 0, ran
    assert f"{path}:2: " in ran.out, ran.out
    assert "a record of more than 1048576 bytes" in ran.out, ran.out
    assert list(imported(config)) == ["bob@example.test"]
    assert ran.seconds < 5


# --- user names and times ------------------------------------------------------------------------

BAD_NAMES = {
    "a@b/c": "not a valid JID",
    "  spaces  ": "not a valid JID",
    "x" * 1024: "1024 bytes",
}


def test_bad_user_names_in_prosodys_files_are_rejected_each_with_its_file(config, tmp_path):
    folder = user_dir(tmp_path)
    (folder / "bob.dat").write_text(lastlog2_text(T))
    names = {"a%40b%2fc": "a@b/c", "%20%20spaces%20%20": "  spaces  ", "x" * 250: None}
    for file_name in names:
        (folder / f"{file_name}.dat").write_text(lastlog2_text(T))
    ran = run_import(config, "prosody-lastlog2", tmp_path / "prosody")
    assert ran.code == 0, ran
    assert "2 entries were rejected" in ran.out, ran.out
    for file_name, name in names.items():
        if name is not None:
            assert f"{file_name}.dat: {name + '@example.test'!r} is not a valid JID" in ran.out
    assert sorted(imported(config)) == ["bob@example.test", "x" * 250 + "@example.test"]


def test_bad_user_names_in_prosodys_sql_are_rejected_each_with_its_row(config, tmp_path):
    path = tmp_path / "prosody.sqlite"
    db = sqlite3.connect(path)
    db.execute('CREATE TABLE "prosody" (host, user, store, key, type, value)')
    for user in ("bob", *BAD_NAMES, "y" * 10_000_000):
        db.execute(
            'INSERT INTO "prosody" VALUES (?, ?, ?, ?, ?, ?)',
            ("example.test", user, "lastlog2", "login", "json", f'{{"timestamp": {T}}}'),
        )
    db.commit()
    db.close()
    ran = run_import(config, "prosody-sql", path)
    assert ran.code == 0, ran
    assert "4 entries were rejected" in ran.out, ran.out
    for reason in BAD_NAMES.values():
        assert reason in ran.out, ran.out
    assert "10000000 bytes" in ran.out, ran.out
    assert list(imported(config)) == ["bob@example.test"]


def test_bad_user_names_in_an_sql_export_are_rejected_each_with_its_line(config, tmp_path):
    path = tmp_path / "last.csv"
    rows = "".join(f'"{name}",example.test,{T},\n' for name in BAD_NAMES)
    path.write_text(SQL_HEADER + rows + f"bob,example.test,{T},\n")
    ran = run_import(config, "ejabberd-sql", path)
    assert ran.code == 0, ran
    for line, reason in enumerate(BAD_NAMES.values(), start=2):
        assert f"{path}:{line}: " in ran.out, ran.out
        assert reason in ran.out, ran.out
    assert list(imported(config)) == ["bob@example.test"]


@pytest.mark.parametrize("stamp", ["1" + "0" * 400, "-1795850306"], ids=["10**400", "negative"])
def test_absurd_times_are_rejected_and_the_rest_imported(config, tmp_path, stamp):
    folder = user_dir(tmp_path)
    (folder / "bob.dat").write_text(lastlog2_text(T))
    (folder / "alice.dat").write_text(lastlog2_text(stamp))
    path = tmp_path / "last.csv"
    path.write_text(SQL_HEADER + f"carol,example.test,{stamp},\ndave,example.test,{T},\n")
    for source, where in (("prosody-lastlog2", "alice.dat"), ("ejabberd-sql", f"{path}:2")):
        ran = run_import(config, source, tmp_path / "prosody" if source != "ejabberd-sql" else path)
        assert ran.code == 0, ran
        assert "1 entries were rejected" in ran.out, ran.out
        assert where in ran.out, ran.out
    assert sorted(imported(config)) == ["bob@example.test", "dave@example.test"]
