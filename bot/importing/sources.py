"""Every source `import --from` reads: how much there is to read, and its entries.

The progress bar needs the amount first: `open_source` finds the source and says how much
there is (users, or bytes of a file); `Opened.read(progress)` then checks it (SourceError if it
cannot be read at all, before anything is imported) and yields its entries, reporting progress
in that unit. Where a file is expected, only a regular file is read (importer.open_regular).
"""

from __future__ import annotations

import grp
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import ejabberd, importer, prosody, prosody_sql
from .importer import Entry, SourceError

SOURCES = (
    "prosody-lastlog2",
    "prosody-lastlog",
    "prosody-account-activity",
    "prosody-sql",
    "ejabberd-mnesia",
    "ejabberd-sql",
    "ejabberd-online",
)
Progress = Callable[[int], object]
_EJABBERD_FILES: dict[str, Callable[..., Iterator[Entry]]] = {
    "ejabberd-mnesia": ejabberd.read_mnesia_dump,
    "ejabberd-sql": ejabberd.read_sql_export,
    "ejabberd-online": ejabberd.read_online_list,
}


@dataclass(frozen=True)
class Opened:
    total: int | None  # in units; None when unknown
    unit: str  # " users", or "B" for the bytes of a file
    read: Callable[[Progress], Iterator[Entry]]


def open_source(source: str, path: Path, *, now: float, host: str | None = None) -> Opened:
    """SourceError, with the fix, if `path` cannot be this source."""
    if host is not None and source != "ejabberd-sql":
        raise SourceError("--host is only for --from ejabberd-sql")
    if source in _EJABBERD_FILES:
        read = _EJABBERD_FILES[source]
        options = {"host": host} if source == "ejabberd-sql" else {}
        return Opened(
            _size(path), "B", lambda progress: read(path, now=now, progress=progress, **options)
        )
    if source == "prosody-sql":
        importer.open_regular(path).close()  # SQLite's own open would block on a FIFO
        return Opened(None, " users", partial(_each, prosody_sql.read_sql(path, now=now)))
    count = prosody.count_data_files(source, path)
    if not count:
        # Prosody's data is readable by its user and group only: a folder this user may not
        # read hides the files, which is not the same as having none.
        denied = [d for d in (path, *path.glob("*"), *path.glob("*/*")) if _unreadable(d)]
        if denied:
            group = grp.getgrgid(denied[0].stat().st_gid).gr_name
            raise SourceError(
                f"cannot read {denied[0]} (permission denied), so no {source} data files "
                f"were found under {path}: Prosody's data is readable by its own user and "
                f"group ({group}) only. Run the import as a member of that group, e.g. as "
                "root, as the bot's user: runuser -u xmpp-active-users -g xmpp-active-users "
                f"-G {group} -- xmpp-active-users import --config FILE --from {source} {path}"
            )
        raise SourceError(
            f"no {source} data files under {path}; "
            "PATH should be Prosody's data directory (e.g. /var/lib/prosody)"
        )
    entries = (
        prosody.read_data_file(source, file, jid, now=now)
        for file, jid in prosody.iter_data_files(source, path)
    )
    return Opened(count, " users", partial(_each, entries))


def _unreadable(folder: Path) -> bool:
    return folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK)


def _each(entries: Iterable[Entry], progress: Progress) -> Iterator[Entry]:
    for entry in entries:
        progress(1)
        yield entry


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
