"""What the system refuses the store (descriptors, memory, disk, permission) is said as such.

Never as a damaged store: "restore it from a backup" for a descriptor limit sends an admin to
replace a sound file. Each message is one line and names the fix.
"""

from __future__ import annotations

import errno
import os
import pathlib
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from bot.core.model import UserRecord
from bot.storage.errors import StoreResourceError
from bot.storage.store import Store

from .support import T0

# Opens a store with only `spare` descriptors left (all others taken by /dev/null), so that
# the store runs out of them at one step of its opening (the lock, the file check, SQLite's
# database, its WAL, its index, the writer's second connection); prints the outcome.
_OPEN_WITH_FEW_DESCRIPTORS = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from bot.storage.errors import StoreError
    from bot.storage.store import Store

    path, readonly, spare = Path(sys.argv[1]), sys.argv[2] == "ro", int(sys.argv[3])
    taken = []
    try:
        while True:
            taken.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for fd in taken[len(taken) - spare:] if spare else ():
        os.close(fd)
    try:
        with Store(path, readonly=readonly) as store:
            store.get("alice@example.test")
    except StoreError as exc:
        print(type(exc).__name__, exc)
    else:
        print("opened")
    """
)


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("alice@example.test", UserRecord(T0, T0, T0 + 1))
        store.flush(T0 + 1)
    return path


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_running_out_of_descriptors_at_any_step_of_the_opening_names_the_limit(store_path, mode):
    outcomes = []
    for spare in range(12):
        result = subprocess.run(
            [sys.executable, "-c", _OPEN_WITH_FEW_DESCRIPTORS, str(store_path), mode, str(spare)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr  # a StoreError, never a traceback
        outcome = result.stdout.strip()
        outcomes.append(outcome)
        if outcome == "opened":
            break
        assert outcome.startswith("StoreResourceError "), outcome
        assert "\n" not in outcome
        assert "LimitNOFILE" in outcome, outcome
        assert "backup" not in outcome, outcome
    assert outcomes[-1] == "opened"  # the limit, raised, was the only problem
    assert len(outcomes) >= 3  # SQLite's own opening ran out too, not only ours
    with Store(store_path, readonly=True) as store:  # and the file is as it was
        assert store.get("alice@example.test") == UserRecord(T0, T0, T0 + 1)


_FIXES = {
    errno.EMFILE: "LimitNOFILE",
    errno.ENFILE: "fs.file-max",
    errno.ENOMEM: "memory",
    errno.ENOSPC: "free space",
    errno.EACCES: "chown",
}


@pytest.mark.parametrize("code", list(_FIXES))
@pytest.mark.parametrize("readonly", [False, True])
def test_a_refused_resource_at_the_open_of_the_file_names_its_fix(
    store_path, monkeypatch, code, readonly
):
    """The OSError injected where the store first opens its own files (the lock, the file
    check): the message is the resource's, not a store problem."""
    real_open = pathlib.Path.open

    def refusing_open(self, *args, **kwargs):
        if self.name.startswith("activity.db"):
            raise OSError(code, os.strerror(code), str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refusing_open)
    with pytest.raises(StoreResourceError) as refused:
        Store(store_path, readonly=readonly)
    message = str(refused.value)
    assert _FIXES[code] in message
    assert os.strerror(code) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("code", "fix"),
    [(sqlite3.SQLITE_FULL, "free space"), (sqlite3.SQLITE_NOMEM, "memory")],
)
def test_sqlite_refused_a_resource_at_the_open_names_its_fix(store_path, monkeypatch, code, fix):
    def refusing_connect(*args, **kwargs):
        error = sqlite3.OperationalError("refused")
        error.sqlite_errorcode = code
        raise error

    monkeypatch.setattr(sqlite3, "connect", refusing_connect)
    with pytest.raises(StoreResourceError, match=fix) as refused:
        Store(store_path)
    assert "backup" not in str(refused.value)
