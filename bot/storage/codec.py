"""How a UserRecord is stored: one encoder, one decoder, one definition of a valid record.

A stored record is a pickled plain tuple of ints, strings and tuples, never an object of this
package (so no stored value depends on our code), in one of two shapes:
    (first_seen, last_login, last_logout, (resource, ...))
        a user without client information (an imported one; every record of schema 1);
    (first_seen, last_login, last_logout, (resource, ...), (family, time, ...), (family, ...))
        with the last activity per client family, flat, and the family of each session online
        (or () when none is known).
Each value is a pickle without back-references, so that many can be read by one unpickler.
Everything that reads records (the store, the start-up scan, the importer through the store, the
retention scan) decodes them here, and decoding never runs code found in the file (see
`primitives.PrimitivesUnpickler`): a value that is not a valid record is a `DamagedRecord`.

Every timestamp of a record is whole Unix seconds in TIMESTAMPS (0 is "never"): the one
definition of a time the store holds, which the importer checks too. Not below 0, so that a bot
whose clock starts in 1970 (a board without a real-time clock, before NTP) still reads back what
it wrote; not after 2100, so that a huge number (10**400) never reaches `datetime` or the counts.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from typing import Any

from ..core.model import UserRecord
from .primitives import PrimitivesUnpickler, load_primitives

TIMESTAMPS = range(0, 4_102_444_800 + 1)  # 1970 .. 2100-01-01 00:00 UTC; see above
_new_record = tuple.__new__  # UserRecord from an already checked tuple, without re-checking


class DamagedRecord(ValueError):
    """A stored value that is not a valid record; the message says what is wrong with it."""


_NO_CLIENTS: tuple[tuple[()], tuple[()]] = ((), ())


def encode_record(record: UserRecord) -> bytes:
    """A pickle without back-references (see `decode_records`)."""
    first_seen, last_login, last_logout, sessions, clients, session_clients = record
    fields: tuple[Any, ...] = (first_seen, last_login, last_logout, tuple(sessions))
    if not clients and not any(session_clients):
        return pickle.dumps(fields, pickle.HIGHEST_PROTOCOL)
    if not any(session_clients):  # every string once: pickle has nothing to refer back to
        return pickle.dumps((*fields, tuple(clients), ()), pickle.HIGHEST_PROTOCOL)
    # A family's name is also a session's (and may be two sessions'): written in full each
    # time, not as a reference to its first occurrence (a few bytes, for users online only).
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, pickle.HIGHEST_PROTOCOL)
    pickler.fast = True  # no memo: no back-reference
    pickler.dump((*fields, tuple(clients), record.session_families()))
    return buffer.getvalue()


def decode_record(value: bytes) -> UserRecord:
    """The record stored as `value`, or DamagedRecord saying why it is not one."""
    try:
        fields = load_primitives(value)
    except Exception as exc:  # any unpickling failure, or a refused class: a damaged value
        raise DamagedRecord(f"cannot be unpickled ({exc})") from None
    return _record(fields)


def decode_records(values: Sequence[bytes]) -> list[UserRecord | DamagedRecord]:
    """`decode_record` of each value, the damaged ones as their DamagedRecord.

    The start-up scan decodes a million records: one unpickler reads a whole batch from one
    buffer (a new unpickler per value costs as much again as the decoding). That unpickler's
    memo runs on from value to value, which is right only because `encode_record` writes no
    back-reference into it. If anything in the batch is amiss (a damaged value may also have
    read into its neighbours), the batch is decoded again value by value, so that each damaged
    value is named and no other is lost.
    """
    stream = io.BytesIO(b"".join(values))
    load = PrimitivesUnpickler(stream).load
    try:
        records: list[UserRecord | DamagedRecord] = [_record(load()) for _ in values]
        if stream.tell() == len(stream.getbuffer()):
            return records
    except Exception:  # a damaged value somewhere in the batch
        pass
    return [_decoded_or_damage(value) for value in values]


def _decoded_or_damage(value: bytes) -> UserRecord | DamagedRecord:
    try:
        return decode_record(value)
    except DamagedRecord as damage:
        return damage


def _record(fields: Any) -> UserRecord:
    """The one definition of a valid record: a few type checks, cheap enough for a million
    (the common shapes, no client or one client and no session, take no loop)."""
    if type(fields) is not tuple:
        raise DamagedRecord(f"not a 4- or 6-tuple: {_short(fields)}")
    size = len(fields)
    if size == 6:
        first_seen, last_login, last_logout, sessions, clients, session_clients = fields
    elif size == 4:
        first_seen, last_login, last_logout, sessions = fields
    else:
        raise DamagedRecord(f"not a 4- or 6-tuple: {_short(fields)}")
    if type(first_seen) is not int or type(last_login) is not int or type(last_logout) is not int:
        raise DamagedRecord(f"a timestamp is not a whole number: {_short(fields)}")
    if (
        first_seen not in TIMESTAMPS
        or last_login not in TIMESTAMPS
        or last_logout not in TIMESTAMPS
    ):
        raise DamagedRecord(f"a timestamp is out of range: {_short(fields)}")
    if type(sessions) is not tuple or (sessions and not _strings(sessions)):
        raise DamagedRecord(f"sessions are not a tuple of strings: {_short(fields)}")
    if size == 4:
        return _new_record(UserRecord, fields + _NO_CLIENTS)
    if type(clients) is not tuple or not (
        (
            len(clients) == 2
            and type(clients[0]) is str
            and type(clients[1]) is int
            and clients[1] in TIMESTAMPS
        )
        or not clients
        or (
            len(clients) % 2 == 0
            and _strings(clients[::2])
            and all(type(time) is int and time in TIMESTAMPS for time in clients[1::2])
        )
    ):
        raise DamagedRecord(f"clients are not (family, time, ...): {_short(fields)}")
    if type(session_clients) is not tuple or (
        session_clients and (len(session_clients) != len(sessions) or not _strings(session_clients))
    ):
        raise DamagedRecord(f"not one client family per session: {_short(fields)}")
    return _new_record(UserRecord, fields)


def _strings(values: tuple[Any, ...]) -> bool:
    return all(type(value) is str for value in values)


def _short(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int of over 4300 digits has no repr
        return "(a value too large to show)"
    return text if len(text) <= 120 else text[:117] + "..."
