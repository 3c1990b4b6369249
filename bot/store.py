"""The activity store: a `shelve.Shelf` over a crash-safe SQLite mapping.

File layout is CPython 3.13's `dbm.sqlite3` (one table `Dict(key BLOB, value BLOB)`, WAL mode), so
`shelve.open(path)` on Python 3.13 reads a store written here. We do not use `dbm.sqlite3` itself,
even where present: it commits every single write, and we group writes into one transaction per
flush interval, so the presence path never waits for the disk.

Values are primitives only (tuples of ints and strings), never our own classes, so no pickle ever
depends on this package's code. Keys:
    "meta:schema"     -> int, SCHEMA_VERSION
    "meta:heartbeat"  -> int, the last time (Unix seconds) the writer was known alive
    "meta:pseudonymized" -> bool, users keyed by a keyed hash instead of their JID
    "user:<bare JID>" -> (first_seen, last_login, last_logout, (resource, ...))
    "day:<YYYY-MM-DD>" -> {domain: {"active": {"1d": n, ...}, "new": {...}, "peak_online": n}}
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import logging
import os
import pickle
import re
import shelve
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from .model import UserRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
HEARTBEAT_INTERVAL = 30  # seconds between heartbeat writes while no event arrives
_SQLITE_MAGIC = b"SQLite format 3\x00"
_USER = "user:"
_DAY = "day:"
_SCHEMA_KEY = "meta:schema"
_HEARTBEAT_KEY = "meta:heartbeat"
_PSEUDONYMIZED_KEY = "meta:pseudonymized"
_PSEUDONYM = re.compile(r"~[0-9a-f]{32}@[^@/]+")


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
        self._cx = sqlite3.connect(uri, uri=True, isolation_level=None)

    def prepare_for_writing(self) -> None:
        self._cx.execute("PRAGMA journal_mode = wal")
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
        self._cx.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._cx.execute("ROLLBACK")
            raise
        self._cx.execute("COMMIT")

    def close(self) -> None:
        self._cx.close()


class _Shelf(shelve.Shelf):  # type: ignore[type-arg]
    """A Shelf that can also read a key range in one query (start-up load of all users)."""

    dict: SqliteDict

    def items_with_prefix(self, prefix: str) -> Iterator[tuple[str, Any]]:
        encoding = self.keyencoding
        for key, value in self.dict.items_with_prefix(prefix.encode(encoding)):
            yield key.decode(encoding), pickle.loads(value)


class Store:
    """Per-user activity records and the writer's heartbeat, with grouped writes.

    One writer at a time (a lock file beside the store says who); any number of readers.
    `put()` only remembers the record; `flush()` writes everything remembered in one transaction.
    """

    def __init__(
        self, path: Path, *, readonly: bool = False, pseudonym_key: bytes | None = None
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._pseudonym_key = pseudonym_key
        self._pending: dict[str, UserRecord | None] = {}  # None: delete on flush
        self._pending_days: dict[str, dict[str, Any]] = {}
        self._lock_file: IO[str] | None = None
        self._heartbeat_written = 0
        self.writer_running = False  # readers: whether a writer holds the store right now
        if readonly:
            if not path.exists():
                raise StoreError(
                    f"{path}: no store there yet; the bot creates it when it first runs "
                    "(check [store] path in the config)"
                )
            self.writer_running = _is_locked(_lock_path(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = _lock_for_writing(path)
        try:
            self._shelf = self._open_shelf()
        except BaseException:
            self._unlock()
            raise

    def _open_shelf(self) -> _Shelf:
        """Open and check the file; a writer changes nothing before the checks have passed."""
        path = self.path
        _refuse_foreign_file(path)
        db: SqliteDict | None = None
        try:
            db = SqliteDict(path, readonly=self.readonly)
            shelf = _Shelf(db, protocol=pickle.HIGHEST_PROTOCOL)
            if db.has_dict_table():
                version = shelf.get(_SCHEMA_KEY)
                if version is None and len(db):
                    raise StoreCorruptError(
                        f"{path}: holds data but no schema version, so it is not a store of "
                        "xmpp-active-users; it was left untouched. Set [store] path to a new file."
                    )
            elif db.is_empty() and not self.readonly:
                version = None  # a new store
            else:
                raise StoreCorruptError(
                    f"{path}: an SQLite database but not a store of xmpp-active-users (no table "
                    "Dict); it was left untouched. Set [store] path to another file."
                )
            if version is not None and version != SCHEMA_VERSION:
                raise StoreCorruptError(
                    f"{path}: schema version {version!r}, but this program reads version "
                    f"{SCHEMA_VERSION}; run the xmpp-active-users release that wrote it"
                )
            if version is not None and not self.readonly:
                self._check_pseudonymization(bool(shelf.get(_PSEUDONYMIZED_KEY, False)))
            if not self.readonly:
                db.prepare_for_writing()
                if version is None:
                    with db.transaction():
                        shelf[_SCHEMA_KEY] = SCHEMA_VERSION
                        shelf[_PSEUDONYMIZED_KEY] = self._pseudonym_key is not None
            self._heartbeat_written = int(shelf.get(_HEARTBEAT_KEY, 0))
        except (sqlite3.DatabaseError, pickle.UnpicklingError) as exc:
            if db is not None:
                db.close()
            raise StoreCorruptError(
                f"{path}: cannot be read as a store ({exc}); it was left untouched. "
                "Restore it from a backup, or move it away to start a new store."
            ) from None
        except BaseException:
            if db is not None:
                db.close()
            raise
        return shelf

    def _check_pseudonymization(self, pseudonymized: bool) -> None:
        wanted = self._pseudonym_key is not None
        if pseudonymized != wanted:
            state = "pseudonymized" if pseudonymized else "keyed by plain JIDs"
            raise StoreError(
                f"{self.path}: this store is {state}, but [privacy] pseudonymize = "
                f"{str(wanted).lower()}: set it back, or start a new store (a store cannot be "
                "converted: the keyed hashes cannot be reversed)"
            )

    def identity(self, bare_jid: str) -> str:
        """How a user is keyed: the bare JID, or with `pseudonymize` a keyed hash of it that
        keeps only the domain (`~<hash>@example.org`). Identities pass through unchanged."""
        if self._pseudonym_key is None or _PSEUDONYM.fullmatch(bare_jid):
            return bare_jid
        digest = hmac.new(self._pseudonym_key, bare_jid.encode(), hashlib.sha256).hexdigest()
        return f"~{digest[:32]}@{bare_jid.rpartition('@')[2]}"

    # --- records -------------------------------------------------------------------------

    def get(self, bare_jid: str) -> UserRecord | None:
        bare_jid = self.identity(bare_jid)
        if bare_jid in self._pending:
            return self._pending[bare_jid]
        try:  # not Shelf.get: it would run the same SELECT twice (`in`, then the read)
            value = self._shelf[_USER + bare_jid]
        except KeyError:
            return None
        return _record(bare_jid, value)

    def put(self, bare_jid: str, record: UserRecord) -> None:
        self._pending[self.identity(bare_jid)] = record

    def delete(self, bare_jid: str) -> None:
        self._pending[self.identity(bare_jid)] = None

    def users(self) -> Iterator[tuple[str, UserRecord]]:
        """Every user with a record, pending writes included: one query, streamed."""
        for bare_jid, first_seen, login, logout, sessions in self.user_rows():
            yield bare_jid, UserRecord(first_seen, login, logout, sessions)

    def user_rows(self) -> Iterator[tuple[str, int, int, int, tuple[str, ...]]]:
        """`users()` as plain tuples (bare JID, first_seen, login, logout, sessions)."""
        for bare_jid, *fields in self.raw_user_rows():
            yield bare_jid.decode("utf-8", errors="replace"), *fields

    def raw_user_rows(self) -> Iterator[tuple[bytes, int, int, int, tuple[str, ...]]]:
        """The rows with the bare JID still UTF-8 bytes: the start-up load of a million users
        decodes only the few it keeps (online ones). Pending writes included; malformed
        records are logged and skipped, never deleted."""
        pending = {bare.encode(): record for bare, record in self._pending.items()}
        loads = pickle.loads
        prefix = len(_USER)
        for key, value in self._shelf.dict.items_with_prefix(_USER.encode()):
            bare_jid = key[prefix:]
            if pending and bare_jid in pending:
                continue
            try:
                first_seen, login, logout, sessions = loads(value)
            except Exception:  # any unpickling failure: a damaged value
                first_seen = None
            if (
                type(first_seen) is not int
                or type(login) is not int
                or type(logout) is not int
                or type(sessions) is not tuple
            ):
                log.error(
                    "Store record of %s is malformed; ignored, left in place",
                    bare_jid.decode(errors="replace"),
                )
                continue
            yield bare_jid, first_seen, login, logout, sessions
        for bare_jid, record in pending.items():
            if record is not None:
                yield bare_jid, *record

    # --- daily snapshots (history) ----------------------------------------------------------

    def put_day(self, day: str, snapshot: dict[str, Any]) -> None:
        """Remember one UTC day's figures (primitives only), written with the next flush."""
        self._pending_days[day] = snapshot

    def days(self) -> dict[str, dict[str, Any]]:
        """Every stored day's snapshot, pending ones included, by date (YYYY-MM-DD)."""
        stored = {key[len(_DAY) :]: value for key, value in self._shelf.items_with_prefix(_DAY)}
        return stored | self._pending_days

    @property
    def heartbeat(self) -> int:
        """The last time the writer was known alive (0: never)."""
        return self._heartbeat_written

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- writing ---------------------------------------------------------------------------

    def flush(self, now: int, *, heartbeat_interval: int = HEARTBEAT_INTERVAL) -> int:
        """Write all pending records and the heartbeat `now` in one transaction.

        Without pending records, only refreshes a heartbeat older than `heartbeat_interval`.
        Returns the number of records written. On failure (disk full, file made read-only) the
        records stay pending for the next flush and StoreError says what happened.
        """
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        if (
            not self._pending
            and not self._pending_days
            and now - self._heartbeat_written < heartbeat_interval
        ):
            return 0
        try:
            with self._shelf.dict.transaction():
                for bare_jid, record in self._pending.items():
                    key = _USER + bare_jid
                    if record is None:
                        self._shelf.pop(key, None)
                    else:
                        self._shelf[key] = (*record[:3], tuple(record.sessions))
                for day, snapshot in self._pending_days.items():
                    self._shelf[_DAY + day] = snapshot
                self._shelf[_HEARTBEAT_KEY] = now
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: writing {len(self._pending)} records failed ({exc}); "
                "they are kept in memory and retried at the next flush"
            ) from exc
        written = len(self._pending)
        self._pending.clear()
        self._pending_days.clear()
        self._heartbeat_written = now
        return written

    def close(self, now: int | None = None) -> None:
        """Write what is pending (writers), then release the file and the lock.

        `now` records the heartbeat: only the bot, which is alive, passes it. Other writers
        (an import) keep the heartbeat as it was, so a crashed bot's sessions still end when
        the bot was last alive.
        """
        try:
            if not self.readonly and (now is not None or self._pending or self._pending_days):
                self.flush(self._heartbeat_written if now is None else now, heartbeat_interval=0)
        finally:
            self._shelf.close()
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inactive_users(path: Path, active_since: int) -> list[str]:
    """Users offline and last active before `active_since`, read by a separate read-only
    connection: safe in a worker thread while the bot writes (a full scan, hence the thread)."""
    with Store(path, readonly=True) as reader:
        return [
            bare_jid
            for bare_jid, record in reader.users()
            if not record.sessions and record.last_active < active_since
        ]


