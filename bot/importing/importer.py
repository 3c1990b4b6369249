"""Import the history the XMPP server already keeps, so that MAU is right on the first day.

This module holds what every source shares (the entries, the merge, the report) and Prosody's
sources; ejabberd's are in importing/ejabberd.py, the list of all in importing/sources.py.
Prosody's:
    prosody-lastlog2          Prosody 0.12 file storage: DATA/<host>/lastlog2/<user>.dat
    prosody-lastlog           the older mod_lastlog: DATA/<host>/lastlog/<user>.dat
    prosody-account-activity  Prosody 13 file storage: DATA/<host>/account_activity/<user>.dat
    prosody-sql               lastlog2 or account_activity in a mod_storage_sql SQLite database
                              (mod_lastlog writes files whatever the storage: util.datamanager)

Merge rule: per user and field the newest timestamp wins (the oldest for first_seen), so importing
twice changes nothing. Users of domains not counted are skipped; unreadable files are reported and
the import goes on.

A timestamp must be plausible Unix seconds, or the user's record is rejected (reported, not
imported) and the import goes on: a number (not a string, not a table), finite (not inf or NaN,
which Prosody writes as `(1/0)`, `(0/0)` in its files and as "inf", "nan" in SQL), not before
EARLIEST (2000: no XMPP server recorded a login earlier; negative is refused), not above
MILLISECONDS_ABOVE (that is milliseconds: beyond year 5000 as seconds), and not more than
FUTURE_TOLERANCE after the import's clock (`now`): a timestamp in the future would make the user
active for as long as it lasts. (The store's own range, codec.TIMESTAMPS, holds all of these.)
A user name and domain must make a valid bare JID (slixmpp's rules: nodeprep, IDNA, at most
MAX_JID_PART bytes each), or the record is rejected the same way.

Input is bounded: only regular files are read (a FIFO would block, a device never ends; either
is a SourceError); one user's Prosody file may have MAX_DATA_FILE bytes, a record of an export
(a line, a term) MAX_RECORD bytes: larger is rejected, and memory stays bounded whatever the
input. The report lists MAX_LISTED rejected entries and counts all.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import sqlite3
import stat
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

from slixmpp.jid import JID, InvalidJID

from ..activity.tracker import exclusion_matcher
from ..core.model import UserRecord, domain_of
from ..storage.codec import TIMESTAMPS
from ..storage.store import Store
from .luadata import LuaDataError, parse_lua_data

_STORE_OF_SOURCE = {
    "prosody-lastlog2": "lastlog2",
    "prosody-lastlog": "lastlog",
    "prosody-account-activity": "account_activity",
}
_SOURCE_OF_STORE = {store: source for source, store in _STORE_OF_SOURCE.items()}
_FLUSH_EVERY = 10_000  # records per transaction on large imports
FUTURE_TOLERANCE = 86_400  # seconds a timestamp may be ahead of the import's clock (clock skew)
MILLISECONDS_ABOVE = 10**11  # a "seconds" timestamp above this (year 5138) is milliseconds
EARLIEST = 946_684_800  # 2000-01-01 UTC: no XMPP server recorded a login before
MAX_JID_PART = 1023  # bytes of a user name, of a domain (RFC 7622)
MAX_DATA_FILE = 1 << 20  # bytes of one user's Prosody file (a few hundred in practice)
MAX_RECORD = 1 << 20  # bytes of one record of an export: a line, a term (a few hundred)
MAX_SORTED_NAME = 16 << 20  # bytes of a name SQLite may sort (more: the database is refused)
MAX_LISTED = 100  # rejected entries the report lists (it counts them all)
MAX_REASONS = 100  # distinct reasons for skipping users (one per domain): the rest lumped


class SourceError(Exception):
    """The source cannot be read at all (nothing is imported): a one-line reason with the fix."""


@dataclass(frozen=True)
class Activity:
    """What one source says about one user. Timestamps: Unix seconds, 0 for unknown."""

    bare_jid: str
    last_login: int = 0
    last_logout: int = 0
    registered: int = 0
    where: str = field(default="", compare=False)  # the file (and line) it was read from


@dataclass(frozen=True)
class Rejected:
    where: str  # a file, or a database row's host/user/store
    reason: str


@dataclass(frozen=True)
class Ignored:
    """A record of something else than users' activity, e.g. another table of a full dump."""

    reason: str


