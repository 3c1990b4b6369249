"""The index snapshot: the start-up index of a store, written at a clean stop, read instead of it.

Reading every record of a store of ten million users takes a minute and a half; this file,
beside the store (`<store>.index`), holds what the index keeps of them (per domain, the sorted
last activity of the users, their first logins and their client families' times, as packed
64-bit integers, and the keys of the users online) and loads in a second or two.

It is only ever used for the very store state it describes. It names the store's generation
(a random token that every write transaction of `Store` replaces) and the store's files as the
writer left them (inode, size, modification time: a program that writes the store without
`Store`, an older release or `sqlite3`, changes them). Anything else, or a file that is
truncated or altered (a keyed BLAKE2 checksum, the key being the generation itself), or written
for other settings, is refused with one reason, and the caller reads every record instead.

Written atomically: a temporary file, fsync, rename, fsync of the folder. A kill -9 at any
point leaves the previous snapshot (stale: the store was written since) or the new one.

Layout: MAGIC, the header's length (8 bytes, little-endian), the header (JSON), the arrays
(int64, native byte order, in the header's order), the checksum (32 bytes) of all before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"xmpp-active-users index snapshot\n"
VERSION = 1
_LENGTH = 8
_MAC = 32

# (inode, size, mtime in ns) of the store's database file, and (size, mtime) of its WAL if any
FileState = tuple[tuple[int, int, int], tuple[int, int] | None]


# Sorted timestamps: packed, a sequence, or what packs them when called (in the writing thread)
Times = Sequence[int] | Callable[[], "array[int]"]


class SnapshotRefused(Exception):
    """The snapshot cannot be used; the message says why (one line)."""


@dataclass
class ClientPart:
    """One client family of one domain: the sorted times of its users offline with it."""

    offline: Times
    online_users: int
    online_sessions: int


@dataclass
class DomainPart:
    """One domain's index as the snapshot keeps it. The online users' contributions are in the
    lists and counts as the live index had them; their records are read from the store."""

    known_users: int
    online_users: int
    online_sessions: int
    hidden: int  # stored users that the exclusions hide
    offline: Times  # sorted last activity of the users offline, after `floor`
    first_seen: Times  # sorted, after `windows_floor`
    clients: dict[str, ClientPart] = field(default_factory=dict)
    online: list[str] = field(default_factory=list)  # store keys of the users online


@dataclass
class IndexSnapshot:
    """What the index keeps: timestamps after `floor` (first logins and client families: after
    `windows_floor`), for the exclusions `exclude` (see `exclusions_id`)."""

    floor: int
    windows_floor: int
    exclude: str
    domains: dict[str, DomainPart]


def path_for(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".index")


def exclusions_id(patterns: Iterable[str]) -> str:
    """The exclusions as a snapshot names them (which users the index leaves out)."""
    return hashlib.blake2b("\n".join(sorted(p.lower() for p in patterns)).encode()).hexdigest()


def file_state(store_path: Path) -> FileState:
    """What a writer that bypasses `Store` cannot help changing: the database file (inode, size,
    modification time) and its write-ahead log."""
    st = os.stat(store_path)
    wal: tuple[int, int] | None
    try:
        wst = os.stat(store_path.with_name(store_path.name + "-wal"))
        wal = (wst.st_size, wst.st_mtime_ns) if wst.st_size else None
    except FileNotFoundError:
        wal = None
    return (st.st_ino, st.st_size, st.st_mtime_ns), wal


def _generation_id(generation: bytes) -> str:
    return hashlib.blake2b(generation, digest_size=16, person=b"xau-generation").hexdigest()


def write(path: Path, snapshot: IndexSnapshot, generation: bytes, state: FileState) -> int:
    """Write `snapshot` of the store at `generation` and `state` to `path`, atomically; returns
    its size in bytes. Any kill leaves either the previous file or this one."""
    arrays: list[array[int]] = []
    domains: dict[str, Any] = {}
    for name, part in sorted(snapshot.domains.items()):
        offline, first_seen = _array(part.offline), _array(part.first_seen)
        arrays += (offline, first_seen)
        clients = []
        for family, client in sorted(part.clients.items()):
            times = _array(client.offline)
            arrays.append(times)
            clients.append([family, len(times), client.online_users, client.online_sessions])
        domains[name] = {
            "known_users": part.known_users,
            "online_users": part.online_users,
            "online_sessions": part.online_sessions,
            "hidden": part.hidden,
            "offline": len(offline),
            "first_seen": len(first_seen),
            "clients": clients,
            "online": part.online,
        }
    header = json.dumps(
        {
            "version": VERSION,
            "byteorder": sys.byteorder,
            "generation": _generation_id(generation),
            "file": [list(state[0]), None if state[1] is None else list(state[1])],
            "floor": snapshot.floor,
            "windows_floor": snapshot.windows_floor,
            "exclude": snapshot.exclude,
            "domains": domains,
        },
        separators=(",", ":"),
    ).encode()
    mac = hashlib.blake2b(key=generation, digest_size=_MAC)
    temporary = path.with_name(path.name + ".tmp")
    size = 0
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            pieces: list[bytes | array[int]] = [MAGIC, len(header).to_bytes(_LENGTH, "little")]
            for piece in (*pieces, header, *arrays):
                data = memoryview(piece).cast("B")
                mac.update(data)
                file.write(data)
                size += len(data)
            file.write(mac.digest())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return size + _MAC


def _array(values: Times) -> array[int]:
    if isinstance(values, array):
        return values
    return values() if callable(values) else array("q", values)


def read(
    path: Path, generation: bytes, state: FileState, *, exclude: str, domains: Iterable[str]
) -> tuple[IndexSnapshot, int]:
    """The snapshot at `path` (and its size), if it describes the store at `generation` and
    `state`, for these exclusions and domains; else SnapshotRefused with the reason."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotRefused("none (the last stop did not write one)") from None
    except OSError as exc:
        raise SnapshotRefused(f"cannot be read ({exc.strerror})") from None
    view = memoryview(data)
    if not data.startswith(MAGIC):
        raise SnapshotRefused("damaged (not an index snapshot)")
    start = len(MAGIC) + _LENGTH
    length = int.from_bytes(view[len(MAGIC) : start], "little")
    if len(data) < start + length + _MAC:
        raise SnapshotRefused(f"truncated ({len(data)} bytes)")
    try:
        header = json.loads(bytes(view[start : start + length]))
        parts = _checked(header, view, start + length, generation, state, exclude, domains)
        snapshot = IndexSnapshot(header["floor"], header["windows_floor"], header["exclude"], parts)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise SnapshotRefused("damaged (its header cannot be read)") from None
    return snapshot, len(data)


