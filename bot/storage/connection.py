"""The store's connection, one user at a time: raw reads and the write transactions.

Any thread may use it (the bot reads and writes in its worker thread, the command line in its
own); a lock serializes them. Values come and go as bytes (records, see codec.py) or as
primitives through the shelf (days' snapshots, notes, meta); what they mean is the store's.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from .codec import encode_record
from .errors import StoreError
from .keys import DAY, HEARTBEAT_KEY, USER, new_generation
from .pending import Batch
from .shelf import Shelf

_SCAN_BATCH = 10_000  # rows read together by a full scan


class StoreConnection:
    """The shelf and the SQLite mapping under it, used by one thread at a time."""

    def __init__(self, path: Path, shelf: Shelf) -> None:
        self.path = path
        self.shelf = shelf
        self.db = shelf.dict
        self._lock = threading.Lock()

    def value(self, key: str) -> bytes | None:
        """The raw value under `key`, None if there is none. Not Shelf.get: it would run the
        same SELECT twice (`in`, then the read)."""
        try:
            with self._lock:
                return self.db[key.encode()]
        except KeyError:
            return None

    def values(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The raw values of those of `keys` that exist, in few statements."""
        with self._lock:
            return self.db.get_many(list(keys))

    def rows_with_prefix(self, prefix: bytes) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every (key, value) whose key starts with `prefix`, one query streamed in pieces;
        the connection is taken for each piece only."""
        rows = self.db.items_with_prefix(prefix)
        while True:
            with self._lock:
                piece = list(islice(rows, _SCAN_BATCH))
            if not piece:
                return
            yield piece

    def rows_with_rare_prefix(self, prefix: str) -> list[tuple[bytes, bytes]]:
        """`rows_with_prefix` for a prefix few keys have: a range of the key index."""
        with self._lock:
            return self.db.items_with_rare_prefix(prefix.encode())

    def write(self, batch: Batch) -> bytes:
        """Write `batch` and its heartbeat in one transaction; returns the store's new
        generation. StoreError when it fails (nothing written)."""
        db, shelf = self.db, self.shelf
        try:
            with self._lock, db.transaction():
                written = [(USER + key, record) for key, record in batch.records.items()]
                db.set_many([(k.encode(), encode_record(r)) for k, r in written if r is not None])
                db.delete_many([k.encode() for k, r in written if r is None])
                for day, snapshot in batch.days.items():
                    shelf[DAY + day] = snapshot
                for key, value in batch.set_aside.items():
                    db[key.encode()] = value
                shelf[HEARTBEAT_KEY] = batch.heartbeat
                generation = new_generation(shelf)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: writing {len(batch)} records failed ({exc})") from exc
        return generation

    def write_value(self, key: str, value: Any, *, name: str) -> None:
        """Write one value (primitives) at once, in a transaction of its own; `name` is what
        a failure calls it."""
        try:
            with self._lock, self.db.transaction():
                self.shelf[key] = value
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: writing {name!r} failed ({exc})") from exc

    def close(self) -> None:
        with self._lock:
            self.shelf.close()
