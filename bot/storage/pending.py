"""The pending writes: what the store holds in memory until a flush has written it.

Records, days' snapshots and damaged values set aside, changed since the last flush; and the
batch being written (taken from them by a flush, not yet settled), which reads still see.
No I/O: the store reads the file for what is not here. Belongs to one thread, the event
loop's in the bot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.model import UserRecord
from .keys import DAMAGED


@dataclass(eq=False)
class Batch:
    """What one flush writes, taken from the pending writes in one step (`PendingWrites.take`)."""

    records: dict[str, UserRecord | None]  # None: delete
    days: dict[str, dict[str, Any]]
    set_aside: dict[str, bytes]  # "damaged:user:<key>" -> the damaged value
    heartbeat: int
    superseded: bool = field(default=False)  # a later batch took over all of it

    def __len__(self) -> int:
        return len(self.records)


class PendingWrites:
    """Changes not yet on disk, newest first: the pending ones, then the batch being written."""

    def __init__(self) -> None:
        self._records: dict[str, UserRecord | None] = {}  # None: delete on flush
        self._days: dict[str, dict[str, Any]] = {}
        self._set_aside: dict[str, bytes] = {}
        self.writing: Batch | None = None  # taken by a flush, not yet settled

    # --- records ---------------------------------------------------------------------------

    def put(self, key: str, record: UserRecord | None) -> None:
        """Remember a user's record (None: delete it)."""
        self._records[key] = record

    def set_aside(self, key: str, value: bytes) -> None:
        """Keep a damaged value under "damaged:", and delete the user's record, with the next
        flush: the user starts afresh, the damaged value is never lost."""
        self._set_aside[DAMAGED + key] = value
        self._records[key] = None

    def has(self, key: str) -> bool:
        """Whether a user's record is here (a change not yet written)."""
        writing = self.writing
        return key in self._records or (writing is not None and key in writing.records)

    def record(self, key: str) -> UserRecord | None:
        """A user's record, newest first (None: deleted); only for keys that `has` here."""
        if key in self._records:
            return self._records[key]
        assert self.writing is not None, "record() of a key not pending"
        return self.writing.records[key]

    def records(self) -> dict[str, UserRecord | None]:
        """Every unwritten record by key, the pending ones over the batch being written."""
        if self.writing is None:
            return self._records
        return self.writing.records | self._records

    def __len__(self) -> int:
        """Users whose changes are not on disk yet (pending, or in the batch being written)."""
        if self.writing is None:
            return len(self._records)
        return len(self._records.keys() | self.writing.records.keys())

    # --- days' snapshots ---------------------------------------------------------------------

    def put_day(self, day: str, snapshot: dict[str, Any]) -> None:
        self._days[day] = snapshot

    def has_day(self, day: str) -> bool:
        return day in self._days or (self.writing is not None and day in self.writing.days)

    def days(self) -> dict[str, dict[str, Any]]:
        """Every unwritten day's snapshot, the pending ones over the batch being written."""
        if self.writing is None:
            return self._days
        return self.writing.days | self._days

    # --- flushes -----------------------------------------------------------------------------

    def has_changes(self) -> bool:
        """Whether records or days' snapshots wait for a flush (the batch being written aside)."""
        return bool(self._records or self._days)

    def take(self, heartbeat: int) -> Batch:
        """Take every pending change as the batch being written. A batch still being written
        is folded into this one (a synchronous flush while a write is in flight: the newer
        values win), and marked superseded."""
        batch = Batch(self._records, self._days, self._set_aside, heartbeat)
        previous = self.writing
        if previous is not None:
            previous.superseded = True
            batch.records = previous.records | batch.records
            batch.days = previous.days | batch.days
            batch.set_aside = previous.set_aside | batch.set_aside
        self._records, self._days, self._set_aside = {}, {}, {}
        self.writing = batch
        return batch

    def settle(self, batch: Batch, *, written: bool) -> None:
        """After a batch's write: drop it, or (failed) merge it back into the pending changes,
        where changes made since it was taken win. A superseded batch changes nothing: the
        batch that took it over settles its contents."""
        if self.writing is batch:
            self.writing = None
        if written or batch.superseded:
            return
        for key, record in batch.records.items():
            self._records.setdefault(key, record)
        for day, snapshot in batch.days.items():
            self._days.setdefault(day, snapshot)
        for key, value in batch.set_aside.items():
            self._set_aside.setdefault(key, value)

    def discard(self) -> tuple[int, bool]:
        """Forget the pending changes (not the batch being written): how many users' changes,
        and whether anything at all, were dropped."""
        lost, anything = len(self._records), bool(self._records or self._days)
        self._records, self._days, self._set_aside = {}, {}, {}
        return lost, anything
