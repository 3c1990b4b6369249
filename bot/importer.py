"""Import the history the XMPP server already keeps, so that MAU is right on the first day.

This module holds what every source shares (the entries, the merge, the report) and Prosody's
sources; ejabberd's are in import_ejabberd.py, the list of all in import_sources.py. Prosody's:
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
which Prosody writes as `(1/0)`, `(0/0)` in its files and as "inf", "nan" in SQL), not negative,
not above MILLISECONDS_ABOVE (that is milliseconds: beyond year 5000 as seconds), and not more
than FUTURE_TOLERANCE after the import's clock (`now`): a timestamp in the future would make the
user active for as long as it lasts.
"""

from __future__ import annotations

import json
import math
import reprlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .activity import exclusion_matcher
from .luadata import LuaDataError, parse_lua_data
from .model import UserRecord, domain_of
from .store import Store

_STORE_OF_SOURCE = {
    "prosody-lastlog2": "lastlog2",
    "prosody-lastlog": "lastlog",
    "prosody-account-activity": "account_activity",
}
_SOURCE_OF_STORE = {store: source for source, store in _STORE_OF_SOURCE.items()}
_FLUSH_EVERY = 10_000  # records per transaction on large imports
FUTURE_TOLERANCE = 86_400  # seconds a timestamp may be ahead of the import's clock (clock skew)
MILLISECONDS_ABOVE = 10**11  # a "seconds" timestamp above this (year 5138) is milliseconds


class SourceError(Exception):
    """The source cannot be read at all (nothing is imported): a one-line reason with the fix."""


@dataclass(frozen=True)
class Activity:
    """What one source says about one user. Timestamps: Unix seconds, 0 for unknown."""

    bare_jid: str
    last_login: int = 0
    last_logout: int = 0
    registered: int = 0


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
    rejected: list[Rejected] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # reason -> records

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
        if self.rejected:
            lines.append(f"{len(self.rejected)} entries {verb} rejected:")
            lines += [f"  {entry.where}: {entry.reason}" for entry in self.rejected]
        return "\n".join(lines)


# --- reading the sources -----------------------------------------------------------------------


def data_files(source: str, path: Path) -> list[tuple[Path, str]]:
    """(file, bare JID) of every user file of the source's store below Prosody's data dir `path`
    (or inside the store folder itself, e.g. DATA/example%2etest/lastlog2)."""
    store = _STORE_OF_SOURCE[source]
    if path.name == store:
        files = sorted(path.glob("*.dat"))
    else:
        files = sorted(path.glob(f"*/{store}/*.dat"))
    return [(file, f"{unquote(file.stem)}@{unquote(file.parent.parent.name)}") for file in files]


def read_data_file(source: str, file: Path, bare_jid: str, *, now: float | None = None) -> Entry:
    """One user's file; `now` (default: the clock) is what "in the future" is measured from."""
    try:
        data = parse_lua_data(file.read_text(encoding="utf-8", errors="replace"))
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
            return Activity(bare_jid, last_logout=checked_timestamp(data["timestamp"], now))
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
    return Activity(bare_jid, **{_LASTLOG_EVENTS[event]: stamp})


def checked_timestamp(value: Any, now: float, field: str = "timestamp") -> int:
    """`value` as Unix seconds; ValueError saying why if it is not a plausible timestamp (the
    rules: see the module's docstring). `field` names it in the reason."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} is not a number: {reprlib.repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} is not a finite number ({value})")
    if value < 0:
        raise ValueError(f"{field} is negative ({_shown(value)})")
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
    return int(value)


def _shown(value: float) -> str:
    """A number for a reason: a huge integer (Python refuses to print one of over 4300 digits)
    by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"of {value.bit_length()} bits"
    return str(value)


def read_sql(path: Path, *, now: float | None = None) -> Iterator[Entry]:
    """lastlog2 and account_activity rows of a mod_storage_sql SQLite database (read-only);
    `now` (default: the clock) is what "in the future" is measured from."""
    if not path.is_file():
        yield Rejected(str(path), "no such file")
        return
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        rows = db.execute(
            'SELECT "host", "user", "store", "key", "type", "value" FROM "prosody" '
            "WHERE \"store\" IN ('lastlog2', 'account_activity') "
            'ORDER BY "host", "user", "store"'
        ).fetchall()
        db.close()
    except sqlite3.Error as exc:
        yield Rejected(str(path), f"not a Prosody SQL storage database ({exc})")
        return
    users: dict[tuple[str, str, str], dict[str, Any]] = {}
    for host, user, store, key, kind, value in rows:
        where = f"{path}: {user}@{host} store {store} key {key}"
        try:
            decoded = _sql_value(kind, value)
        except ValueError as exc:
            yield Rejected(where, str(exc))
            continue
        users.setdefault((host, user, store), {})[key] = decoded
    for (host, user, store), data in users.items():
        source = _SOURCE_OF_STORE[store]
        where = f"{path}: {user}@{host} {store}"
        yield activity_from(source, f"{user}@{host}", data, where, now=now)


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
            report.rejected.append(entry)
            continue
        if isinstance(entry, Ignored):
            report.ignored[entry.reason] += 1
            continue
        if domain_of(entry.bare_jid) not in counted:
            report.skipped[f"domain {domain_of(entry.bare_jid)} is not counted"] += 1
            continue
        if excluded(entry.bare_jid):
            report.skipped["excluded by [counting] exclude"] += 1
            continue
        if not (entry.last_login or entry.last_logout):
            report.skipped["no login or logout recorded (never active)"] += 1
            continue
        key = store.key_of(entry.bare_jid)
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