Entry = Activity | Rejected | Ignored


@dataclass
class ImportReport:
    imported: int = 0  # users new to the store
    updated: int = 0  # users whose record changed
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> users
    rejected: list[Rejected] = field(default_factory=list)  # the first MAX_LISTED
    rejected_count: int = 0  # all of them
    ignored: Counter[str] = field(default_factory=Counter)  # reason -> records

    def reject(self, entry: Rejected) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_LISTED:
            self.rejected.append(entry)

    def skip(self, reason: str, *, else_: str | None = None) -> None:
        """Count a skipped user; past MAX_REASONS reasons, a new one is counted as `else_`."""
        if else_ is not None and reason not in self.skipped and len(self.skipped) >= MAX_REASONS:
            reason = else_
        self.skipped[reason] += 1

    def summary(self, dry_run: bool) -> str:
        verb = "would be" if dry_run else "were"
        lines = [
            f"Users imported: {self.imported}, updated: {self.updated}, "
            f"unchanged: {self.unchanged} ({'dry run: nothing written' if dry_run else 'saved'})"
        ]
        for reason, users in sorted(self.skipped.items()):
            lines.append(f"Skipped {users} users: {reason}")
        for reason, records in sorted(self.ignored.items()):
            lines.append(f"Ignored {records} records: {reason}")
        if self.rejected_count:
            lines.append(f"{self.rejected_count} entries {verb} rejected:")
            lines += [f"  {entry.where}: {entry.reason}" for entry in self.rejected]
            if self.rejected_count > len(self.rejected):
                lines.append(f"  ... and {self.rejected_count - len(self.rejected)} more")
        return "\n".join(lines)


# --- reading the sources -----------------------------------------------------------------------


def data_files(source: str, path: Path) -> list[tuple[Path, str]]:
    """(file, bare JID) of every user file of the source's store below Prosody's data dir `path`
    (or inside the store folder itself, e.g. DATA/example%2etest/lastlog2), sorted. SourceError
    if one is not a regular file. An import streams them instead (count_data_files, then
    iter_data_files): a list of a million paths would cost hundreds of MB."""
    count_data_files(source, path)
    return sorted(iter_data_files(source, path))


def count_data_files(source: str, path: Path) -> int:
    """How many user files there are; SourceError if one is not a regular file (checked before
    anything is read)."""
    count = 0
    for entry in _data_entries(source, path):
        count += 1
        try:
            if entry.is_file():  # follows a link, as reading will
                continue
            mode = entry.stat().st_mode
        except OSError:
            continue  # a dangling link, a file gone: reported when read
        raise SourceError(_not_regular(Path(entry.path), mode))
    return count


def iter_data_files(source: str, path: Path) -> Iterator[tuple[Path, str]]:
    """(file, bare JID) of each user file, as the directories list them."""
    for entry in _data_entries(source, path):
        file = Path(entry.path)
        yield file, f"{unquote(file.stem)}@{unquote(file.parent.parent.name)}"


def _data_entries(source: str, path: Path) -> Iterator[os.DirEntry[str]]:
    store = _STORE_OF_SOURCE[source]
    folders = [path] if path.name == store else sorted(path.glob(f"*/{store}"))
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".dat") and not entry.name.startswith("."):
                        yield entry
        except (NotADirectoryError, FileNotFoundError):
            continue


