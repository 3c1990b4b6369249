"""A crash-safe `shelve.Shelf` over SQLite, and the lock that keeps it to one writer.

Generic: nothing here knows what the bot stores. File layout is CPython 3.13's `dbm.sqlite3`
(one table `Dict(key BLOB, value BLOB)`, WAL mode), so `shelve.open(path)` on Python 3.13 reads a
file written here. We do not use `dbm.sqlite3` itself, even where present: it commits every
single write, and we group writes into one transaction per flush interval, so the presence path
never waits for the disk.

Reading never runs code found in the file: values are unpickled by `PrimitivesUnpickler`, which
refuses any value that names a class or function (plain `pickle.loads` would import and call it).
"""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import shelve
import socket
import sqlite3
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process has the store open for writing."""


class StoreCorruptError(StoreError):
    """The file is not a store of ours (or not a readable one). It is never modified."""


class SqliteDict(MutableMapping[bytes, bytes]):
    """bytes -> bytes in SQLite, with the table layout of CPython 3.13's dbm.sqlite3.

    Autocommit outside `transaction()`, so a writer groups its writes explicitly.
    """

    def __init__(self, path: Path, *, readonly: bool) -> None:
        mode = "ro" if readonly else "rwc"
        uri = f"file:{quote(str(path))}?mode={mode}"
        self._path = path
        self._cx = sqlite3.connect(uri, uri=True, isolation_level=None)

    def prepare_for_writing(self) -> None:
        (mode,) = self._cx.execute("PRAGMA journal_mode = wal").fetchone()
        if str(mode).lower() != "wal":
            # Without WAL, readers (`count`) would block the writer and a crash could leave a
            # hot journal: refuse rather than run with other guarantees than the ones promised.
            raise StoreError(
                f"{self._path}: SQLite refused write-ahead logging here (journal mode stays "
                f"{mode!r}); the file system may not support it (a network file system?). "
                "Put the store on a local disk."
            )
        # WAL + NORMAL: a commit survives a crash of this process (kill -9) without an fsync
        # per commit; only a power loss may take back the last commits, never corrupt the file.
        self._cx.execute("PRAGMA synchronous = NORMAL")
        # Checkpoint every 16 MiB of WAL rather than 4 MiB: a flush of a few thousand users
        # otherwise checkpoints (and syncs) on every commit.
        self._cx.execute("PRAGMA wal_autocheckpoint = 4096")
        self._cx.execute(
            "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"
        )

    def is_empty(self) -> bool:
        """No table at all: a new (or zero-byte) database file."""
        return self._cx.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0

    def has_dict_table(self) -> bool:
        row = self._cx.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Dict'"
        ).fetchone()
        return row is not None

    def __getitem__(self, key: bytes) -> bytes:
        row = self._cx.execute(
            "SELECT value FROM Dict WHERE key = CAST(? AS BLOB)", (key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        # An upsert updates the row in place; REPLACE would delete and re-insert it, dirtying
        # the key index too (twice the pages written per flush).
        self._cx.execute(
            "INSERT INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB)) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def __delitem__(self, key: bytes) -> None:
        if self._cx.execute("DELETE FROM Dict WHERE key = CAST(? AS BLOB)", (key,)).rowcount == 0:
            raise KeyError(key)

    def __iter__(self) -> Iterator[bytes]:
        for (key,) in self._cx.execute("SELECT key FROM Dict"):
            yield bytes(key)

    def __len__(self) -> int:
        return int(self._cx.execute("SELECT COUNT(key) FROM Dict").fetchone()[0])

    def items_with_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """All pairs whose key starts with `prefix`, in one query (not one query per key).

        `substr` makes SQLite scan the table in order rather than walk the key index and look
        each row up (about twice as fast when most keys match, as users' keys do).
        """
        rows = self._cx.execute(
            "SELECT key, value FROM Dict WHERE substr(key, 1, ?) = CAST(? AS BLOB)",
            (len(prefix), prefix),
        )
        yield from rows  # BLOB columns come back as bytes already: no copies

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing; afterwards the connection is outside any transaction, even when the
        COMMIT itself failed (SQLite keeps the transaction open then, and every later BEGIN
        would fail until the process ends)."""
        self._cx.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._cx.execute("COMMIT")
        except BaseException:
            if self._cx.in_transaction:
                with suppress(sqlite3.Error):  # the error that brought us here is the news
                    self._cx.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._cx.close()


class PrimitivesUnpickler(pickle.Unpickler):
    """Unpickles numbers, strings, bytes, tuples, lists, dicts, sets, booleans and None only.

    Everything else in a pickle (a class, a function: what could run code) must be looked up by
    name through `find_class`, which refuses; so does `persistent_load`, by default.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: a store holds primitive values only"
        )


def load_primitives(value: bytes) -> Any:
    """`pickle.loads` for untrusted bytes: primitives, or UnpicklingError (never runs code)."""
    try:
        return PrimitivesUnpickler(io.BytesIO(value)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # a truncated or garbled pickle fails in many ways
        raise pickle.UnpicklingError(f"not a pickle ({type(exc).__name__}: {exc})") from None


class Shelf(shelve.Shelf):  # type: ignore[type-arg]
    """A Shelf over a SqliteDict that never runs code from the file, and can read a key range in
    one query."""

    dict: SqliteDict

    def __init__(self, db: SqliteDict) -> None:
        super().__init__(db, protocol=pickle.HIGHEST_PROTOCOL)

    def __getitem__(self, key: str) -> Any:
        return load_primitives(self.dict[key.encode(self.keyencoding)])

    def items_with_prefix(self, prefix: str) -> Iterator[tuple[str, Any]]:
        encoding = self.keyencoding
        for key, value in self.dict.items_with_prefix(prefix.encode(encoding)):
            yield key.decode(encoding), load_primitives(value)


def refuse_foreign_file(path: Path) -> None:
    """Never let SQLite touch a file that is not SQLite (it would happily overwrite it)."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot be opened ({exc.strerror})") from None
    if head and head != _SQLITE_MAGIC:
        raise StoreCorruptError(
            f"{path}: not an xmpp-active-users store (not an SQLite file); it was left untouched. "
            "Move it away or set [store] path to another file."
        )


# --- one writer at a time ------------------------------------------------------------------------


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def lock_for_writing(path: Path) -> IO[str]:
    """Take the writer's lock beside `path`, or raise StoreLockedError naming the holder.

    The kernel releases it when the process dies, even by kill -9; closing the returned file
    releases it too."""
    lock_file = lock_path(path).open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise StoreLockedError(
            f"{path}: already open for writing by {holder}. Only one bot may use a store; stop "
            "it first (`xmpp-active-users count` can read the store while it runs)."
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)})\n")
    lock_file.flush()
    return lock_file


def is_locked_for_writing(path: Path) -> bool:
    """Whether a writer holds the lock of the store at `path` right now."""
    try:
        with lock_path(path).open("r", encoding="utf-8") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False
