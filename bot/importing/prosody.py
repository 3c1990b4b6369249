"""Prosody's file storage: one user's data file read (bounded) and interpreted as an entry.

    prosody-lastlog2          Prosody 0.12 file storage: DATA/<host>/lastlog2/<user>.dat
    prosody-lastlog           the older mod_lastlog: DATA/<host>/lastlog/<user>.dat
    prosody-account-activity  Prosody 13 file storage: DATA/<host>/account_activity/<user>.dat

(mod_lastlog writes files whatever the storage: util.datamanager.) The same stored tables come
from Prosody's SQL database too (prosody_sql.py), and are interpreted here (`activity_from`).
The checks, the bounds and the merge: importer.py.
"""

from __future__ import annotations

import os
import reprlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .importer import (
    MAX_DATA_FILE,
    Activity,
    Entry,
    Ignored,
    Rejected,
    SourceError,
    checked_timestamp,
    not_regular,
    open_regular,
)
from .luadata import LuaDataError, parse_lua_data

STORE_OF_SOURCE = {
    "prosody-lastlog2": "lastlog2",
    "prosody-lastlog": "lastlog",
    "prosody-account-activity": "account_activity",
}


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
        raise SourceError(not_regular(Path(entry.path), mode))
    return count


def iter_data_files(source: str, path: Path) -> Iterator[tuple[Path, str]]:
    """(file, bare JID) of each user file, as the directories list them."""
    for entry in _data_entries(source, path):
        file = Path(entry.path)
        yield file, f"{unquote(file.stem)}@{unquote(file.parent.parent.name)}"


def _data_entries(source: str, path: Path) -> Iterator[os.DirEntry[str]]:
    store = STORE_OF_SOURCE[source]
    folders = [path] if path.name == store else sorted(path.glob(f"*/{store}"))
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".dat") and not entry.name.startswith("."):
                        yield entry
        except (NotADirectoryError, FileNotFoundError):
            continue


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
