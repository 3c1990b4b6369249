"""The store's files, checked before SQLite touches them: foreign, unwritable, missing folder."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreCorruptError, StoreError
from .resources import owner, refused

_SQLITE_MAGIC = b"SQLite format 3\x00"


def store_files(path: Path) -> tuple[Path, Path, Path]:
    """The database, its WAL and its WAL index (the -shm file SQLite maps into memory)."""
    return path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def why_unwritable(path: Path, name: str | None = None) -> str | None:
    """Why `path` (called `name` in the answer) cannot be written now, or None (also when it
    does not exist).

    Never opens the file: closing a descriptor of the database would release SQLite's POSIX
    locks on it. `os.access` says no for an immutable file (even to root), a read-only file
    system, and (not for root) missing write permission."""
    if os.access(path, os.W_OK):
        return None
    try:
        read_only_mount = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except FileNotFoundError:
        return None
    name = name or str(path)
    if read_only_mount:
        return f"{name} is on a read-only file system (remount it read-write)"
    return f"{name} is read-only: immutable (`lsattr -d`; `chattr -i` undoes it) or its mode"


def refuse_unwritable(path: Path) -> None:
    """Before a writer opens the store: each of its files that exists must be writable, and
    its folder too when SQLite has a file to create there."""
    files = store_files(path)
    checked = files if all(file.exists() for file in files) else (*files, path.parent)
    for file in checked:
        problem = why_unwritable(file)
        if problem is not None:
            raise StoreError(f"{path}: cannot be opened for writing: {problem}")


def refuse_foreign_file(path: Path) -> None:
    """Never let SQLite touch a file that is not SQLite (it would happily overwrite it)."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        problem = refused(path, exc)
        if problem is not None:
            raise problem from None
        raise StoreError(f"{path}: cannot be opened ({exc.strerror})") from None
    if head and head != _SQLITE_MAGIC:
        raise StoreCorruptError(
            f"{path}: not an xmpp-active-users store (not an SQLite file); it was left untouched. "
            "Move it away or set [store] path to another file."
        )


def refuse_missing_store(path: Path) -> None:
    """A reader needs a store to read (SQLite would create an empty one)."""
    if not path.exists():
        raise StoreError(
            f"{path}: no store there yet; the bot creates it when it first runs "
            "(check [store] path in the config)"
        )


def refuse_missing_folder(path: Path) -> None:
    """The store's folder must exist: a store started in a folder the bot made up (a typo in
    [store] path) would count from zero beside the real one, unnoticed."""
    folder = path.parent
    if folder.is_dir():
        return
    missing = folder
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    also = "" if missing == folder else f" (nor does {missing})"
    user, group = owner()
    raise StoreError(
        f"{path}: the folder {folder} does not exist{also}. Check [store] path for a typo; if "
        f"it is right, create the folder for the user the bot runs as: install -d -m 0700 "
        f"-o {user} -g {group} {folder}"
    )