def _checked(
    header: dict[str, Any],
    view: memoryview,
    offset: int,
    generation: bytes,
    state: FileState,
    exclude: str,
    domains: Iterable[str],
) -> dict[str, DomainPart]:
    """The parts of a snapshot whose header was read, once every check has passed. A header
    of an unexpected shape raises KeyError, TypeError and the like (`read` says damaged)."""
    if header["version"] != VERSION:
        raise SnapshotRefused(f"of another version ({header['version']!r})")
    counts = [
        n
        for part in header["domains"].values()
        for n in (part["offline"], part["first_seen"], *(c[1] for c in part["clients"]))
    ]
    if any(type(n) is not int or n < 0 for n in counts):
        raise ValueError("counts")
    expected = offset + 8 * sum(counts) + _MAC
    if len(view) != expected:
        raise SnapshotRefused(f"truncated ({len(view)} bytes, not {expected})")
    if header["generation"] != _generation_id(generation):
        raise SnapshotRefused("stale (the store was written after it)")
    mac = hashlib.blake2b(view[: expected - _MAC], key=generation, digest_size=_MAC).digest()
    if mac != view[expected - _MAC :]:
        raise SnapshotRefused("damaged (its checksum does not match)")
    # From here on, the header is the one written for this generation.
    db, wal = header["file"]
    if (tuple(db), None if wal is None else tuple(wal)) != state:
        raise SnapshotRefused("stale (the store's file changed after it: another program wrote?)")
    if header["byteorder"] != sys.byteorder:
        raise SnapshotRefused("written on a machine of another byte order")
    if header["exclude"] != exclude:
        raise SnapshotRefused("written with other exclusions ([counting] exclude)")
    missing = set(domains) - set(header["domains"])
    if missing:
        raise SnapshotRefused(f"written without the domain(s) {', '.join(sorted(missing))}")
    parts: dict[str, DomainPart] = {}

    def take(n: int) -> array[int]:
        nonlocal offset
        values = array("q")
        values.frombytes(view[offset : offset + 8 * n])
        offset += 8 * n
        return values

    for name, part in header["domains"].items():
        offline, first_seen = take(part["offline"]), take(part["first_seen"])
        clients = {
            family: ClientPart(take(n), online_users, online_sessions)
            for family, n, online_users, online_sessions in part["clients"]
        }
        parts[name] = DomainPart(
            known_users=part["known_users"],
            online_users=part["online_users"],
            online_sessions=part["online_sessions"],
            hidden=part["hidden"],
            offline=offline,
            first_seen=first_seen,
            clients=clients,
            online=part["online"],
        )
    return parts
