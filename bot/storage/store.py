"""The activity store: users' records, daily snapshots and the writer's heartbeat, in a shelf.

The shelf (`shelf.py`) is a crash-safe `shelve.Shelf` over SQLite; this module decides what goes
in it. Values are primitives only (tuples of ints and strings, see `codec.py`), never our own
classes, so no pickle ever depends on this package's code. Keys:
    "meta:schema"     -> int, SCHEMA_VERSION
    "meta:heartbeat"  -> int, the last time (Unix seconds) the writer was known alive
    "meta:pseudonymized" -> bool, users keyed by a keyed hash instead of their JID
    "meta:generation" -> bytes, random, replaced by every write transaction (what the index
                         snapshot, `index_snapshot.py`, is tied to)
    "user:<bare JID>" -> (first_seen, last_login, last_logout, (resource, ...)[, clients, ...])
                         (see codec.py)
    "day:<YYYY-MM-DD>" -> {domain: {"active": {"1d": n, ...}, "new": {...}, "peak_online": n}}
    "notify:<name>"   -> primitives of the admins' reports and alerts (see notify.py), each
                         written at once in a transaction of its own (`put_note_now`)
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import IO, Any, TypeVar

from ..core.model import UserRecord
from .codec import DamagedRecord, decode_record, decode_records, encode_record
from .errors import StoreCorruptError, StoreError
from .files import refuse_foreign_file
from .index_snapshot import FileState, file_state
from .lock import is_locked_for_writing, lock_for_writing
from .primitives import load_primitives
from .pseudonym import Pseudonyms
from .resources import sqlite_refused
from .shelf import Shelf
from .sqlite_dict import SqliteDict

log = logging.getLogger("bot.store")  # its name from before the layers: admins grep it

T = TypeVar("T")

# 2: records may carry client families (codec.py). A store of schema 1 is read as it is and
# marked 2 by the first writer, so that an older release refuses it (it would take records
# with clients for damaged ones) instead of setting them aside.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
HEARTBEAT_INTERVAL = 30  # seconds between heartbeat writes while no event arrives
_USER = "user:"
_USER_PREFIX = _USER.encode()
_DAY = "day:"
_NOTIFY = "notify:"
_DAMAGED = "damaged:user:"  # damaged records set aside, never deleted
_SCAN_BATCH = 10_000  # records decoded together by a full scan
_SCHEMA_KEY = "meta:schema"
_HEARTBEAT_KEY = "meta:heartbeat"
_PSEUDONYMIZED_KEY = "meta:pseudonymized"
_GENERATION_KEY = "meta:generation"


@dataclass(eq=False)
class Batch:
    """What one flush writes, taken from the pending writes in one step (`Store.take_batch`)."""

    records: dict[str, UserRecord | None]  # None: delete
    days: dict[str, dict[str, Any]]
    set_aside: dict[str, bytes]
    heartbeat: int
    superseded: bool = field(default=False)  # a later batch took over all of it

    def __len__(self) -> int:
        return len(self.records)


class Store:
    """Per-user activity records, daily snapshots and the writer's heartbeat, grouped writes.

    One writer at a time (a lock file beside the store says who); any number of readers.
    `put()` only remembers the record; `flush()` writes everything remembered in one transaction.
    Records are kept under `key_of(bare JID)`: the JID itself, or its pseudonym.

    Threads: the in-memory state (pending writes, the batch being written) belongs to one thread,
    the event loop's in the bot. The SQLite connection may be used from any thread, one at a
    time (`_io`): the bot reads and writes in worker threads (`flush_off_loop`, `read_stored`,
    `days_off_loop`) so that its event loop never waits on the disk; the command line uses the
    same methods synchronously.
    """

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        pseudonym_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._clock = clock
        # For the bot's health (metrics, status page): when a batch was last written, and how
        # many batches failed since the store was opened.
        self.last_write_at: float | None = None
        self.failed_writes = 0
        self._pseudonyms = Pseudonyms(pseudonym_key)
        self._pending: dict[str, UserRecord | None] = {}  # None: delete on flush
        self._pending_days: dict[str, dict[str, Any]] = {}
        self._set_aside: dict[str, bytes] = {}  # key -> a damaged value, to keep under it
        self._writing: Batch | None = None  # taken from the pending writes, not yet written
        self._unsettled: asyncio.Future[None] | None = None  # `flush_off_loop`'s batch
        self._days_written = 0  # batches with daily snapshots written (see `days_off_loop`)
        self._io = threading.Lock()  # one user of the SQLite connection at a time
        self._thread: ThreadPoolExecutor | None = None  # see `in_thread`
        self._lock_file: IO[str] | None = None
        self._heartbeat_written = 0
        self.generation = b""  # the store's generation as this writer last read or wrote it
        self.file_state_at_open: FileState | None = None  # before this writer wrote anything
        self._discarded = False  # changes were dropped unwritten: no index snapshot at close
        self.writer_running = False  # readers: whether a writer holds the store right now
        if readonly:
            if not path.exists():
                raise StoreError(
                    f"{path}: no store there yet; the bot creates it when it first runs "
                    "(check [store] path in the config)"
                )
            self.writer_running = is_locked_for_writing(path)
        else:
            self._lock_file = lock_for_writing(path)
        try:
            self._shelf = self._open_shelf()
        except BaseException:
            self._unlock()
            raise
        self._db = self._shelf.dict

    def _open_shelf(self) -> Shelf:
        """Open and check the file; a writer changes nothing before the checks have passed."""
        refuse_foreign_file(self.path)
        if not self.readonly and self.path.exists():
            self.file_state_at_open = file_state(self.path)
        db: SqliteDict | None = None
        try:
            db = SqliteDict(self.path, readonly=self.readonly)
            shelf = Shelf(db)
            version = self._schema_version(db, shelf)
            if version is not None and not self.readonly:
                mismatch = self._pseudonyms.mode_mismatch(bool(shelf.get(_PSEUDONYMIZED_KEY)))
                if mismatch:
                    raise StoreError(f"{self.path}: {mismatch}")
            if not self.readonly:
                db.prepare_for_writing()
                generation = shelf.get(_GENERATION_KEY)
                self.generation = generation if isinstance(generation, bytes) else b""
                if version is None:
                    with db.transaction():
                        shelf[_SCHEMA_KEY] = SCHEMA_VERSION
                        shelf[_PSEUDONYMIZED_KEY] = self._pseudonyms.enabled
                        self._next_generation(shelf)
                elif version != SCHEMA_VERSION:
                    with db.transaction():
                        shelf[_SCHEMA_KEY] = SCHEMA_VERSION
                        self._next_generation(shelf)
                    log.info(
                        "%s: store of schema %d, now marked %d (records with client families)",
                        self.path,
                        version,
                        SCHEMA_VERSION,
                    )
            self._heartbeat_written = int(shelf.get(_HEARTBEAT_KEY, 0))
        except (sqlite3.DatabaseError, pickle.UnpicklingError) as exc:
            # Asked before closing: the connections' descriptors are part of the answer.
            problem = sqlite_refused(self.path, exc) if isinstance(exc, sqlite3.Error) else None
            if db is not None:
                db.close()
            if problem is not None:
                raise problem from None
            raise StoreCorruptError(
                f"{self.path}: cannot be read as a store ({exc}); it was left untouched. "
                "Restore it from a backup, or move it away to start a new store."
            ) from None
        except BaseException:
            if db is not None:
                db.close()
            raise
        return shelf

    def _schema_version(self, db: SqliteDict, shelf: Shelf) -> int | None:
        """The file's schema version; None for a new store. Refuses files not of ours."""
        path = self.path
        if db.has_dict_table():
            version = shelf.get(_SCHEMA_KEY)
            if version is None and len(db):
                raise StoreCorruptError(
                    f"{path}: holds data but no schema version, so it is not a store of "
                    "xmpp-active-users; it was left untouched. Set [store] path to a new file."
                )
        elif db.is_empty() and not self.readonly:
            version = None
        else:
            raise StoreCorruptError(
                f"{path}: an SQLite database but not a store of xmpp-active-users (no table "
                "Dict); it was left untouched. Set [store] path to another file."
            )
        if version is not None and (type(version) is not int or version not in READABLE_SCHEMAS):
            raise StoreCorruptError(
                f"{path}: schema version {version!r}, but this program reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}; run the xmpp-active-users release "
                "that wrote it"
            )
        return version

    # --- records, by key ----------------------------------------------------------------------

    @property
    def pseudonymized(self) -> bool:
        return self._pseudonyms.enabled

    def key_of(self, bare_jid: str) -> str:
        """The key of a user's record: the bare JID, or its pseudonym (see `Pseudonyms`)."""
        return self._pseudonyms.user(bare_jid)

    def session_key(self, resource: str) -> str:
        """How a session online is kept in a record: the resource, or its pseudonym."""
        return self._pseudonyms.session(resource)

    def get(self, key: str) -> UserRecord | None:
        """The record under `key`: the pending write, else the one being written, else the
        stored one (read here: `in_memory` and `read_stored` split this for the event loop).
        None if there is none, or if it is damaged (then it is set aside under "damaged:" with
        the next flush, logged once, and the user starts afresh)."""
        if key in self._pending:
            return self._pending[key]
        writing = self._writing
        if writing is not None and key in writing.records:
            return writing.records[key]
        try:  # not Shelf.get: it would run the same SELECT twice (`in`, then the read)
            with self._io:
                value: bytes | None = self._db[(_USER + key).encode()]
        except KeyError:
            value = None
        return self.record_from(key, value)

    def in_thread(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Run `work` (which uses the connection) in the store's own worker thread, for the
        event loop: see `submit_in_thread`."""
        return asyncio.wrap_future(self.submit_in_thread(work))

    def submit_in_thread(self, work: Callable[[], T]) -> Future[T]:
        """Run `work` in the store's own worker thread: one thread, so the SQLite work of the
        event loop is done one piece at a time, in order, and its memory stays in one malloc
        arena (a thread per piece would make RSS creep)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="store")
        return self._thread.submit(work)

    def in_memory(self, key: str) -> bool:
        """Whether `get(key)` answers without reading the disk (a change not yet written)."""
        if key in self._pending:
            return True
        writing = self._writing
        return writing is not None and key in writing.records

    def read_stored(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """The stored values of these users' records (None: no record), as on disk, ignoring
        pending writes, in few statements (for a worker thread, see `SqliteDict.get_many`).
        Safe in any thread: touches no in-memory state."""
        raw_keys = {(_USER + key).encode(): key for key in keys}
        with self._io:
            values = self._db.get_many(list(raw_keys))
        return {key: values.get(raw_key) for raw_key, key in raw_keys.items()}

    def record_from(self, key: str, value: bytes | None) -> UserRecord | None:
        """Decode a value from `read_stored`; a damaged one is handled as `get` says (on the
        thread that owns the in-memory state)."""
        if value is None:
            return None
        try:
            return decode_record(value)
        except DamagedRecord as exc:
            if self.readonly:
                _log_damaged(key.encode(), exc)
            else:
                log.error(
                    "Store record of %s is damaged (%s); set aside as %r, the user is tracked "
                    "afresh",
                    key,
                    exc,
                    _DAMAGED + key,
                )
                self._set_aside[_DAMAGED + key] = value
                self._pending[key] = None
            return None

    def put(self, key: str, record: UserRecord) -> None:
        self._pending[key] = record

    def delete(self, key: str) -> None:
        self._pending[key] = None

    def users(self) -> Iterator[tuple[str, UserRecord]]:
        """(key, record) of every user, pending writes included: one query, streamed."""
        for raw_key, record in self.users_by_raw_key():
            yield raw_key.decode("utf-8", errors="replace"), record

    def users_by_raw_key(self) -> Iterator[tuple[bytes, UserRecord]]:
        """`users()` with the key still UTF-8 bytes: the start-up load of a million users
        decodes only the few it keeps (online ones). Damaged records are logged and skipped,
        never deleted."""
        unwritten = (
            self._pending if self._writing is None else self._writing.records | self._pending
        )
        pending = {bare.encode(): record for bare, record in unwritten.items()}
        prefix = len(_USER_PREFIX)
        rows = self._db.items_with_prefix(_USER_PREFIX)
        while True:
            with self._io:
                batch = list(islice(rows, _SCAN_BATCH))
            if not batch:
                break
            records = decode_records([value for _key, value in batch])
            for (key, _value), record in zip(batch, records, strict=True):
                raw_key = key[prefix:]
                if pending and raw_key in pending:
                    continue
                if isinstance(record, DamagedRecord):
                    _log_damaged(raw_key, record)
                else:
                    yield raw_key, record
        for raw_key, unwritten_record in pending.items():
            if unwritten_record is not None:
                yield raw_key, unwritten_record

    # --- the admins' reports and alerts (notify.py) ---------------------------------------------

    def notes(self) -> dict[str, Any]:
        """Every "notify:" value, by name (any thread); a damaged one is logged and skipped."""
        with self._io:
            rows = self._db.items_with_rare_prefix(_NOTIFY.encode())
        notes = {}
        for key, value in rows:
            name = key[len(_NOTIFY) :].decode(errors="replace")
            try:
                notes[name] = load_primitives(value)
            except pickle.UnpicklingError as exc:
                log.error("Store value %r is damaged (%s); ignored, left in place", name, exc)
        return notes

    def put_note_now(self, name: str, value: Any) -> None:
        """Write one "notify:" value at once, in its own transaction (any thread; the bot's
        worker thread): a report's marker is on disk before the report is sent."""
        try:
            with self._io, self._db.transaction():
                self._shelf[_NOTIFY + name] = value
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: writing {name!r} failed ({exc})") from exc

    # --- daily snapshots (history) ----------------------------------------------------------

    def put_day(self, day: str, snapshot: dict[str, Any]) -> None:
        """Remember one UTC day's figures (primitives only), written with the next flush."""
        self._pending_days[day] = snapshot

    def day(self, day: str) -> dict[str, Any] | None:
        """One day's snapshot (pending first, then being written); None when there is none or it
        is damaged."""
        if day in self._pending_days:
            return self._pending_days[day]
        if self._writing is not None and day in self._writing.days:
            return self._writing.days[day]
        try:
            with self._io:
                value = self._db[(_DAY + day).encode()]
        except KeyError:
            return None
        try:
            snapshot = load_primitives(value)
        except pickle.UnpicklingError as exc:
            log.error("Store snapshot of %s is damaged (%s); ignored, left in place", day, exc)
            return None
        return snapshot if isinstance(snapshot, dict) else None

    def days(self) -> dict[str, dict[str, Any]]:
        """Every stored day's snapshot, pending ones included, by date (YYYY-MM-DD)."""
        return self._stored_days() | self._unwritten_days()

    async def days_off_loop(self) -> dict[str, dict[str, Any]]:
        """`days()` for the event loop: the scan (all keys of the table) runs in a thread."""
        while True:
            written_before = self._days_written
            stored = await self.in_thread(self._stored_days)
            # A batch written after the scan and already dropped from memory would be in
            # neither: scan again (rare: snapshots change once per count).
            if self._days_written == written_before:
                return stored | self._unwritten_days()

    def _unwritten_days(self) -> dict[str, dict[str, Any]]:
        if self._writing is None:
            return self._pending_days
        return self._writing.days | self._pending_days

    def _stored_days(self) -> dict[str, dict[str, Any]]:
        """The snapshots on disk only (safe in any thread)."""
        stored = {}
        with self._io:
            rows = self._db.items_with_rare_prefix(_DAY.encode())
        for key, value in rows:
            day = key[len(_DAY) :].decode(errors="replace")
            try:
                snapshot = load_primitives(value)
            except Exception as exc:  # any unpickling failure, or a refused class
                log.error(
                    "Store snapshot of day %s is damaged (%s); ignored, left in place", day, exc
                )
                continue
            stored[day] = snapshot
        return stored

    @property
    def heartbeat(self) -> int:
        """The last time the writer was known alive (0: never)."""
        return self._heartbeat_written

    @property
    def pending(self) -> int:
        """Users whose changes are not on disk yet (pending, or in the batch being written)."""
        if self._writing is None:
            return len(self._pending)
        return len(self._pending.keys() | self._writing.records.keys())

    # --- writing ---------------------------------------------------------------------------

    def flush(
        self,
        now: int,
        *,
        heartbeat_interval: int = HEARTBEAT_INTERVAL,
        batch: Batch | None = None,
    ) -> int:
        """Write all pending records and the heartbeat `now` in one transaction.

        Without pending records, only refreshes a heartbeat older than `heartbeat_interval`.
        Returns the number of records written. On failure (disk full, file made read-only) the
        records stay pending for the next flush and StoreError says what happened.

        With `batch` (taken by `take_batch`), writes that batch only, from any thread; the owner
        of the in-memory state then calls `settle` (this is how `flush_off_loop` works).
        """
        if batch is not None:
            self._write(batch)
            return len(batch)
        batch = self.take_batch(now, heartbeat_interval=heartbeat_interval)
        if batch is None:
            return 0
        try:
            self._write(batch)
        except BaseException:
            self.settle(batch, written=False)
            raise
        self.settle(batch, written=True)
        return len(batch)

    async def flush_off_loop(
        self, now: int, *, heartbeat_interval: int = HEARTBEAT_INTERVAL
    ) -> int:
        """`flush` for the event loop: the batch is taken here, written in a worker thread, and
        settled back here (written: dropped; failed: merged back into the pending writes, where
        a change made meanwhile wins). One batch at a time: a second call waits until the first
        is settled. Until then `get` answers from the batch. Cancelling the caller does not
        cancel the write: it is settled when it ends."""
        while self._unsettled is not None:
            await asyncio.wait([self._unsettled])
        batch = self.take_batch(now, heartbeat_interval=heartbeat_interval)
        if batch is None:
            return 0
        # `self.flush`, looked up now: tests replace it to inject faults.
        write = self.in_thread(partial(self.flush, batch.heartbeat, batch=batch))
        unsettled = self._unsettled = asyncio.get_running_loop().create_future()

        def settle(write: asyncio.Future[int]) -> None:
            failed = write.cancelled() or write.exception() is not None
            self.settle(batch, written=not failed)
            if self._unsettled is unsettled:
                self._unsettled = None
            unsettled.set_result(None)

        try:
            written = await asyncio.shield(write)
        except asyncio.CancelledError:
            if write.done():
                settle(write)
            else:  # the thread goes on writing: settle when it is done
                write.add_done_callback(settle)
            raise
        except BaseException:
            settle(write)
            raise
        settle(write)
        return written

    def take_batch(self, now: int, *, heartbeat_interval: int = HEARTBEAT_INTERVAL) -> Batch | None:
        """Take every pending write (and the heartbeat `now`) as the batch being written; None
        when there is nothing to write. A batch still being written is folded into this one
        (for a synchronous flush while a write is in flight: the newer values win)."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        if (
            not self._pending
            and not self._pending_days
            and now - self._heartbeat_written < heartbeat_interval
        ):
            return None
        batch = Batch(self._pending, self._pending_days, self._set_aside, now)
        previous = self._writing
        if previous is not None:
            previous.superseded = True
            batch.records = previous.records | batch.records
            batch.days = previous.days | batch.days
            batch.set_aside = previous.set_aside | batch.set_aside
        self._pending, self._pending_days, self._set_aside = {}, {}, {}
        self._writing = batch
        return batch

    def settle(self, batch: Batch, *, written: bool) -> None:
        """After a batch's write: drop it, or (failed) merge it back into the pending writes,
        where changes made since it was taken win."""
        if self._writing is batch:
            self._writing = None
        if written:
            self.last_write_at = self._clock()
        else:
            self.failed_writes += 1
        if batch.superseded:
            return  # the batch that took it over settles its contents
        if written:
            self._heartbeat_written = batch.heartbeat
            if batch.days:
                self._days_written += 1
            return
        for key, record in batch.records.items():
            self._pending.setdefault(key, record)
        for day, snapshot in batch.days.items():
            self._pending_days.setdefault(day, snapshot)
        for key, value in batch.set_aside.items():
            self._set_aside.setdefault(key, value)

    def _write(self, batch: Batch) -> None:
        """One transaction (any thread; the connection is taken for its duration)."""
        db, shelf = self._db, self._shelf
        try:
            with self._io, db.transaction():
                written = [(_USER + key, record) for key, record in batch.records.items()]
                db.set_many([(k.encode(), encode_record(r)) for k, r in written if r is not None])
                db.delete_many([k.encode() for k, r in written if r is None])
                for day, snapshot in batch.days.items():
                    shelf[_DAY + day] = snapshot
                for key, value in batch.set_aside.items():
                    db[key.encode()] = value
                shelf[_HEARTBEAT_KEY] = batch.heartbeat
                generation = self._next_generation(shelf, commit=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: writing {len(batch)} records failed ({exc})") from exc
        self.generation = generation

    def _next_generation(self, shelf: Shelf, *, commit: bool = True) -> bytes:
        """A new generation, written inside the caller's transaction (so an index snapshot of
        the store before it is stale from the commit on). `commit`: the caller takes it as
        the store's once its transaction has committed."""
        generation = os.urandom(16)
        shelf[_GENERATION_KEY] = generation
        if commit:
            self.generation = generation
        return generation

    def discard_pending(self) -> int:
        """Forget what could not be written (shutdown gave up); returns how many users' changes
        are lost. Daily snapshots pending are dropped too."""
        lost = len(self._pending)
        self._discarded = self._discarded or bool(lost or self._pending_days)
        self._pending.clear()
        self._pending_days.clear()
        self._set_aside.clear()
        return lost

    def close(
        self, now: int | None = None, *, then: Callable[[bytes, FileState], object] | None = None
    ) -> None:
        """Write what is pending (writers), then release the file and the lock.

        `now` records the heartbeat: only the bot, which is alive, passes it. Other writers
        (an import) keep the heartbeat as it was, so a crashed bot's sessions still end when
        the bot was last alive.

        `then(generation, file state)`: called once everything is written and the file closed
        (checkpointed), before the lock is released, so that no other writer can come between;
        not called if a write failed. The index snapshot is written there (its failure is
        logged, never raised: the next start reads every record instead).
        """
        written = False
        try:
            if not self.readonly and (now is not None or self._pending or self._pending_days):
                self.flush(self._heartbeat_written if now is None else now, heartbeat_interval=0)
            written = not (self.readonly or self._pending or self._pending_days or self._discarded)
        finally:
            with self._io:
                self._shelf.close()
            try:
                if then is not None and written and self.generation:
                    then(self.generation, file_state(self.path))
            except Exception as exc:
                log.error("%s: the index snapshot was not written (%s)", self.path, exc)
            finally:
                self._unlock()
                if self._thread is not None:
                    self._thread.shutdown(wait=False)

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_damaged(raw_key: bytes, problem: DamagedRecord) -> None:
    log.error(
        "Store record of %s is malformed (%s); ignored, left in place",
        raw_key.decode(errors="replace"),
        problem,
    )


