"""Opening the store's file: the checks before anything is changed, the schema, the first write.

A file that is not a store of ours, or of a schema this release cannot read, is refused and
left untouched; one the system cannot open for want of a resource is said as such
(`resources.py`), never as damaged.
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreCorruptError, StoreError
from .files import refuse_foreign_file
from .index_snapshot import FileState, file_state
from .keys import (
    GENERATION_KEY,
    HEARTBEAT_KEY,
    PSEUDONYMIZED_KEY,
    READABLE_SCHEMAS,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    new_generation,
)
from .pseudonym import Pseudonyms
from .resources import sqlite_refused
from .shelf import Shelf
from .sqlite_dict import SqliteDict

log = logging.getLogger("bot.store")


@dataclass(frozen=True)
class OpenedShelf:
    """The checked shelf, and what the store keeps from its opening."""

    shelf: Shelf
    heartbeat: int  # the last time the writer was known alive (0: never)
    generation: bytes  # writers only: the store's generation, b"" for readers
    file_state: FileState | None  # writers only: the file before this writer wrote anything


def open_shelf(path: Path, *, readonly: bool, pseudonyms: Pseudonyms) -> OpenedShelf:
    """Open and check the file; a writer changes nothing before the checks have passed (then
    marks a new store, or one of an older schema, with SCHEMA_VERSION)."""
    refuse_foreign_file(path)
    state = file_state(path) if not readonly and path.exists() else None
    db: SqliteDict | None = None
    try:
        db = SqliteDict(path, readonly=readonly)
        shelf = Shelf(db)
        version = _schema_version(path, db, shelf, readonly=readonly)
        generation = b""
        if not readonly:
            if version is not None:
                mismatch = pseudonyms.mode_mismatch(bool(shelf.get(PSEUDONYMIZED_KEY)))
                if mismatch:
                    raise StoreError(f"{path}: {mismatch}")
            db.prepare_for_writing()
            stored = shelf.get(GENERATION_KEY)
            generation = stored if isinstance(stored, bytes) else b""
            if version != SCHEMA_VERSION:
                with db.transaction():
                    shelf[SCHEMA_KEY] = SCHEMA_VERSION
                    if version is None:
                        shelf[PSEUDONYMIZED_KEY] = pseudonyms.enabled
                    generation = new_generation(shelf)
                if version is not None:
                    log.info(
                        "%s: store of schema %d, now marked %d (records with client families)",
                        path,
                        version,
                        SCHEMA_VERSION,
                    )
        heartbeat = int(shelf.get(HEARTBEAT_KEY, 0))
    except (sqlite3.DatabaseError, pickle.UnpicklingError) as exc:
        # Asked before closing: the connections' descriptors are part of the answer.
        problem = sqlite_refused(path, exc) if isinstance(exc, sqlite3.Error) else None
        if db is not None:
            db.close()
        if problem is not None:
            raise problem from None
        raise StoreCorruptError(
            f"{path}: cannot be read as a store ({exc}); it was left untouched. "
            "Restore it from a backup, or move it away to start a new store."
        ) from None
    except BaseException:
        if db is not None:
            db.close()
        raise
    return OpenedShelf(shelf, heartbeat, generation, state)


def _schema_version(path: Path, db: SqliteDict, shelf: Shelf, *, readonly: bool) -> int | None:
    """The file's schema version; None for a new store. Refuses files not of ours."""
    if db.has_dict_table():
        version = shelf.get(SCHEMA_KEY)
        if version is None and len(db):
            raise StoreCorruptError(
                f"{path}: holds data but no schema version, so it is not a store of "
                "xmpp-active-users; it was left untouched. Set [store] path to a new file."
            )
    elif db.is_empty() and not readonly:
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
