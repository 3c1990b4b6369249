"""Read ejabberd's history: mod_last's record of each user's last logout.

mod_last keeps one record per user: the time of their last logout (Unix seconds) and its status
text (the client's last status, "Stream reset by peer", ...). A user who registered and never
logged in has the time of registration and the status REGISTERED_ONLY: that is no activity (it
is imported as the registration, which alone is never counted). Users online are not in it
(`ejabberdctl get_last` asks the session manager for them): a user online since long ago is
there with their last logout, or not at all. The list of sessions online completes it.

Sources:
    ejabberd-mnesia  the text `ejabberdctl dump_table FILE last_activity` writes (a whole
                     `ejabberdctl dump FILE` too: records of other tables are counted, not read)
    ejabberd-sql     the SQL table `last` exported by the database's client: CSV with a header
                     (psql `\\copy ... csv header`, `sqlite3 -csv -header`) or tab-separated
                     (`mysql --batch`); columns username, server_host (new schema), seconds, state
    ejabberd-online  the sessions online, as `ejabberdctl connected_users` lists them (one full
                     JID a line): each user is imported as logged in when the file was written

Each is read as a stream in bounded memory: only a regular file (importer.open_regular), a line
or a term of at most MAX_RECORD bytes (longer is rejected with its line, and skipped).
"""

from __future__ import annotations

import csv
import mmap
import os
import re
import reprlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from .erlterm import Atom, ErlTermError, Term, iter_terms
from .importer import (
    MAX_RECORD,
    Activity,
    Entry,
    Ignored,
    Rejected,
    SourceError,
    checked_timestamp,
    open_regular,
)

REGISTERED_ONLY = "Registered but didn't login"  # mod_last's status written at registration
SQL_COLUMNS = ("username", "seconds", "state")  # and server_host in the new schema
_FIRST_MARK = re.compile(rb"\S")
_INTEGER = re.compile(r"-?[0-9]{1,20}")  # longer is no timestamp (and int() refuses 4300+)
_MYSQL_ESCAPES = re.compile(r"\\(.)")
_MYSQL_ESCAPED = {"n": "\n", "t": "\t", "0": "\0", "\\": "\\"}

Progress = Callable[[int], object]  # called with the bytes read since the last call
_RELEASE_EVERY = 32 << 20  # bytes of a mapped dump parsed before their pages are let go


def _no_progress(_: int) -> None:
    return None


# --- ejabberd-mnesia ---------------------------------------------------------------------------


def read_mnesia_dump(
    path: Path, *, now: float | None = None, progress: Progress = _no_progress
) -> Iterator[Entry]:
    """The entries of a text dump; SourceError at once if `path` is not one (checked before the
    first entry is asked for). The file is mapped, not read into memory: the pages already
    parsed can be dropped by the kernel, so a dump of millions of users costs little memory."""
    try:
        with open_regular(path) as file:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if _size(file) else b""
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    first = _FIRST_MARK.search(data)
    if first is None:
        raise SourceError(
            f"{path} is empty; make a dump with: ejabberdctl dump_table FILE last_activity"
        )
    if first[0] not in (b"{", b"%"):
        raise SourceError(
            f"{path} is not a text dump of ejabberd's tables (it should start with '{{'); "
            "make one with: ejabberdctl dump_table FILE last_activity"
        )
    return _mnesia_entries(path, data, time.time() if now is None else now, progress)


def _size(file: IO[bytes]) -> int:
    return os.fstat(file.fileno()).st_size


def _mnesia_entries(
    path: Path, data: bytes | mmap.mmap, now: float, progress: Progress
) -> Iterator[Entry]:
    done = released = 0
    for term, line, end in iter_terms(data, max_bytes=MAX_RECORD):
        progress(end - done)
        done = end
        if isinstance(data, mmap.mmap) and done - released > _RELEASE_EVERY:
            # Pages already parsed still count in our RSS: give them back (the file is read
            # once, forward), so that a dump of any size costs a bounded memory.
            upto = done - done % mmap.PAGESIZE
            data.madvise(mmap.MADV_DONTNEED, released, upto - released)
            released = upto
        where = f"{path}:{line}"
        if isinstance(term, ErlTermError):
            yield Rejected(where, f"not a term of the kind a dump holds: {term.reason}")
        elif (entry := _last_activity(term, where, now)) is not None:
            yield entry
    progress(len(data) - done)  # the blanks after the last term
    if isinstance(data, mmap.mmap):
        data.close()


