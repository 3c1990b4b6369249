"""The writer's lock: one writer at a time, released by the kernel when the process dies."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import IO

from .errors import StoreError, StoreLockedError, StoreResourceError
from .files import refuse_missing_folder
from .resources import owner, refused


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def lock_for_writing(path: Path) -> IO[str]:
    """Take the writer's lock beside `path`, or raise StoreLockedError naming the holder.

    The kernel releases it when the process dies, even by kill -9; closing the returned file
    releases it too. Creates the store's files, never its folder (see `refuse_missing_folder`)."""
    refuse_missing_folder(path)
    try:
        lock_file = lock_path(path).open("a+", encoding="utf-8")
    except OSError as exc:
        target = Path(exc.filename or lock_path(path))
        done, writable = ("opened", target) if target.exists() else ("created", target.parent)
        if isinstance(exc, PermissionError) and exc.errno == errno.EACCES:
            user, group = owner()
            raise StoreResourceError(
                f"{target}: cannot be {done} (Permission denied): {writable} must be writable "
                f"by the user the bot runs as ({user}); give it the folder: "
                f"chown -R {user}:{group} {path.parent}"
            ) from None
        problem = refused(target, exc)
        if problem is not None:
            raise problem from None
        raise StoreError(
            f"{target}: cannot be {done} ({exc.strerror}): make {writable} writable, or set "
            "[store] path to another folder"
        ) from None
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise StoreLockedError(
            f"{path}: already open for writing by {holder}. Only one bot may use a store; stop "
            "it first (`xmpp-active-users count` can read the store while it runs)."
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)})\n")
    lock_file.flush()
    return lock_file


def is_locked_for_writing(path: Path) -> bool:
    """Whether a writer holds the lock of the store at `path` right now."""
    try:
        with lock_path(path).open("r", encoding="utf-8") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False
    except OSError as exc:
        problem = refused(lock_path(path), exc)
        if problem is None:
            raise
        raise problem from None