def open_regular(path: Path) -> BinaryIO:
    """`path` open for reading, if it is a regular file; SourceError saying why not. Opened
    without blocking, then checked: a FIFO without a writer would block a plain open forever,
    and a device (/dev/zero) never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SourceError(_not_regular(path, mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _not_regular(path: Path, mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISDIR: "a directory",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a plain file")
    return f"{path} is not a regular file ({kind}): give the file itself"


def read_data_file(source: str, file: Path, bare_jid: str, *, now: float | None = None) -> Entry:
    """One user's file; `now` (default: the clock) is what "in the future" is measured from."""
    try:
        with open_regular(file) as opened:
            raw = opened.read(MAX_DATA_FILE + 1)
        if len(raw) > MAX_DATA_FILE:
            return Rejected(
                str(file), f"larger than {MAX_DATA_FILE >> 20} MiB: not one user's Prosody file"
            )
        data = parse_lua_data(raw.decode("utf-8", errors="replace"))
    except SourceError as exc:  # it changed since data_files() looked
        return Rejected(str(file), str(exc))
    except (OSError, LuaDataError) as exc:
        return Rejected(str(file), f"not a Prosody data file ({exc})")
    return activity_from(source, bare_jid, data, str(file), now=now)


def activity_from(
    source: str, bare_jid: str, data: Any, where: str, *, now: float | None = None
) -> Entry:
    """Interpret one user's stored table; a timestamp that is not plausible rejects it."""
    if not isinstance(data, dict):
        return Rejected(where, f"expected a table, found {type(data).__name__}")
    now = time.time() if now is None else now
    try:
        if source == "prosody-account-activity":
            if "timestamp" not in data:
                return Rejected(where, "no timestamp")
            # The time of the last login or logout: "last seen" is what the seed's rule needs.
            stamp = checked_timestamp(data["timestamp"], now)
            return Activity(bare_jid, last_logout=stamp, where=where)
        if source == "prosody-lastlog":
            return _last_event(bare_jid, data, where, now)
        times = {
            event: checked_timestamp(data[event].get("timestamp"), now, f"{event} timestamp")
            if isinstance(data.get(event), dict)
            else 0
            for event in ("login", "logout", "registered")
        }
    except ValueError as exc:
        return Rejected(where, str(exc))
    return Activity(
        bare_jid,
        last_login=times["login"],
        last_logout=times["logout"],
        registered=times["registered"],
        where=where,
    )


_LASTLOG_EVENTS = {"login": "last_login", "logout": "last_logout", "registered": "registered"}


def _last_event(bare_jid: str, data: dict[Any, Any], where: str, now: float) -> Entry:
    """mod_lastlog keeps the user's last event only: `{ event = "login"; timestamp = ...; }`
    (its first versions recorded logins alone, without `event`)."""
    event = data.get("event", "login")
    if event == "message":  # mod_lastlog on a component: a room's last message
        return Ignored("a room's last message (mod_lastlog on a component), not a user's")
    if event not in _LASTLOG_EVENTS:
        return Rejected(where, f"unknown event {reprlib.repr(event)}")
    if "timestamp" not in data:
        return Rejected(where, "no timestamp")
    try:
        stamp = checked_timestamp(data["timestamp"], now)
    except ValueError as exc:
        return Rejected(where, str(exc))
    return Activity(bare_jid, **{_LASTLOG_EVENTS[event]: stamp}, where=where)


