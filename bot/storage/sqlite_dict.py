"""The SQLite mapping: bytes -> bytes in one table, the layout of CPython 3.13's `dbm.sqlite3`.

Generic: nothing here knows what the bot stores. File layout is CPython 3.13's `dbm.sqlite3`
(one table `Dict(key BLOB, value BLOB)`, WAL mode), so `shelve.open(path)` on Python 3.13 reads a
file written here. We do not use `dbm.sqlite3` itself, even where present: it commits every
single write, and we group writes into one transaction per flush interval, so the presence path
never waits for the disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from .errors import StoreError
from .files import refuse_unwritable, store_files, why_unwritable

T = TypeVar("T")
_CHUNK = 1024  # most keys per statement of the batch methods (a power of two, see _pieces)
WRITER_CACHE_KIB = (2048, 64 * 1024)  # a writer's SQLite page cache, least and most (KiB)

# A statement that begins a read transaction (and so takes a read mark in the WAL index).
_TAKE_READ_MARK = "SELECT COUNT(*) FROM sqlite_master"


class StoreNotWritable(sqlite3.OperationalError):
    """A file of the store cannot be written now; nothing was written (see `SqliteDict`).

    An sqlite3 error, so that `StoreConnection.write` reports it as any failed write: one line, the
    records kept for the next flush."""


class SqliteDict(MutableMapping[bytes, bytes]):
    """bytes -> bytes in SQLite, with the table layout of CPython 3.13's dbm.sqlite3.

    Autocommit outside `transaction()`, so a writer groups its writes explicitly.

    A writer never lets SQLite write into a store file that has become read-only under it
    (`chattr +i`, a read-only file system): SQLite writes the WAL index through a shared memory
    map of the -shm file, and the kernel answers a write into the map of an immutable file with
    SIGBUS, which ends the process (no exception, no log line). So a writer checks its files
    before and after building each transaction (`StoreNotWritable`, nothing written), takes its
    read mark right after each commit, and closes without a checkpoint when the files are
    read-only. Still fatal (SIGBUS), as no check can be atomic with SQLite's writes:
    - the -shm made read-only during a commit (from the check before it to its end: well under
      a millisecond for a few records, a few for a thousand, tens when it checkpoints);
    - the -shm made read-only while the WAL is not yet, during a flush that changes more than
      a writer's page cache holds (2 MiB, or a fiftieth of the store: about 1,000 users
      scattered in a store of a million, 3,000 in a store of ten million),
      which SQLite writes in part to the WAL before the commit.
    """

    def __init__(self, path: Path, *, readonly: bool) -> None:
        self.path = path
        mode = "ro" if readonly else "rwc"
        self._uri = f"file:{quote(str(path))}?mode={mode}"
        if not readonly:
            refuse_unwritable(path)  # before SQLite opens it (it would fall back to read-only)
        # Any thread may use the connections, one at a time: the bot reads and writes in worker
        # threads, which `StoreConnection` serializes with a lock.
        self._cx = sqlite3.connect(
            self._uri, uri=True, isolation_level=None, check_same_thread=False
        )
        if readonly:
            try:
                self._refuse_unreadable_wal_index()
            except BaseException:
                self._cx.close()
                raise
        # A writer's second, read-only connection, idle: while it is open, closing `_cx` cannot
        # take the exclusive lock that the last connection needs to checkpoint (see `close`).
        self._keeper: sqlite3.Connection | None = None

    def _refuse_unreadable_wal_index(self) -> None:
        """A reader needs the -shm (the WAL index): when no writer runs, SQLite creates it, so
        the folder must be writable; say so instead of "unable to open database file"."""
        try:
            self._cx.execute(_TAKE_READ_MARK).fetchone()
        except sqlite3.OperationalError as exc:
            shm = store_files(self.path)[2]
            if exc.sqlite_errorcode != sqlite3.SQLITE_CANTOPEN or shm.exists():
                raise  # the caller's to judge (a damaged or foreign file)
            problem = why_unwritable(self.path.parent)
            if problem is None:
                raise
            raise StoreError(
                f"{self.path}: cannot be read while no bot runs: SQLite must create {shm.name} "
                f"beside it, and {problem}"
            ) from None

    def prepare_for_writing(self) -> None:
        (mode,) = self._cx.execute("PRAGMA journal_mode = wal").fetchone()
        if str(mode).lower() != "wal":
            # Without WAL, readers (`count`) would block the writer and a crash could leave a
            # hot journal: refuse rather than run with other guarantees than the ones promised.
            raise StoreError(
                f"{self.path}: SQLite refused write-ahead logging here (journal mode stays "
                f"{mode!r}); the file system may not support it (a network file system?). "
                "Put the store on a local disk."
            )
        # WAL + NORMAL: a commit survives a crash of this process (kill -9) without an fsync
        # per commit; only a power loss may take back the last commits, never corrupt the file.
        self._cx.execute("PRAGMA synchronous = NORMAL")
        # Checkpoint every 16 MiB of WAL rather than 4 MiB: a flush of a few thousand users
        # otherwise checkpoints (and syncs) on every commit.
        self._cx.execute("PRAGMA wal_autocheckpoint = 4096")
        # A page cache that grows with the store (SQLite's default is 2 MiB): the inner pages
        # of the two B-trees (rows, keys) of ten million users take 7 MiB, and a flush of a
        # thousand scattered users dirties 2,000 pages (8 MiB). With 2 MiB, every lookup and
        # every write of a large store read its inner pages again from the OS, and a flush
        # spilled to the WAL before its commit: the write rate fell with the store's size
        # (bench_core.py at 10M users). A small store keeps the default (and its memory).
        size_kib = self.path.stat().st_size // 1024 if self.path.exists() else 0
        cache_kib = min(WRITER_CACHE_KIB[1], max(WRITER_CACHE_KIB[0], size_kib // 50))
        self._cx.execute(f"PRAGMA cache_size = -{cache_kib}")
        self._cx.execute(
            "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"
        )
        self._keeper = sqlite3.connect(
            self._uri.replace("mode=rwc", "mode=ro"),
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        self._keeper.execute(_TAKE_READ_MARK).fetchone()  # holds the file's shared lock from now

    def is_empty(self) -> bool:
        """No table at all: a new (or zero-byte) database file."""
        return int(self._cx.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]) == 0

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

    # Many rows per statement: pysqlite releases the GIL while SQLite steps a statement, and
    # takes it back after each row; a worker thread taking it back while the event loop is busy
    # waits up to the switch interval (5 ms) each time. So a worker reads and writes in batches.

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values of those of `keys` that exist: one statement, and one row, per chunk."""
        found: dict[bytes, bytes] = {}
        for chunk in _pieces(keys):
            (pairs,) = self._cx.execute(_sql_get_many(len(chunk)), chunk).fetchone()
            for pair in pairs.split(",") if pairs else ():
                key, _, value = pair.partition(":")
                found[bytes.fromhex(key)] = bytes.fromhex(value)
        return found

    def set_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """`self[key] = value` for each pair, one statement per chunk."""
        for chunk in _pieces(items):
            self._cx.execute(_sql_set_many(len(chunk)), [part for pair in chunk for part in pair])

    def delete_many(self, keys: Sequence[bytes]) -> None:
        """Delete those of `keys` that exist, one statement per chunk."""
        for chunk in _pieces(keys):
            self._cx.execute(_sql_delete_many(len(chunk)), chunk)

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

    def items_with_rare_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """`items_with_prefix` for a prefix that few keys have (the days' snapshots beside a
        million users): a range of the key index, never a read of the whole table."""
        if not prefix or prefix[-1] == 0xFF:
            raise ValueError(f"no range ends {prefix!r}: the end is the prefix, last byte + 1")
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return self._cx.execute(
            "SELECT key, value FROM Dict WHERE key >= CAST(? AS BLOB) AND key < CAST(? AS BLOB)",
            (prefix, end),
        ).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, all or nothing. Afterwards the connection is outside any
        transaction, even when the COMMIT itself failed (SQLite keeps the transaction open
        then, and every later BEGIN would fail until the process ends). Raises
        StoreNotWritable, having written nothing, when a file of the store is read-only before
        it starts, before it commits, or made it fail."""
        self._refuse_if_unwritable()
        self._cx.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._refuse_if_unwritable()  # the writes so far are in SQLite's page cache only
            self._cx.execute("COMMIT")
        except BaseException as exc:
            if self._cx.in_transaction:  # SQLite ends it itself on some errors (I/O, full)
                with suppress(sqlite3.Error):  # the error that brought us here is the news
                    self._cx.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, StoreNotWritable):
                self._refuse_if_unwritable()  # a clearer reason than "disk I/O error"
            raise
        # The first read after a commit writes a read mark into the -shm; do it now, while the
        # files are known writable, not at the next lookup (which may come after a chattr +i).
        self._cx.execute(_TAKE_READ_MARK).fetchone()

    def _refuse_if_unwritable(self) -> None:
        for file in store_files(self.path):
            problem = why_unwritable(file, file.name)  # the error names the store's path
            if problem is not None:
                raise StoreNotWritable(problem)

    def close(self) -> None:
        """Close; when the files can still be written, the last connection checkpoints the WAL
        into the file and removes -wal and -shm. When they cannot, the connections close
        without any write (a checkpoint would write into the -shm map: SIGBUS), and the WAL,
        with every commit, is left for the next writer."""
        if self._keeper is None:
            self._cx.close()
            return
        if any(why_unwritable(file) for file in store_files(self.path)):
            self._cx.close()  # not the last connection: no checkpoint
            self._keeper.close()  # read-only: never checkpoints
        else:
            self._keeper.close()
            self._cx.close()
        self._keeper = None


@cache
def _sql_get_many(count: int) -> str:
    keys = ", ".join(["CAST(? AS BLOB)"] * count)
    return f"SELECT group_concat(hex(key) || ':' || hex(value)) FROM Dict WHERE key IN ({keys})"


@cache
def _sql_set_many(count: int) -> str:
    rows = ", ".join(["(CAST(? AS BLOB), CAST(? AS BLOB))"] * count)
    return (
        f"INSERT INTO Dict (key, value) VALUES {rows} "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )


@cache
def _sql_delete_many(count: int) -> str:
    return f"DELETE FROM Dict WHERE key IN ({', '.join(['CAST(? AS BLOB)'] * count)})"


def _pieces(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """`items` in pieces of _CHUNK, then of decreasing powers of two: statements of a few
    lengths only, as pysqlite keeps each prepared statement (up to 128), and one for thousands
    of rows takes megabytes."""
    start, size = 0, _CHUNK
    while start < len(items):
        while start + size > len(items):
            size //= 2
        yield items[start : start + size]
        start += size