def _record(bare_jid: str, value: Any) -> UserRecord | None:
    """The stored tuple as a UserRecord; a malformed one is logged and skipped, never deleted."""
    try:
        first_seen, login, logout, sessions = value
        return UserRecord(int(first_seen), int(login), int(logout), tuple(map(str, sessions)))
    except (TypeError, ValueError):
        log.error("Store record of %s is malformed (%r); ignored, left in place", bare_jid, value)
        return None


def _refuse_foreign_file(path: Path) -> None:
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


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _lock_for_writing(path: Path) -> IO[str]:
    """Take the writer's lock; the kernel releases it when the process dies, even by kill -9."""
    lock_path = _lock_path(path)
    lock_file = lock_path.open("a+", encoding="utf-8")
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


def _is_locked(lock_path: Path) -> bool:
    try:
        with lock_path.open("r", encoding="utf-8") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


async def flush_periodically(
    store: Store, interval: float, clock: Callable[[], float] = time.time
) -> None:
    """Flush every `interval` seconds, on fixed ticks so that the gap between flushes never
    grows: an event is on disk at most `interval` (plus one flush's own time) after it happened.
    A failed flush is logged and retried at the next tick; its records stay pending."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    while True:
        next_tick = max(next_tick + interval, loop.time())  # no backlog after a stall
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
        try:
            written = store.flush(int(clock()))
        except StoreError as exc:
            log.error("%s", exc)
            continue
        if written:
            log.debug("Stored %d changed users", written)