def checked_timestamp(value: Any, now: float, field: str = "timestamp") -> int:
    """`value` as Unix seconds; ValueError saying why if it is not a plausible timestamp (the
    rules: see the module's docstring). `field` names it in the reason."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} is not a number: {reprlib.repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} is not a finite number ({value})")
    if value < 0:
        raise ValueError(f"{field} is negative ({_shown(value)})")
    if value < EARLIEST:
        raise ValueError(f"{field} {value} is before 2000: no XMPP server recorded it")
    if value > MILLISECONDS_ABOVE * 1000:  # not even milliseconds
        raise ValueError(f"{field} is far too large for a timestamp ({_shown(value)})")
    if value > MILLISECONDS_ABOVE:
        raise ValueError(f"{field} {value} looks like milliseconds (as seconds: after year 5000)")
    if value > now + FUTURE_TOLERANCE:
        when = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise ValueError(
            f"{field} {value} ({when}) is in the future "
            f"(more than {FUTURE_TOLERANCE // 3600} h after the import's clock)"
        )
    if int(value) not in TIMESTAMPS:  # the store's range holds all of the above
        raise ValueError(f"{field} {value} is out of the range the store holds")
    return int(value)


def checked_jid(bare_jid: str) -> str:
    """`bare_jid` (user@domain) as slixmpp normalizes it; ValueError if it is not a valid one."""
    user, _, domain = bare_jid.rpartition("@")
    for part, name in ((user, "user name"), (domain, "domain")):
        size = len(part.encode("utf-8", errors="surrogatepass"))
        if size > MAX_JID_PART:  # checked first: stringprep on megabytes takes seconds
            raise ValueError(f"a {name} of {size} bytes (at most {MAX_JID_PART})")
    try:
        jid = JID(bare_jid)
    except InvalidJID as exc:
        raise ValueError(f"{reprlib.repr(bare_jid)} is not a valid JID ({exc})") from None
    if not jid.user or jid.resource:
        raise ValueError(f"{reprlib.repr(bare_jid)} is not a valid JID (not user@domain)")
    return str(jid.bare)


def _shown(value: float) -> str:
    """A number for a reason: a huge integer (Python refuses to print one of over 4300 digits)
    by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"of {value.bit_length()} bits"
    return str(value)


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


# --- merging into the store ------------------------------------------------------------------


def merge(existing: UserRecord | None, activity: Activity) -> UserRecord:
    """Newest login and logout win; first_seen is the oldest we know."""
    known = [t for t in (activity.registered, activity.last_login, activity.last_logout) if t]
    first_seen = min(known) if known else 0
    if existing is None:
        return UserRecord(first_seen, activity.last_login, activity.last_logout)
    if existing.first_seen and first_seen:
        first_seen = min(existing.first_seen, first_seen)
    return existing._replace(  # its sessions and clients stay (an import knows no client)
        first_seen=first_seen or existing.first_seen,
        last_login=max(existing.last_login, activity.last_login),
        last_logout=max(existing.last_logout, activity.last_logout),
    )


def import_activities(
    store: Store,
    entries: Iterable[Entry],
    domains: Iterable[str],
    *,
    dry_run: bool,
    exclude: Iterable[str] = (),
) -> ImportReport:
    """Merge the entries into the store; users of other domains, and those `[counting] exclude`
    matches (never counted nor stored), are skipped and counted in the report."""
    counted = set(domains)
    excluded = exclusion_matcher(exclude)
    report = ImportReport()
    for entry in entries:
        if isinstance(entry, Rejected):
            report.reject(entry)
            continue
        if isinstance(entry, Ignored):
            report.ignored[entry.reason] += 1
            continue
        try:
            bare_jid = checked_jid(entry.bare_jid)
        except ValueError as exc:
            report.reject(Rejected(entry.where or "a record", str(exc)))
            continue
        if domain_of(bare_jid) not in counted:
            report.skip(
                f"domain {domain_of(bare_jid)} is not counted",
                else_="other domains, not counted (too many to list)",
            )
            continue
        if excluded(bare_jid):
            report.skip("excluded by [counting] exclude")
            continue
        if not (entry.last_login or entry.last_logout):
            report.skip("no login or logout recorded (never active)")
            continue
        key = store.key_of(bare_jid)
        existing = store.get(key)
        merged = merge(existing, entry)
        if merged == existing:
            report.unchanged += 1
            continue
        if existing is None:
            report.imported += 1
        else:
            report.updated += 1
        if not dry_run:
            store.put(key, merged)
            if store.pending >= _FLUSH_EVERY:
                # An import is no sign of the bot's life: the heartbeat stays as it was.
                store.flush(store.heartbeat, heartbeat_interval=0)
    if dry_run:
        store.discard_pending()  # a damaged record read meanwhile stays where it is
    else:
        store.flush(store.heartbeat, heartbeat_interval=0)
    return report
