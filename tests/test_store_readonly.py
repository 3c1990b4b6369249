"""A store that turns read-only under a running bot, or is read-only from the start.

`chattr +i` makes a file immutable, even for root, and is how the fault was reported: SQLite
writes its WAL index through a shared memory map of the -shm file, and the kernel answers a
write into the map of an immutable file with SIGBUS, which ended the bot (exit 135) with no
exception, no log line and its pending events lost. The stores that are made immutable here live
in child processes (a SIGBUS would end pytest itself), and every `chattr +i` is undone in a
`finally` (immutable files defeat the removal of the temporary folder). Root only, on a file
system with the immutable attribute (ext4, xfs, btrfs; not tmpfs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.storage.store import Store
from bot.testbed.botconfig import write_config
from bot.testbed.clients import connect_client, disconnect_client

from .support import ADMIN, T0, ask_adhoc, bot_settings

SUFFIXES = ("", "-wal", "-shm")  # the database, its WAL, its WAL index


def chattr(flag: str, *paths: Path) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        subprocess.run(["chattr", flag, *existing], check=True, capture_output=True)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    chattr("+i", *paths)
    try:
        yield
    finally:
        chattr("-i", *paths)


@pytest.fixture(autouse=True)
def immutable_files_possible(tmp_path):
    """Skip where this test cannot make a file immutable (not root, tmpfs, no chattr)."""
    probe = tmp_path / "probe"
    probe.touch()
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr")
    try:
        with immutable(probe):
            pass
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no immutable files on this file system: {exc.stderr.strip()}")
    finally:
        probe.unlink()


def files_of(path: Path, suffixes: tuple[str, ...] = SUFFIXES) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in suffixes]


def run_child(script: str, *args: str) -> dict:
    """Run `script` in a child process; its last stdout line is a JSON report."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, f"the child ended with {child.returncode}: {child.stderr}"
    return json.loads(child.stdout.splitlines()[-1])


# --- the store, under a running writer ----------------------------------------------------------

_FLUSH_INTO_IMMUTABLE = """
    import json, subprocess, sys
    from pathlib import Path
    from bot.core.model import UserRecord
    from bot.storage.errors import StoreError
    from bot.storage.store import Store

    path, immutable = Path(sys.argv[1]), sys.argv[2].split(",")
    record = UserRecord(1_800_000_000, 1_800_000_000, 0)
    report = {}
    store = Store(path)
    store.put("alice@example.test", record)
    store.flush(1_800_000_001)
    subprocess.run(["chattr", "+i", *immutable], check=True)
    report["alice"] = store.get("alice@example.test") is not None  # the first read: a read mark
    store.put("bob@example.test", record)
    try:
        store.flush(1_800_000_002)
    except StoreError as exc:
        report["error"] = str(exc)
    report["pending"] = store.pending
    report["bob"] = store.get("bob@example.test") is not None  # answered from memory
    with Store(path, readonly=True) as reader:  # what a reader (retention, count) sees meanwhile
        report["read"] = sorted(jid for jid, _ in reader.users())
    subprocess.run(["chattr", "-i", *immutable], check=True)
    report["written"] = store.flush(1_800_000_003)
    store.close(1_800_000_004)
    print(json.dumps(report))
"""


@pytest.mark.parametrize(
    "suffixes", [SUFFIXES, ("-shm",), ("-wal",), ("",)], ids=["all", "shm", "wal", "db"]
)
def test_flush_into_immutable_files_fails_in_one_line_and_writes_once_writable(tmp_path, suffixes):
    path = tmp_path / "activity.db"
    immutable_files = files_of(path, suffixes)
    try:
        report = run_child(
            _FLUSH_INTO_IMMUTABLE, str(path), ",".join(str(file) for file in immutable_files)
        )
    finally:
        chattr("-i", *immutable_files)  # the child's own undo never ran if it died
    assert report["alice"]
    assert report["bob"]
    error = report["error"]
    assert "\n" not in error
    assert error.startswith(f"{path}: writing 1 records failed ({immutable_files[0].name} is ")
    assert "is read-only: immutable" in error
    assert error.endswith("or its mode)")  # the log line adds that they are kept and retried
    assert report["pending"] == 1
    assert report["read"] == ["alice@example.test"]
    assert report["written"] == 1
    with Store(path, readonly=True) as store:
        assert sorted(jid for jid, _ in store.users()) == ["alice@example.test", "bob@example.test"]


