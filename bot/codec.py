"""How a UserRecord is stored: one encoder, one decoder, one definition of a valid record.

A stored record is a pickled plain tuple `(first_seen, last_login, last_logout, (resource, ...))`
of ints and strings, never an object of this package (so no stored value depends on our code).
Everything that reads records (the store, the start-up scan, the importer through the store, the
retention scan) decodes them here.
"""

from __future__ import annotations

import pickle
from typing import Any

from .model import UserRecord

_new_record = tuple.__new__  # UserRecord from an already checked tuple, without re-checking


class DamagedRecord(ValueError):
    """A stored value that is not a valid record; the message says what is wrong with it."""


def encode_record(record: UserRecord) -> bytes:
    first_seen, last_login, last_logout, sessions = record
    return pickle.dumps(
        (first_seen, last_login, last_logout, tuple(sessions)), pickle.HIGHEST_PROTOCOL
    )


def decode_record(value: bytes) -> UserRecord:
    """The record stored as `value`, or DamagedRecord saying why it is not one.

    On the start-up path of a million users: one unpickling and four type checks per record.
    """
    try:
        fields: Any = pickle.loads(value)
    except Exception as exc:  # any unpickling failure is a damaged value
        raise DamagedRecord(f"cannot be unpickled ({type(exc).__name__})") from None
    if type(fields) is not tuple or len(fields) != 4:
        raise DamagedRecord(f"not a 4-tuple: {_short(fields)}")
    first_seen, last_login, last_logout, sessions = fields
    if type(first_seen) is not int or type(last_login) is not int or type(last_logout) is not int:
        raise DamagedRecord(f"a timestamp is not a whole number: {_short(fields)}")
    if type(sessions) is not tuple or (sessions and not all(type(s) is str for s in sessions)):
        raise DamagedRecord(f"sessions are not a tuple of strings: {_short(fields)}")
    return _new_record(UserRecord, fields)  # type: ignore[no-any-return]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