def _last_activity(term: Term, where: str, now: float) -> Entry | None:
    """One record of the dump: {last_activity,{User,Host},Timestamp,Status}; None for the
    `{tables,...}` header."""
    if not (isinstance(term, tuple) and term and isinstance(term[0], Atom)):
        return Rejected(where, f"not a record: {reprlib.repr(term)}")
    if term[0] == "tables":
        return None
    if term[0] != "last_activity":
        return Ignored(f"of table {term[0]} (only last_activity is read)")
    match term:
        case (_, (bytes() as user, bytes() as host), int() as stamp, bytes() as status):
            pass
        case _:
            return Rejected(
                where,
                "not a record {last_activity,{User,Host},Timestamp,Status}: " + reprlib.repr(term),
            )
    try:
        names = (user.decode(), host.decode())
    except UnicodeDecodeError:
        return Rejected(where, f"user or host is not UTF-8: {reprlib.repr((user, host))}")
    return _activity(*names, stamp, status.decode(errors="replace"), where, now)


# --- ejabberd-sql ------------------------------------------------------------------------------


def read_sql_export(
    path: Path,
    *,
    host: str | None = None,
    now: float | None = None,
    progress: Progress = _no_progress,
) -> Iterator[Entry]:
    """The entries of an export of the `last` table. `host`: the users' domain when the file has
    no server_host column (the old schema, one database per host). SourceError at once if the
    header does not name the columns, or the domain is unknown."""
    file = open_regular(path)
    lines = _Lines(file, progress)
    try:
        header = next(lines, "").lstrip("\ufeff")
    except _TooLong:
        file.close()
        raise SourceError(
            f"{path}: the first line is longer than {MAX_RECORD} bytes: not an export of "
            "ejabberd's `last` table with a header"
        ) from None
    tabs = "\t" in header  # mysql --batch: tab-separated, backslash escapes
    columns = [
        name.strip().strip('"').lower()
        for name in (header.rstrip("\r\n").split("\t") if tabs else next(csv.reader([header]), []))
    ]
    missing = [name for name in SQL_COLUMNS if name not in columns]
    if missing:
        file.close()
        raise SourceError(
            f"{path}: the first line should name the columns of ejabberd's `last` table "
            f"(username, seconds, state), found {reprlib.repr(header.strip())}; export it with "
            "a header (see docs/install.md, 'Importing from ejabberd')"
        )
    if "server_host" not in columns and not host:
        file.close()
        raise SourceError(
            f"{path} has no server_host column (ejabberd's old SQL schema, one database per "
            "host): give the users' domain with --host, e.g. --host example.org"
        )
    rows = _tab_rows(lines) if tabs else _csv_rows(lines)
    return _sql_entries(file, path, rows, columns, host, time.time() if now is None else now)


def _sql_entries(
    file: IO[bytes],
    path: Path,
    rows: Iterable[tuple[int, list[str] | str]],
    columns: list[str],
    host: str | None,
    now: float,
) -> Iterator[Entry]:
    index = {name: columns.index(name) for name in (*SQL_COLUMNS, "server_host") if name in columns}
    with file:
        for line, row in rows:
            where = f"{path}:{line}"
            if isinstance(row, str):  # the reason the line could not be split
                yield Rejected(where, row)
            elif len(row) != len(columns):
                yield Rejected(where, f"{len(row)} fields where the header names {len(columns)}")
            elif any("\udc80" <= char <= "\udcff" for field in row for char in field):
                yield Rejected(where, "not UTF-8")
            elif not _INTEGER.fullmatch(seconds := row[index["seconds"]].strip()):
                yield Rejected(where, f"seconds is not a timestamp: {reprlib.repr(seconds)}")
            else:
                domain = row[index["server_host"]] if "server_host" in index else host
                user, state = row[index["username"]], row[index["state"]]
                yield _activity(user, domain or "", int(seconds), state, where, now)


_A_ROW = " (a record of ejabberd's has a few dozen)"


class _TooLong(Exception):
    """A line, or a row over several lines, of more than MAX_RECORD bytes (skipped)."""