def inactive_users(path: Path, active_since: int) -> list[str]:
    """Users offline and last active before `active_since`, read by a separate read-only
    connection: safe in a worker thread while the bot writes (a full scan, hence the thread)."""
    with Store(path, readonly=True) as reader:
        return [
            bare_jid
            for bare_jid, record in reader.users()
            if not record.sessions and record.last_active < active_since
        ]


async def flush_periodically(
    store: Store,
    interval: float,
    clock: Callable[[], float] = time.time,
    repeat_error_after: float = 600.0,
    before_flush: Callable[[], None] = lambda: None,
) -> None:
    """Flush every `interval` seconds, on fixed ticks so that the gap between flushes never
    grows: an event is on disk at most `interval` (plus one flush's own time) after it happened.

    A failed flush keeps its records pending for the next tick. It is logged once (again when
    the reason changes, and every `repeat_error_after` seconds while it lasts: a full disk
    must not fill the log too), and the recovery is logged too. A failing `before_flush` (the
    day's peak) is logged at most once per `repeat_error_after`; the flush goes on."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    failing_since: float | None = None
    last_reason, last_logged, failures = "", 0.0, 0
    hook_logged = -repeat_error_after
    while True:
        next_tick = max(next_tick + interval, loop.time())  # no backlog after a stall
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
        try:
            before_flush()
        except Exception:  # the hook's fault (the day's peak) must never stop the records
            if loop.time() - hook_logged >= repeat_error_after:
                log.exception("Before a flush, the hook failed; the records are written anyway")
                hook_logged = loop.time()
        try:
            written = await store.flush_off_loop(int(clock()))
        except StoreError as exc:
            failures += 1
            now = loop.time()
            if failing_since is None:
                failing_since = now
            if str(exc) != last_reason or now - last_logged >= repeat_error_after:
                log.error("%s; they are kept in memory and retried at the next flush", exc)
                last_reason, last_logged = str(exc), now
            continue
        if failing_since is not None:
            log.warning(
                "Store writes work again after %d failed flushes over %.0f s; %d users written",
                failures,
                loop.time() - failing_since,
                written,
            )
            failing_since, last_reason, failures = None, "", 0
        if written:
            log.debug("Stored %d changed users", written)