_IMMUTABLE_WHILE_FLUSHING = """
    import json, subprocess, sys
    from pathlib import Path
    from bot.storage import sqlite_dict
    from bot.core.model import UserRecord
    from bot.storage.errors import StoreError
    from bot.storage.store import Store

    path, immutable = Path(sys.argv[1]), sys.argv[2].split(",")
    record = UserRecord(1_800_000_000, 1_800_000_000, 0)
    store = Store(path)
    store.put("alice@example.test", record)
    store.flush(1_800_000_001)
    for n in range(100):
        store.put(f"user{n}@example.test", record)
    write = sqlite_dict.SqliteDict.__setitem__

    def write_then_chattr(self, key, value):  # the files turn read-only during the flush
        write(self, key, value)
        if not hasattr(self, "made_immutable"):
            self.made_immutable = subprocess.run(["chattr", "+i", *immutable], check=True)

    sqlite_dict.SqliteDict.__setitem__ = write_then_chattr
    report = {}
    try:
        store.flush(1_800_000_002)
    except StoreError as exc:
        report["error"] = str(exc)
    report["pending"] = store.pending
    subprocess.run(["chattr", "-i", *immutable], check=True)
    report["written"] = store.flush(1_800_000_003)
    store.close(1_800_000_004)
    print(json.dumps(report))
"""


def test_files_turning_immutable_while_a_flush_is_built_fail_it_before_the_commit(tmp_path):
    path = tmp_path / "activity.db"
    shm = files_of(path, ("-shm",))  # the WAL still writable: the commit would reach the -shm
    try:
        report = run_child(_IMMUTABLE_WHILE_FLUSHING, str(path), str(shm[0]))
    finally:
        chattr("-i", *shm)
    assert report["error"].startswith(f"{path}: writing 100 records failed ({shm[0].name} is ")
    assert "is read-only: immutable" in report["error"]
    assert report["pending"] == 100
    assert report["written"] == 100
    with Store(path, readonly=True) as store:
        assert len(list(store.users())) == 101


_CLOSE_WHILE_IMMUTABLE = """
    import json, subprocess, sys
    from pathlib import Path
    from bot.core.model import UserRecord
    from bot.storage.errors import StoreError
    from bot.storage.store import Store

    path, immutable = Path(sys.argv[1]), sys.argv[2].split(",")
    record = UserRecord(1_800_000_000, 1_800_000_000, 0)
    store = Store(path)
    store.put("alice@example.test", record)
    store.flush(1_800_000_001)
    subprocess.run(["chattr", "+i", *immutable], check=True)
    store.put("bob@example.test", record)
    report = {}
    try:
        store.close(1_800_000_002)
    except StoreError as exc:
        report["error"] = str(exc)
    print(json.dumps(report))
"""


def test_closing_an_immutable_store_loses_only_what_it_reports(tmp_path):
    path = tmp_path / "activity.db"
    try:
        report = run_child(_CLOSE_WHILE_IMMUTABLE, str(path), ",".join(map(str, files_of(path))))
    finally:
        chattr("-i", *files_of(path))
    assert report["error"].startswith(f"{path}: writing 1 records failed")  # bob
    with Store(path) as store:  # alice's commit was left in the WAL, and is read back
        assert sorted(jid for jid, _ in store.users()) == ["alice@example.test"]


# --- the bot, through the command line ----------------------------------------------------------