class _Lines:
    """The file's lines as text, at most MAX_RECORD bytes each, and per row (`row_start()`):
    longer raises _TooLong, the rest of the line skipped, and the lines after it go on. Bytes
    that are not UTF-8 become surrogates (the row is then rejected)."""

    def __init__(self, file: IO[bytes], progress: Progress) -> None:
        self.file = file
        self.progress = progress
        self.number = 0  # lines read, a skipped one too
        self.row_bytes = 0

    def __iter__(self) -> _Lines:
        return self

    def row_start(self) -> int:
        """The number of the line the next row starts on."""
        self.row_bytes = 0
        return self.number + 1

    def __next__(self) -> str:
        raw = self.file.readline(MAX_RECORD + 1)
        if not raw:
            raise StopIteration
        self.number += 1
        self.progress(len(raw))
        if len(raw) > MAX_RECORD:
            while raw and not raw.endswith(b"\n"):  # the rest of the line, in bounded pieces
                raw = self.file.readline(1 << 16)
                self.progress(len(raw))
            raise _TooLong(f"a line of more than {MAX_RECORD} bytes{_A_ROW}")
        self.row_bytes += len(raw)
        if self.row_bytes > MAX_RECORD:
            raise _TooLong(f"a row of more than {MAX_RECORD} bytes over several lines{_A_ROW}")
        return raw.decode("utf-8", errors="surrogateescape")


def _csv_rows(lines: _Lines) -> Iterator[tuple[int, list[str] | str]]:
    """(the line where the row starts, its fields or why it is not a row); a quoted field may
    hold line breaks."""
    reader = csv.reader(lines, strict=True)
    while True:
        start = lines.row_start()
        try:
            row = next(reader)  # the reader starts afresh at each row, even after an error
        except StopIteration:
            return
        except _TooLong as exc:
            yield start, str(exc)
            continue
        except csv.Error as exc:
            yield start, f"not a CSV row ({exc})"
            continue
        if row:
            yield start, row


def _tab_rows(lines: _Lines) -> Iterator[tuple[int, list[str] | str]]:
    """mysql --batch: one row per line, fields split by tabs, \\n \\t \\0 \\\\ escaped."""
    while True:
        number = lines.row_start()
        try:
            line = next(lines)
        except StopIteration:
            return
        except _TooLong as exc:
            yield number, str(exc)
            continue
        text = line.rstrip("\n")
        if text:
            yield number, [_MYSQL_ESCAPES.sub(_mysql_unescape, field) for field in text.split("\t")]


def _mysql_unescape(match: re.Match[str]) -> str:
    return _MYSQL_ESCAPED.get(match[1], match[0])


# --- ejabberd-online --------------------------------------------------------------------------


def read_online_list(
    path: Path, *, now: float | None = None, progress: Progress = _no_progress
) -> Iterator[Entry]:
    """Each user of `ejabberdctl connected_users`'s list, logged in at the file's modification
    time (when the list was taken; the same at every import, so importing twice changes
    nothing)."""
    file = open_regular(path)
    written = int(os.fstat(file.fileno()).st_mtime)
    return _online_entries(path, file, written, time.time() if now is None else now, progress)


def _online_entries(
    path: Path, file: IO[bytes], written: int, now: float, progress: Progress
) -> Iterator[Entry]:
    previous = ""  # a user's sessions are listed together (the list is sorted): one user
    lines = _Lines(file, progress)
    with file:
        while True:
            number = lines.row_start()
            where = f"{path}:{number}"
            try:
                line = next(lines).strip()
            except StopIteration:
                return
            except _TooLong as exc:
                yield Rejected(where, str(exc))
                continue
            bare, _, _ = line.partition("/")
            user, at, host = bare.rpartition("@")
            if not line:
                continue
            if not (at and user and host) or any("\udc80" <= char <= "\udcff" for char in line):
                yield Rejected(where, f"not a full JID (user@host/resource): {reprlib.repr(line)}")
            elif bare != previous:
                previous = bare
                try:
                    stamp = checked_timestamp(written, now, "file time")
                except ValueError as exc:
                    yield Rejected(str(path), str(exc))
                    return
                yield Activity(bare, last_login=stamp, where=where)


# --- all ---------------------------------------------------------------------------------------


def _activity(user: str, host: str, stamp: int, status: str, where: str, now: float) -> Entry:
    if not user or not host or "@" in user or "/" in host:
        return Rejected(where, f"not a user name and domain: {reprlib.repr(user)}, {host!r}")
    try:
        stamp = checked_timestamp(stamp, now)
    except ValueError as exc:
        return Rejected(where, f"{user}@{host}: {exc}")
    if status == REGISTERED_ONLY:
        return Activity(f"{user}@{host}", registered=stamp, where=where)
    return Activity(f"{user}@{host}", last_logout=stamp, where=where)
