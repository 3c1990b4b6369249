"""Prosody's SQL storage: lastlog2 and account_activity rows of a mod_storage_sql SQLite database.

    prosody-sql               lastlog2 or account_activity in a mod_storage_sql SQLite database

Read-only and streamed user by user, each field bounded (a row SQLite refuses as too big is
rejected alone); each user's rows become the table Prosody's file would hold, interpreted as
the files are (prosody.activity_from). The checks, the bounds and the merge: importer.py.
"""

from __future__ import annotations

import json
import reprlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .importer import MAX_DATA_FILE, Entry, Rejected
from .prosody import STORE_OF_SOURCE, activity_from

MAX_SORTED_NAME = 16 << 20  # bytes of a name SQLite may sort (more: the database is refused)
_SOURCE_OF_STORE = {store: source for source, store in STORE_OF_SOURCE.items()}


def read_sql(path: Path, *, now: float | None = None) -> Iterator[Entry]:
    """lastlog2 and account_activity rows of a mod_storage_sql SQLite database (read-only),
    streamed user by user; `now` (default: the clock) is what "in the future" is measured from.
    A row with a field over MAX_DATA_FILE bytes is rejected unread (SQLite's length limit
    refuses it before loading it); the rows are put in order by their names on a connection
    of its own, with a limit of MAX_SORTED_NAME (beyond, the database is refused)."""
    if not path.is_file():
        yield Rejected(str(path), "no such file")
        return
    try:
        rows = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        order = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        yield Rejected(str(path), f"not a Prosody SQL storage database ({exc})")
        return
    try:
        rows.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_DATA_FILE)
        order.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_SORTED_NAME)
        yield from _sql_users(rows, order.execute(_SQL_ORDER), path, now)
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_TOOBIG":
            reason = f"a user name, domain or store of more than {MAX_SORTED_NAME} bytes"
        else:
            reason = str(exc)
        yield Rejected(str(path), f"not a Prosody SQL storage database ({reason})")
    finally:
        rows.close()
        order.close()


# Each user's rows together (the order of Prosody's unique index), fetched by rowid in batches:
# a row SQLite refuses as too big is then read alone, and rejected alone.
_SQL_ORDER = """SELECT rowid FROM "prosody" WHERE "store" IN ('lastlog2', 'account_activity')
    ORDER BY "host", "user", "store", "key", rowid"""
_SQL_COLUMNS = ("host", "user", "store", "key", "type", "value")
_SQL_ROWS = 'SELECT rowid, "host", "user", "store", "key", "type", "value" FROM "prosody"'
_SQL_BATCH = 500


def _sql_users(
    db: sqlite3.Connection, order: sqlite3.Cursor, path: Path, now: float | None
) -> Iterator[Entry]:
    user_data: dict[str, Any] = {}
    current: tuple[str, str, str] | None = None
    for rows in _sql_batches(db, order):
        for rowid, row in rows:
            if isinstance(row, str):
                yield Rejected(f"{path}: {_sql_row_name(db, rowid)}", row)
                continue
            host, user, store, key, kind, value = row
            where = f"{path}: {user}@{host} store {store} key {key}"
            if (host, user, store) != current:
                if current is not None and user_data:
                    yield _sql_activity(path, current, user_data, now)
                current, user_data = (host, user, store), {}
            try:
                user_data[key] = _sql_value(kind, value)
            except ValueError as exc:
                yield Rejected(where, str(exc))
    if current is not None and user_data:
        yield _sql_activity(path, current, user_data, now)


def _sql_batches(
    db: sqlite3.Connection, order: sqlite3.Cursor
) -> Iterator[list[tuple[int, tuple[Any, ...] | str]]]:
    """(rowid, its row or why it cannot be read) in the order of `order`'s rowids."""
    while rowids := [rowid for (rowid,) in order.fetchmany(_SQL_BATCH)]:
        marks = ",".join("?" * len(rowids))
        try:
            query = f"{_SQL_ROWS} WHERE rowid IN ({marks})"
            found = {row[0]: row[1:] for row in db.execute(query, rowids)}
        except sqlite3.DataError:  # a field over the limit somewhere: row by row
            yield [(rowid, _sql_row(db, rowid)) for rowid in rowids]
        else:
            yield [(rowid, found[rowid]) for rowid in rowids]


def _sql_row(db: sqlite3.Connection, rowid: int) -> tuple[Any, ...] | str:
    """The row, or which field is too big (its size read without loading it)."""
    try:
        ((_, *row),) = db.execute(f"{_SQL_ROWS} WHERE rowid = ?", (rowid,))
    except sqlite3.DataError:
        sizes = {column: _field_size(db, column, rowid) for column in _SQL_COLUMNS}
        column = max(sizes, key=lambda name: sizes[name])
        return f"a {column} of {sizes[column]} bytes (at most {MAX_DATA_FILE})"
    return tuple(row)


def _sql_row_name(db: sqlite3.Connection, rowid: int) -> str:
    """user@host store S row N, or row N if the names are the big fields."""
    try:
        ((host, user, store),) = db.execute(
            'SELECT "host", "user", "store" FROM "prosody" WHERE rowid = ?', (rowid,)
        )
    except sqlite3.DataError:
        return f"row {rowid}"
    return f"{user}@{host} store {store} row {rowid}"


def _field_size(db: sqlite3.Connection, column: str, rowid: int) -> int:
    try:
        with db.blobopen("prosody", column, rowid, readonly=True) as field:
            return len(field)
    except sqlite3.Error:  # not a text or blob (a number, NULL): small
        return 0


def _sql_activity(
    path: Path, names: tuple[str, str, str], data: dict[str, Any], now: float | None
) -> Entry:
    host, user, store = names
    where = f"{path}: {user}@{host} {store}"
    return activity_from(_SOURCE_OF_STORE[store], f"{user}@{host}", data, where, now=now)


def _sql_value(kind: str, value: str | bytes | None) -> Any:
    """mod_storage_sql's (type, value) columns, as its own deserialize() reads them."""
    if value is None:
        raise ValueError("value is NULL")
    if isinstance(value, bytes):  # a BLOB: to Lua, a string like any other
        value = value.decode("utf-8", errors="replace")
    if kind == "number":
        # Lua's tostring() of inf and NaN is "inf", "-inf", "nan" or "-nan": read as the floats
        # they are (Prosody's own tonumber() reads none of them), then refused as timestamps.
        try:
            return float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            if value.strip().lower().lstrip("+-") in ("inf", "nan"):
                return float(value)
            raise ValueError(f"not a number: {reprlib.repr(value)}") from None
    if kind == "json":
        try:
            return json.loads(value)
        except ValueError as exc:  # util.json writes inf and NaN as `inf`, `-nan`: not JSON
            raise ValueError(f"not valid JSON ({exc})") from None
        except RecursionError:  # json's own limit (Python's recursion limit): a clean error
            raise ValueError("not valid JSON (nested too deeply)") from None
    if kind == "string":
        return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    raise ValueError(f"unexpected value type {kind!r}")
