"""The activity store: users' records, daily snapshots and the writer's heartbeat, in a shelf.

A thin owner of its parts: the file's opening and checks (`opening.py`), the connection and
its transactions (`connection.py`), the pending writes laid over the file (`pending.py`), the
worker thread (`worker.py`), the full scan (`scan.py`), the days' snapshots and the notes as
stored (`snapshots.py`); the keys are in `keys.py`, the flush duty in `flushing.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

from ..core.model import UserRecord
from .codec import DamagedRecord, decode_record
from .connection import StoreConnection
from .damaged import log_damaged, log_set_aside
from .errors import StoreError
from .files import refuse_missing_store
from .index_snapshot import FileState, file_state
from .keys import NOTIFY, USER
from .lock import is_locked_for_writing, lock_for_writing
from .opening import open_shelf
from .pending import Batch, PendingWrites
from .pseudonym import Pseudonyms
from .scan import scan_users
from .snapshots import stored_day, stored_days, stored_notes
from .worker import StoreThread

# Imported from here by the callers (bot/app/daemon.py, tests): the flush duty and the error.
__all__ = ["HEARTBEAT_INTERVAL", "Store", "StoreError", "inactive_users"]

log = logging.getLogger("bot.store")  # its name from before the layers: admins grep it

T = TypeVar("T")

HEARTBEAT_INTERVAL = 30  # seconds between heartbeat writes while no event arrives


class Store:
    """Per-user activity records, daily snapshots and the writer's heartbeat, grouped writes.

    One writer at a time (a lock file beside the store says who); any number of readers.
    `put()` only remembers the record; `flush()` writes everything remembered in one transaction.
    Records are kept under `key_of(bare JID)`: the JID itself, or its pseudonym.

    Threads: the pending writes belong to one thread, the event loop's in the bot. The
    connection may be used from any thread, one at a time: the bot reads and writes in the
    store's worker thread (`flush_off_loop`, `read_stored`, `days_off_loop`) so that its event
    loop never waits on the disk; the command line uses the same methods synchronously.
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
        self._pending = PendingWrites()
        self._unsettled: asyncio.Future[None] | None = None  # `flush_off_loop`'s batch
        self._days_written = 0  # batches with daily snapshots written (see `days_off_loop`)
        self._thread = StoreThread()
        self._lock_file: IO[str] | None = None
        self._discarded = False  # changes were dropped unwritten: no index snapshot at close
        self.writer_running = False  # readers: whether a writer holds the store right now
        if readonly:
            refuse_missing_store(path)
            self.writer_running = is_locked_for_writing(path)
        else:
            self._lock_file = lock_for_writing(path)
        try:
            opened = open_shelf(path, readonly=readonly, pseudonyms=self._pseudonyms)
        except BaseException:
            self._unlock()
            raise
        self._heartbeat_written = opened.heartbeat
        self.generation = opened.generation  # as this writer last read or wrote it
        self.file_state_at_open: FileState | None = opened.file_state
        self._connection = StoreConnection(path, opened.shelf)
        self._shelf, self._db = opened.shelf, opened.shelf.dict  # tests inject faults there

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
        None if there is none, or if it is damaged (see `record_or_set_aside`)."""
        if self._pending.has(key):
            return self._pending.record(key)
        return self.record_or_set_aside(key, self._connection.value(USER + key))

    def in_memory(self, key: str) -> bool:
        """Whether `get(key)` answers without reading the disk (a change not yet written)."""
        return self._pending.has(key)

    def read_stored(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """The stored values of these users' records (None: no record), ignoring pending
        writes, in few statements. Safe in any thread: touches no in-memory state."""
        raw_keys = {(USER + key).encode(): key for key in keys}
        values = self._connection.values(raw_keys)
        return {key: values.get(raw_key) for raw_key, key in raw_keys.items()}

    def record_or_set_aside(self, key: str, value: bytes | None) -> UserRecord | None:
        """The record of a value from `read_stored` (None: no record), on the thread that owns
        the pending writes. A damaged value gives None too: a writer sets it aside under
        "damaged:" with the next flush (logged once; the user starts afresh), a reader logs it
        and leaves it in place."""
        if value is None:
            return None
        try:
            return decode_record(value)
        except DamagedRecord as exc:
            if self.readonly:
                log_damaged(key.encode(), exc)
            else:
                log_set_aside(key, exc)
                self._pending.set_aside(key, value)
            return None

    def put(self, key: str, record: UserRecord) -> None:
        self._pending.put(key, record)

    def delete(self, key: str) -> None:
        self._pending.put(key, None)

    def users(self) -> Iterator[tuple[str, UserRecord]]:
        """(key, record) of every user, pending writes included: one query, streamed."""
        for raw_key, record in self.users_by_raw_key():
            yield raw_key.decode("utf-8", errors="replace"), record

    def users_by_raw_key(self) -> Iterator[tuple[bytes, UserRecord]]:
        """`users()` with the key still UTF-8 bytes (see `scan_users`)."""
        yield from scan_users(self._connection, self._pending.records())

    # --- the worker thread ----------------------------------------------------------------------

    def in_thread(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Run `work` (which uses the connection) in the store's worker thread, for the loop."""
        return self._thread.run(work)

    def submit_in_thread(self, work: Callable[[], T]) -> Future[T]:
        """`in_thread` from any thread."""
        return self._thread.submit(work)

    # --- the admins' reports and alerts (notify.py), daily snapshots (history) ------------------

    def notes(self) -> dict[str, Any]:
        """Every "notify:" value, by name (any thread); a damaged one is logged and skipped."""
        return stored_notes(self._connection)

    def put_note_now(self, name: str, value: Any) -> None:
        """Write one "notify:" value at once, in its own transaction (any thread; the bot's
        worker thread): a report's marker is on disk before the report is sent."""
        self._connection.write_value(NOTIFY + name, value, name=name)

    def put_day(self, day: str, snapshot: dict[str, Any]) -> None:
        """Remember one UTC day's figures (primitives only), written with the next flush."""
        self._pending.put_day(day, snapshot)

    def day(self, day: str) -> dict[str, Any] | None:
        """One day's snapshot (pending first, then being written); None when there is none or it
        is damaged."""
        if self._pending.has_day(day):
            return self._pending.days()[day]
        return stored_day(self._connection, day)

    def days(self) -> dict[str, dict[str, Any]]:
        """Every stored day's snapshot, pending ones included, by date (YYYY-MM-DD)."""
        return stored_days(self._connection) | self._pending.days()

    async def days_off_loop(self) -> dict[str, dict[str, Any]]:
        """`days()` for the event loop: the scan (all keys of the table) runs in a thread."""
        while True:
            written_before = self._days_written
            stored = await self.in_thread(partial(stored_days, self._connection))
            # A batch written after the scan and already dropped from memory would be in
            # neither: scan again (rare: snapshots change once per count).
            if self._days_written == written_before:
                return stored | self._pending.days()

    @property
    def heartbeat(self) -> int:
        """The last time the writer was known alive (0: never)."""
        return self._heartbeat_written

    @property
    def pending(self) -> int:
        """Users whose changes are not on disk yet (see `PendingWrites`)."""
        return len(self._pending)

    # --- writing ---------------------------------------------------------------------------

    def flush(self, now: int, *, heartbeat_interval: int = HEARTBEAT_INTERVAL) -> int:
        """Write all pending records and the heartbeat `now` in one transaction, here.

        Without pending records, only refreshes a heartbeat older than `heartbeat_interval`.
        Returns the number of records written. On failure (disk full, file made read-only) the
        records stay pending for the next flush and StoreError says what happened.
        """
        batch = self.take_batch(now, heartbeat_interval=heartbeat_interval)
        if batch is None:
            return 0
        try:
            self.write_batch(batch)
        except BaseException:
            self.settle(batch, written=False)
            raise
        self.settle(batch, written=True)
        return len(batch)

    async def flush_off_loop(
        self, now: int, *, heartbeat_interval: int = HEARTBEAT_INTERVAL
    ) -> int:
        """`flush` for the event loop: the batch is taken here, written in the worker thread, and
        settled back here (written: dropped; failed: merged back into the pending writes, where
        a change made meanwhile wins). One batch at a time: a second call waits until the first
        is settled. Until then `get` answers from the batch. Cancelling the caller does not
        cancel the write: it is settled when it ends."""
        while self._unsettled is not None:
            await asyncio.wait([self._unsettled])
        batch = self.take_batch(now, heartbeat_interval=heartbeat_interval)
        if batch is None:
            return 0
        # `self.write_batch`, looked up now: tests replace it to inject faults.
        write = self.in_thread(partial(self.write_batch, batch))
        unsettled = self._unsettled = asyncio.get_running_loop().create_future()

        def settle(write: asyncio.Future[None]) -> None:
            failed = write.cancelled() or write.exception() is not None
            self.settle(batch, written=not failed)
            if self._unsettled is unsettled:
                self._unsettled = None
            unsettled.set_result(None)

        try:
            await asyncio.shield(write)
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
        return len(batch)

    def take_batch(self, now: int, *, heartbeat_interval: int = HEARTBEAT_INTERVAL) -> Batch | None:
        """Take every pending write (and the heartbeat `now`) as the batch being written; None
        when there is nothing to write (see `PendingWrites.take`)."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        if not self._pending.has_changes() and now - self._heartbeat_written < heartbeat_interval:
            return None
        return self._pending.take(now)

    def write_batch(self, batch: Batch) -> None:
        """Write a batch from `take_batch` in one transaction (any thread); then `settle` it."""
        self.generation = self._connection.write(batch)

    def settle(self, batch: Batch, *, written: bool) -> None:
        """After a batch's write: count it, and drop it or merge it back (`PendingWrites`)."""
        if written:
            self.last_write_at = self._clock()
        else:
            self.failed_writes += 1
        if written and not batch.superseded:
            self._heartbeat_written = batch.heartbeat
            if batch.days:
                self._days_written += 1
        self._pending.settle(batch, written=written)

    def discard_pending(self) -> int:
        """Forget what could not be written (shutdown gave up); returns how many users' changes
        are lost. Daily snapshots pending are dropped too."""
        lost, anything = self._pending.discard()
        self._discarded = self._discarded or anything
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
            if not self.readonly and (now is not None or self._pending.has_changes()):
                self.flush(self._heartbeat_written if now is None else now, heartbeat_interval=0)
            written = not (self.readonly or self._pending.has_changes() or self._discarded)
        finally:
            self._connection.close()
            try:
                if then is not None and written and self.generation:
                    then(self.generation, file_state(self.path))
            except Exception as exc:
                log.error("%s: the index snapshot was not written (%s)", self.path, exc)
            finally:
                self._unlock()
                self._thread.shutdown()

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
