"""What the system refused the store (descriptors, memory, disk space, permission), said as such.

A store that cannot be opened for want of a resource is sound: its message names the limit to
raise, never "restore it from a backup" (which would send an admin to replace a good file).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import sqlite3
from pathlib import Path

from .errors import StoreResourceError

# SQLite's primary result codes that say "the system refused" (the extended code's low byte).
_SQLITE_FULL, _SQLITE_NOMEM = sqlite3.SQLITE_FULL, sqlite3.SQLITE_NOMEM
_SQLITE_MAYBE_REFUSED = (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR)
_OPENING_NEEDS = 8  # descriptors an opening store may take at once (files, connections, lock)


def resource_problem(path: Path, code: int | None) -> StoreResourceError | None:
    """The error to raise when opening `path` failed with errno `code`, if that is a resource
    the system refused (None for anything else: the caller's message stands)."""
    reason = f"{path}: cannot be opened ({os.strerror(code or 0)})"
    if code == errno.EMFILE:
        fix = (
            "the bot may not open more files: raise its descriptor limit (LimitNOFILE= in its "
            "systemd unit, `ulimit -n` in a shell)"
        )
    elif code == errno.ENFILE:
        fix = "the system's table of open files is full: raise fs.file-max (sysctl)"
    elif code == errno.ENOMEM:
        fix = "out of memory: free memory, or raise the bot's limit (MemoryMax= in its unit)"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"the disk is full: free space on the file system of {path.parent} (df -h)"
    elif code == errno.EACCES:  # not EPERM: an immutable file or folder, see files.py
        user, group = owner()
        fix = (
            f"{path.parent} and the store's files must be readable and writable by the user the "
            f"bot runs as ({user}): chown -R {user}:{group} {path.parent}"
        )
    else:
        return None
    return StoreResourceError(f"{reason}: {fix}; the store itself is intact")


def refused(path: Path, exc: OSError) -> StoreResourceError | None:
    """`resource_problem` for an OSError raised while opening one of the store's files."""
    return resource_problem(Path(exc.filename) if exc.filename else path, exc.errno)


def sqlite_refused(path: Path, exc: sqlite3.Error) -> StoreResourceError | None:
    """`resource_problem` for SQLite's error at the opening of the store. SQLite does not say
    why it could not open a file ("unable to open database file"): the same open, tried here,
    says it (before the caller closes its connections, which would free descriptors)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    if primary == _SQLITE_FULL:
        return resource_problem(path, errno.ENOSPC)
    if primary == _SQLITE_NOMEM:
        return resource_problem(path, errno.ENOMEM)
    if primary not in _SQLITE_MAYBE_REFUSED:
        return None
    try:
        # Read-only, and closed at once; SQLite's POSIX locks on the file could be released by
        # this close, which is harmless here: the caller closes its connections next.
        descriptor = os.open(path if path.exists() else path.parent, os.O_RDONLY)
    except OSError as probe:
        return resource_problem(path, probe.errno)
    os.close(descriptor)
    # SQLite may have closed what it had opened before it gave up: then the probe finds a
    # descriptor free, but the opening needs several.
    return resource_problem(path, errno.EMFILE) if _few_descriptors_left() else None


def _few_descriptors_left() -> bool:
    """Whether this process is within a store's opening of its descriptor limit (Linux)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return False  # no /proc: cannot tell
    return soft != resource.RLIM_INFINITY and soft - in_use < _OPENING_NEEDS


def owner() -> tuple[str, str]:
    """Who runs the bot now (user, group): the owner a fix should give the store's folder."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    try:
        group = grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        group = str(os.getegid())
    return user, group