def wait_for(condition, timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stored_users(path: Path) -> set[str]:
    with Store(path, readonly=True) as store:
        return {jid for jid, _ in store.users()}


@pytest.mark.asyncio
async def test_running_bot_whose_store_turns_immutable_says_so_and_keeps_answering(
    prosody, tmp_path
):
    path = tmp_path / "activity.db"
    bot_settings(prosody, path, flush_interval=0.2)  # writes the config file beside the store
    config = path.with_name(path.name + ".toml")
    log = tmp_path / "bot.log"
    with log.open("w") as log_file:
        bot = subprocess.Popen(
            # --verbose: the log says when a flush has committed ("bot.store: Stored N ...").
            [sys.executable, "-m", "bot", "--verbose", "run", "--config", str(config)],
            stderr=log_file,
        )
    admin = bob = alice = None
    try:
        await asyncio.to_thread(
            wait_for, lambda: "Privileges granted" in log.read_text(), what="the bot"
        )
        admin = await connect_client(prosody, ADMIN, "adminpw", resource="desk")
        await asyncio.to_thread(wait_for, lambda: ADMIN in stored_users(path), what="a flush")
        # One more commit, and no reader after it: as in a busy bot, the bot's next read of the
        # store (here alice's record, at her login) takes a read mark in the -shm.
        flushes = log.read_text().count("bot.store: Stored ")
        bob = await connect_client(prosody, "bob@example.test", "bobpw")
        for _ in range(500):  # each question is a round trip through Prosody: no pause needed
            if (await ask_adhoc(admin))["online_users"] == "2":
                break  # his presence reached the bot
        else:
            raise AssertionError("bob's presence never reached the bot")
        await asyncio.to_thread(  # bob's record is committed (read from the log: no reader)
            wait_for,
            lambda: log.read_text().count("bot.store: Stored ") > flushes,
            what="bob's flush",
        )
        with immutable(*files_of(path)):
            alice = await connect_client(prosody, "alice@example.test", "alicepw")
            await asyncio.to_thread(
                wait_for, lambda: "is read-only" in log.read_text() or bot.poll(), what="an error"
            )
            assert bot.poll() is None, log.read_text()
            assert (await ask_adhoc(admin))["online_users"] == "3"  # alice, from memory
        await asyncio.to_thread(
            wait_for, lambda: "alice@example.test" in stored_users(path), what="alice written"
        )
    finally:
        for client in (alice, bob, admin):
            if client is not None:
                await disconnect_client(client)
        chattr("-i", *files_of(path))
        bot.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(bot.wait, 10)
    text = log.read_text()
    assert returncode == 0, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "is read-only" in line]
    assert re.search(
        rf" ERROR +bot.store: {re.escape(str(path))}: writing \d+ records failed \(.* is "
        r"read-only: .*\); they are kept in memory and retried at the next flush$",
        errors[0],
    ), text


def cli(config: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("folder", "activity.db.lock: cannot be created (Operation not permitted): make {folder}"),
        ("parent", "{path}: the folder {folder} does not exist. Check [store] path"),
        ("folder of a stopped store", "cannot be opened for writing: {folder} is read-only"),
        ("database", "cannot be opened for writing: {path} is read-only"),
    ],
)
def test_read_only_store_at_start_is_one_line_and_exit_2(tmp_path, case, says):
    folder = tmp_path / "data" / "store"
    path = folder / "activity.db"
    config = write_config(
        tmp_path / "config.toml",
        component_jid="active.example.test",
        secret="s3cret",
        server_port=1,  # nothing listens: a bot that got past its store would exit 1
        domains=["example.test"],
        admins=[ADMIN],
        store_path=path,
        metrics_listen="",
    )
    if case == "parent":
        folder.parent.mkdir()
        made_immutable = folder.parent
    else:
        folder.mkdir(parents=True)
        made_immutable = folder
    if case in ("folder of a stopped store", "database"):
        Store(path).close(T0)  # a bot ran and stopped: -wal and -shm are gone
        made_immutable = path if case == "database" else folder
    with immutable(made_immutable):
        result = cli(config, "run")
        count = cli(config, "count")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("xmpp-active-users: ")
    assert says.format(folder=folder, parent=folder.parent, path=path) in result.stderr
    if case == "folder of a stopped store":  # `count` must not call a sound store damaged
        assert count.returncode == 2
        assert count.stderr == (
            f"xmpp-active-users: {path}: cannot be read while no bot runs: SQLite must create "
            f"activity.db-shm beside it, and {folder} is read-only: immutable (`lsattr -d`; "
            "`chattr -i` undoes it) or its mode\n"
        )
    if case == "database":
        assert count.returncode == 0, count.stderr
